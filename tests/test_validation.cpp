// Argument validation of Layer::create and forward: every error class has its own status and
// message, and y is never touched on error.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"
#include "validate.hpp"

namespace {

using flashmoe::Config;
using flashmoe::StatusCode;
using namespace flashmoe_test;

Config small_config() {
  Config c;
  c.hidden = 64;
  c.intermediate = 32;
  c.experts = 8;
  c.top_k = 2;
  c.max_tokens = 16;
  return c;
}

struct BadConfig {
  const char* name;
  void (*mutate)(Config&);
  const char* message_part;  // the message must name the argument
};

const BadConfig kBadConfigs[] = {
    {"hidden zero", [](Config& c) { c.hidden = 0; }, "hidden = 0"},
    {"hidden negative", [](Config& c) { c.hidden = -8; }, "hidden = -8"},
    {"hidden unaligned", [](Config& c) { c.hidden = 60; }, "hidden = 60"},
    {"hidden too large", [](Config& c) { c.hidden = 1 << 20; }, "hidden"},
    {"intermediate zero", [](Config& c) { c.intermediate = 0; }, "intermediate = 0"},
    {"intermediate unaligned", [](Config& c) { c.intermediate = 30; }, "intermediate = 30"},
    {"experts zero", [](Config& c) { c.experts = 0; }, "experts = 0"},
    {"experts too many", [](Config& c) { c.experts = 2048; }, "experts = 2048"},
    {"top_k zero", [](Config& c) { c.top_k = 0; }, "top_k = 0"},
    {"top_k above experts", [](Config& c) { c.top_k = 9; }, "top_k = 9"},
    {"top_k above limit",
     [](Config& c) {
       c.experts = 64;
       c.top_k = 33;
     },
     "top_k = 33"},
    {"max_tokens zero", [](Config& c) { c.max_tokens = 0; }, "max_tokens = 0"},
    {"max_tokens too many", [](Config& c) { c.max_tokens = (1 << 20) + 1; }, "max_tokens"},
    {"dtype unknown", [](Config& c) { c.dtype = static_cast<flashmoe::DType>(7); }, "dtype = 7"},
    {"activation unknown", [](Config& c) { c.activation = static_cast<flashmoe::Activation>(9); },
     "activation = 9"},
    {"scoring unknown", [](Config& c) { c.routing.scoring = static_cast<flashmoe::Scoring>(5); },
     "scoring = 5"},
    {"n_group not dividing", [](Config& c) { c.routing.n_group = 3; }, "n_group = 3"},
    {"n_group zero", [](Config& c) { c.routing.n_group = 0; }, "n_group = 0"},
    {"topk_group above n_group",
     [](Config& c) {
       c.routing.n_group = 2;
       c.routing.topk_group = 3;
     },
     "topk_group = 3"},
    {"top_k above kept groups",
     [](Config& c) {
       c.routing.n_group = 4;
       c.routing.topk_group = 1;
       c.top_k = 3;
     },
     "top_k = 3"},
    {"scaling factor zero", [](Config& c) { c.routing.routed_scaling_factor = 0.0f; },
     "routed_scaling_factor = 0"},
    {"scaling factor nan", [](Config& c) { c.routing.routed_scaling_factor = NAN; },
     "routed_scaling_factor = nan"},
    {"shared count negative", [](Config& c) { c.shared.count = -1; }, "shared.count = -1"},
    {"shared intermediate zero", [](Config& c) { c.shared.count = 1; }, "shared.intermediate = 0"},
    {"shared gated without experts", [](Config& c) { c.shared.gated = true; }, "shared.count = 0"},
};

TEST(ConfigValidation, EveryBadConfigIsInvalidArgumentNamingTheArgument) {
  for (const BadConfig& bad : kBadConfigs) {
    SCOPED_TRACE(bad.name);
    Config c = small_config();
    bad.mutate(c);
    const flashmoe::Status s = flashmoe::detail::validate_config(c);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find(bad.message_part), std::string::npos) << s.message();
    // Layer::create checks the config before it touches CUDA, so this holds without a GPU.
    flashmoe::Layer layer;
    EXPECT_EQ(flashmoe::Layer::create(c, {}, layer).code(), StatusCode::InvalidArgument);
    EXPECT_FALSE(layer.valid());
    EXPECT_EQ(flashmoe::workspace_bytes(c), 0u);
  }
}

TEST(ConfigValidation, GoodConfigsPass) {
  EXPECT_TRUE(flashmoe::detail::validate_config(small_config()).ok());
  Config ds = small_config();
  ds.experts = 64;
  ds.top_k = 6;
  ds.routing.scoring = flashmoe::Scoring::Sigmoid;
  ds.routing.n_group = 8;
  ds.routing.topk_group = 3;
  ds.routing.use_correction_bias = true;
  ds.routing.routed_scaling_factor = 2.5f;
  ds.shared = {2, 48, true};
  EXPECT_TRUE(flashmoe::detail::validate_config(ds).ok());
  EXPECT_GT(flashmoe::workspace_bytes(ds), 0u);
}

TEST(ConfigValidation, WorkspaceGrowsWithMaxTokens) {
  Config a = small_config(), b = small_config();
  b.max_tokens = 4 * a.max_tokens;
  EXPECT_GT(flashmoe::workspace_bytes(b), flashmoe::workspace_bytes(a));
}

TEST(LayerCreate, OptionsAreChecked) {
  flashmoe::Layer layer;
  flashmoe::LayerOptions o;
  o.max_blocks = -1;
  EXPECT_EQ(flashmoe::Layer::create(small_config(), {}, layer, o).code(),
            StatusCode::InvalidArgument);
  o = {};
  o.watchdog_ms = 0;
  EXPECT_EQ(flashmoe::Layer::create(small_config(), {}, layer, o).code(),
            StatusCode::InvalidArgument);
  o = {};
  o.tokens_per_launch = -1;
  const flashmoe::Status s = flashmoe::Layer::create(small_config(), {}, layer, o);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_NE(s.message().find("options.tokens_per_launch = -1"), std::string::npos) << s.message();
}

// A valid config with no weights: without a GPU that is NotSupported ("no CUDA device"), with
// one the missing weights are reported. Either way nothing is created and y is untouched.
TEST(LayerCreate, MissingDeviceOrWeightsAreReported) {
  flashmoe::Layer layer;
  const flashmoe::Status s = flashmoe::Layer::create(small_config(), {}, layer);
  if (has_gpu()) {
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find("weights.router is a null pointer"), std::string::npos)
        << s.message();
  } else {
    EXPECT_EQ(s.code(), StatusCode::NotSupported);
    EXPECT_NE(s.message().find("no CUDA device"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(layer.valid());
  std::vector<std::uint16_t> y(4, 7);
  EXPECT_EQ(flashmoe::forward(layer, nullptr, y.data(), 1, nullptr).code(),
            StatusCode::InvalidArgument);
  EXPECT_EQ(y[0], 7);
}

// --- GPU: weights -----------------------------------------------------------------------

class GpuValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHMOE_NEED_GPU();
    std::mt19937_64 rng(fresh_seed());
    model_ = make_model(small_config(), rng);
  }
  Model model_;
};

TEST_F(GpuValidation, WeightPointersAreChecked) {
  const Config c = small_config();
  std::vector<std::uint16_t> host(c.experts * c.hidden);
  struct Case {
    const char* name;
    void (*mutate)(flashmoe::Weights&, const void* host);
    const char* message_part;
  } cases[] = {
      {"router null", [](flashmoe::Weights& w, const void*) { w.router = nullptr; },
       "weights.router is a null pointer"},
      {"w13 null", [](flashmoe::Weights& w, const void*) { w.w13 = nullptr; }, "weights.w13"},
      {"w2 null", [](flashmoe::Weights& w, const void*) { w.w2 = nullptr; }, "weights.w2"},
      {"router on host", [](flashmoe::Weights& w, const void* h) { w.router = h; }, "host memory"},
      {"w13 misaligned",
       [](flashmoe::Weights& w, const void*) { w.w13 = static_cast<const char*>(w.w13) + 2; },
       "not 16-byte aligned"},
      {"dtype mismatch", [](flashmoe::Weights& w, const void*) { w.dtype = flashmoe::DType::FP16; },
       "weights.dtype = fp16 does not match config.dtype = bf16"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    flashmoe::Weights w = model_.device_weights();
    k.mutate(w, host.data());
    flashmoe::Layer layer;
    const flashmoe::Status s = flashmoe::Layer::create(c, w, layer);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find(k.message_part), std::string::npos) << s.message();
    EXPECT_FALSE(layer.valid());
  }
  Config with_bias = c;
  with_bias.routing.use_correction_bias = true;
  flashmoe::Weights w = model_.device_weights();
  w.correction_bias = nullptr;
  flashmoe::Layer layer;
  const flashmoe::Status s = flashmoe::Layer::create(with_bias, w, layer);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_NE(s.message().find("weights.correction_bias"), std::string::npos) << s.message();
}

TEST_F(GpuValidation, ForwardArgumentsAreCheckedAndYIsUntouched) {
  const Config c = small_config();
  flashmoe::Layer layer;
  ASSERT_TRUE(flashmoe::Layer::create(c, model_.device_weights(), layer).ok());
  EXPECT_GT(layer.workspace_bytes(), 0u);
  const int T = 4;
  std::mt19937_64 rng(fresh_seed());
  DeviceBuffer x =
      upload(random_values(static_cast<std::size_t>(c.max_tokens) * c.hidden, 1.0f, c.dtype, rng));
  const std::vector<std::uint16_t> sentinel(static_cast<std::size_t>(c.max_tokens) * c.hidden,
                                            0x1234);
  DeviceBuffer y = upload(sentinel);
  DeviceBuffer ids = upload(std::vector<std::int32_t>(T * c.top_k, 0));
  DeviceBuffer wts = upload(std::vector<float>(T * c.top_k, 0.5f));
  std::vector<std::uint16_t> host_y(sentinel);

  struct Case {
    const char* name;
    const void* x;
    void* y;
    std::int64_t tokens;
    flashmoe::ForwardOptions options;
    const char* message_part;
  };
  flashmoe::ForwardOptions half_routing;
  half_routing.topk_ids = ids.get<std::int32_t>();
  flashmoe::ForwardOptions host_routing;
  host_routing.topk_ids = ids.get<std::int32_t>();
  host_routing.topk_weights = reinterpret_cast<const float*>(host_y.data());
  flashmoe::ForwardOptions bad_beta;
  bad_beta.beta = INFINITY;
  flashmoe::ForwardOptions host_count;
  const std::int32_t host_tokens = 1;
  host_count.device_num_tokens = &host_tokens;
  flashmoe::ForwardOptions host_status;
  std::int32_t host_word = 0;
  host_status.device_status = &host_word;
  const Case cases[] = {
      {"x null", nullptr, y.get(), T, {}, "x is a null pointer"},
      {"x on host", host_y.data(), y.get(), T, {}, "host memory"},
      {"x misaligned", x.get<char>() + 2, y.get(), T, {}, "not 16-byte aligned"},
      {"tokens negative", x.get(), y.get(), -1, {}, "num_tokens = -1"},
      {"tokens above max", x.get(), y.get(), c.max_tokens + 1, {}, "num_tokens = 17"},
      {"overlap", x.get(), x.get<char>() + 16, T, {}, "overlap"},
      {"half routing", x.get(), y.get(), T, half_routing, "give both or neither"},
      {"routing on host", x.get(), y.get(), T, host_routing, "options.topk_weights"},
      {"beta inf", x.get(), y.get(), T, bad_beta, "options.beta = inf"},
      {"token count on host", x.get(), y.get(), T, host_count, "options.device_num_tokens"},
      {"status word on host", x.get(), y.get(), T, host_status, "options.device_status"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const flashmoe::Status s = flashmoe::forward(layer, k.x, k.y, k.tokens, nullptr, k.options);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find(k.message_part), std::string::npos) << s.message();
  }
  // y on the host: rejected before anything touches it.
  EXPECT_EQ(flashmoe::forward(layer, x.get(), host_y.data(), T, nullptr).code(),
            StatusCode::InvalidArgument);
  EXPECT_EQ(host_y, sentinel);
  // T = 0 is a no-op.
  EXPECT_TRUE(flashmoe::forward(layer, x.get(), y.get(), 0, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(download<std::uint16_t>(y.get(), sentinel.size()), sentinel);
  EXPECT_TRUE(layer.device_status(nullptr).ok());
}

// --- Features the GPU path cannot run: refused by Layer::create, before any allocation or
// device query, so this holds without a GPU too. ------------------------------------------

TEST(LayerCreate, FeaturesNotOnTheGpuAreNotSupportedAtCreate) {
  Config grouped = small_config();
  grouped.routing.n_group = 2;
  grouped.routing.topk_group = 1;
  Config shared = small_config();
  shared.shared = {1, 32, false};
  for (const Config& c : {grouped, shared}) {
    flashmoe::Layer layer;
    // No weights at all: the feature is refused before the weights are looked at.
    const flashmoe::Status s = flashmoe::Layer::create(c, {}, layer);
    EXPECT_EQ(s.code(), StatusCode::NotSupported) << s.to_string();
    EXPECT_NE(s.message().find("CPU reference only"), std::string::npos) << s.message();
    EXPECT_FALSE(layer.valid());
    // The config itself is valid: the CPU reference runs it, and its sizes can be queried.
    EXPECT_TRUE(flashmoe::detail::validate_config(c).ok());
    EXPECT_GT(flashmoe::scratch_bytes(c), 0u);
  }
}

TEST(LayerCreate, ScratchOptionsAreChecked) {
  flashmoe::Layer layer;
  flashmoe::LayerOptions o;
  o.scratch_bytes = 4096;  // without a pointer: refused before any device is looked at
  const flashmoe::Status s = flashmoe::Layer::create(small_config(), {}, layer, o);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("options.scratch is null"), std::string::npos) << s.message();
  EXPECT_FALSE(layer.valid());
}

TEST_F(GpuValidation, CallerScratchIsChecked) {
  const Config c = small_config();
  const std::size_t need = flashmoe::scratch_bytes(c);
  DeviceBuffer scratch(need + 512);
  std::vector<unsigned char> host(need + 256);
  void* host_aligned =
      host.data() + (256 - reinterpret_cast<std::uintptr_t>(host.data()) % 256) % 256;
  struct Case {
    const char* name;
    void* ptr;
    std::size_t bytes;
    const char* message_part;
  } cases[] = {
      {"too small", scratch.get(), need - 1, "is less than"},
      {"misaligned", scratch.get<char>() + 16, need, "not 256-byte aligned"},
      {"host memory", host_aligned, need, "host memory"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    flashmoe::LayerOptions o;
    o.scratch = k.ptr;
    o.scratch_bytes = k.bytes;
    flashmoe::Layer layer;
    const flashmoe::Status s = flashmoe::Layer::create(c, model_.device_weights(), layer, o);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find(k.message_part), std::string::npos) << s.message();
    EXPECT_FALSE(layer.valid());
  }
  flashmoe::LayerOptions o;
  o.scratch = scratch.get();
  o.scratch_bytes = need;
  flashmoe::Layer layer;
  ASSERT_TRUE(flashmoe::Layer::create(c, model_.device_weights(), layer, o).ok());
  EXPECT_EQ(layer.scratch_bytes(), need);
  EXPECT_LT(layer.workspace_bytes(), need) << "the Layer allocated only its state";
  flashmoe::Layer owning;
  ASSERT_TRUE(flashmoe::Layer::create(c, model_.device_weights(), owning).ok());
  EXPECT_EQ(owning.workspace_bytes(), flashmoe::workspace_bytes(c));
}

TEST_F(GpuValidation, SetWeightsValidatesAndKeepsTheOldWeightsOnError) {
  const Config c = small_config();
  flashmoe::Layer layer;
  ASSERT_TRUE(flashmoe::Layer::create(c, model_.device_weights(), layer).ok());
  flashmoe::Weights bad = model_.device_weights();
  bad.w2 = static_cast<const char*>(bad.w2) + 2;
  const flashmoe::Status s = layer.set_weights(bad);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_NE(s.message().find("weights.w2"), std::string::npos) << s.message();
  EXPECT_EQ(layer.weights().w2, model_.device_weights().w2);
  flashmoe::Layer empty;
  EXPECT_EQ(empty.set_weights(model_.device_weights()).code(), StatusCode::InvalidArgument);
}

}  // namespace
