// The C API: defaults, statuses, messages, and a GPU round trip.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashmoe/flashmoe.h"
#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"

namespace {

using namespace flashmoe_test;

TEST(CApi, ConfigInitMatchesCppDefaults) {
  flashmoe_config c;
  std::memset(&c, 0x7f, sizeof c);
  flashmoe_config_init(&c);
  const flashmoe::Config d{};
  EXPECT_EQ(c.hidden, d.hidden);
  EXPECT_EQ(c.dtype, FLASHMOE_DTYPE_BF16);
  EXPECT_EQ(c.activation, FLASHMOE_ACTIVATION_SILU_GATED);
  EXPECT_EQ(c.scoring, FLASHMOE_SCORING_SOFTMAX);
  EXPECT_EQ(c.renormalize, 1);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.routed_scaling_factor, 1.0f);
  EXPECT_EQ(c.shared_count, 0);
  EXPECT_EQ(c.max_tokens, 0);
  flashmoe_config_init(nullptr);  // tolerated
}

TEST(CApi, StatusCodesMatchTheCppEnum) {
  EXPECT_EQ(FLASHMOE_STATUS_INVALID_ARGUMENT,
            static_cast<int>(flashmoe::StatusCode::InvalidArgument));
  EXPECT_EQ(FLASHMOE_STATUS_INTERNAL, static_cast<int>(flashmoe::StatusCode::Internal));
  EXPECT_STREQ(flashmoe_status_string(FLASHMOE_STATUS_OK), "ok");
  EXPECT_STREQ(flashmoe_status_string(FLASHMOE_STATUS_DEVICE_TIMEOUT), "device_timeout");
  EXPECT_STREQ(flashmoe_version(), flashmoe::version());
}

TEST(CApi, BadArgumentsReturnStatusAndMessage) {
  flashmoe_config c;
  flashmoe_config_init(&c);
  flashmoe_weights w{};
  flashmoe_layer* layer = nullptr;
  EXPECT_EQ(flashmoe_layer_create(&c, &w, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmoe_last_error_message()).find("out is a null pointer"),
            std::string::npos);
  EXPECT_EQ(flashmoe_layer_create(nullptr, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmoe_layer_create(&c, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmoe_last_error_message()).find("hidden = 0"), std::string::npos)
      << flashmoe_last_error_message();
  EXPECT_EQ(layer, nullptr);
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, nullptr),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmoe_layer_device_status(nullptr, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmoe_layer_workspace_bytes(nullptr), 0u);
  flashmoe_layer_destroy(nullptr);
}

TEST(CApi, GpuRoundTripMatchesTheReference) {
  FLASHMOE_NEED_GPU();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  flashmoe::Config cc;
  cc.hidden = 128;
  cc.intermediate = 64;
  cc.experts = 8;
  cc.top_k = 2;
  cc.max_tokens = 8;
  const Model m = make_model(cc, rng);

  flashmoe_config c;
  flashmoe_config_init(&c);
  c.hidden = cc.hidden;
  c.intermediate = cc.intermediate;
  c.experts = cc.experts;
  c.top_k = cc.top_k;
  c.max_tokens = cc.max_tokens;
  flashmoe_weights w{};
  w.dtype = FLASHMOE_DTYPE_BF16;
  w.router = m.d_router.get();
  w.w13 = m.d_w13.get();
  w.w2 = m.d_w2.get();
  flashmoe_layer* layer = nullptr;
  ASSERT_EQ(flashmoe_layer_create(&c, &w, &layer), FLASHMOE_STATUS_OK)
      << flashmoe_last_error_message();
  EXPECT_GT(flashmoe_layer_workspace_bytes(layer), 0u);

  const int T = 5;
  const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, cc.dtype, rng);
  DeviceBuffer dx = upload(x);
  DeviceBuffer dy = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  ASSERT_EQ(flashmoe_forward(layer, dx.get(), dy.get(), T, nullptr, nullptr), FLASHMOE_STATUS_OK)
      << flashmoe_last_error_message();
  ASSERT_EQ(flashmoe_layer_device_status(layer, nullptr), FLASHMOE_STATUS_OK);
  const auto y = download<std::uint16_t>(dy.get(), x.size());
  std::vector<std::uint16_t> ry(x.size());
  std::vector<double> ref(x.size());
  ASSERT_TRUE(
      flashmoe::reference::forward(cc, m.host_weights(), x.data(), ry.data(), T, {}, ref.data())
          .ok());
  for (int t = 0; t < T; ++t) {
    EXPECT_LT(rel_l2(&y[t * c.hidden], &ref[t * c.hidden], c.hidden, cc.dtype), tolerance(cc.dtype))
        << "token " << t;
  }
  flashmoe_layer_destroy(layer);
}

}  // namespace
