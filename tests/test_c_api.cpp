// The C API: defaults, versioned structs, statuses, messages, and GPU round trips.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "flashmoe/flashmoe.h"
#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"

namespace {

using namespace flashmoe_test;

// The size a struct's first version had (flashmoe.h): its members up to `last`, rounded up to
// the struct's alignment as sizeof of the older header would be.
template <class S>
std::size_t v1_size(std::size_t end_of_last) {
  return (end_of_last + alignof(S) - 1) / alignof(S) * alignof(S);
}
const std::size_t kLayerOptionsV1 = v1_size<flashmoe_layer_options>(
    offsetof(flashmoe_layer_options, watchdog_ms) + sizeof(std::uint32_t));
const std::size_t kForwardOptionsV1 =
    v1_size<flashmoe_forward_options>(offsetof(flashmoe_forward_options, beta) + sizeof(float));

// `size` bytes that end where an inaccessible page begins: a library that read or wrote past
// struct_size would crash the test.
class GuardedBytes {
 public:
  explicit GuardedBytes(std::size_t size) : page_(static_cast<std::size_t>(sysconf(_SC_PAGESIZE))) {
    void* p = mmap(nullptr, 2 * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    base_ = static_cast<unsigned char*>(p);
    if (mprotect(base_ + page_, page_, PROT_NONE) != 0) return;
    data_ = base_ + page_ - size;
  }
  ~GuardedBytes() {
    if (base_ != nullptr) munmap(base_, 2 * page_);
  }
  GuardedBytes(const GuardedBytes&) = delete;
  GuardedBytes& operator=(const GuardedBytes&) = delete;
  template <class S>
  S* as() const {
    return reinterpret_cast<S*>(data_);
  }

 private:
  std::size_t page_;
  unsigned char* base_ = nullptr;
  unsigned char* data_ = nullptr;
};

std::string last_message() { return flashmoe_last_error_message(); }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

flashmoe_config to_c(const flashmoe::Config& cc) {
  flashmoe_config c;
  flashmoe_config_init(&c);
  c.hidden = cc.hidden;
  c.intermediate = cc.intermediate;
  c.experts = cc.experts;
  c.top_k = cc.top_k;
  c.dtype = static_cast<flashmoe_dtype>(cc.dtype);
  c.activation = static_cast<flashmoe_activation>(cc.activation);
  c.scoring = static_cast<flashmoe_scoring>(cc.routing.scoring);
  c.renormalize = cc.routing.renormalize ? 1 : 0;
  c.n_group = cc.routing.n_group;
  c.topk_group = cc.routing.topk_group;
  c.routed_scaling_factor = cc.routing.routed_scaling_factor;
  c.use_correction_bias = cc.routing.use_correction_bias ? 1 : 0;
  c.shared_count = cc.shared.count;
  c.shared_intermediate = cc.shared.intermediate;
  c.shared_gated = cc.shared.gated ? 1 : 0;
  c.max_tokens = cc.max_tokens;
  return c;
}

flashmoe_weights to_c(const Model& m) {
  flashmoe_weights w{};
  w.dtype = static_cast<flashmoe_dtype>(m.config.dtype);
  w.router = m.d_router.get();
  w.w13 = m.d_w13.get();
  w.w2 = m.d_w2.get();
  return w;
}

flashmoe::Config small_config() {
  flashmoe::Config cc;
  cc.hidden = 128;
  cc.intermediate = 64;
  cc.experts = 8;
  cc.top_k = 2;
  cc.max_tokens = 8;
  return cc;
}

TEST(CApi, ConfigInitMatchesCppDefaults) {
  flashmoe_config c;
  std::memset(&c, 0x7f, sizeof c);
  flashmoe_config_init(&c);
  const flashmoe::Config d{};
  EXPECT_EQ(c.struct_size, sizeof(flashmoe_config));
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

TEST(CApi, OptionsInitMatchCppDefaults) {
  flashmoe_layer_options lo;
  std::memset(&lo, 0x7f, sizeof lo);
  flashmoe_layer_options_init(&lo);
  const flashmoe::LayerOptions ld{};
  EXPECT_EQ(lo.struct_size, sizeof(flashmoe_layer_options));
  EXPECT_EQ(lo.max_blocks, ld.max_blocks);
  EXPECT_EQ(lo.watchdog_ms, ld.watchdog_ms);
  EXPECT_EQ(lo.scratch, nullptr);
  EXPECT_EQ(lo.scratch_bytes, 0u);
  EXPECT_EQ(lo.tokens_per_launch, ld.tokens_per_launch);

  flashmoe_forward_options fo;
  std::memset(&fo, 0x7f, sizeof fo);
  flashmoe_forward_options_init(&fo);
  const flashmoe::ForwardOptions fd{};
  EXPECT_EQ(fo.struct_size, sizeof(flashmoe_forward_options));
  EXPECT_EQ(fo.topk_ids, nullptr);
  EXPECT_EQ(fo.topk_weights, nullptr);
  EXPECT_EQ(fo.out_topk_ids, nullptr);
  EXPECT_EQ(fo.out_topk_weights, nullptr);
  EXPECT_EQ(fo.beta, fd.beta);
  EXPECT_EQ(fo.device_num_tokens, nullptr);
  EXPECT_EQ(fo.device_status, nullptr);
  EXPECT_EQ(fo.programmatic_launch, 0);

  flashmoe_layer_options_init(nullptr);  // tolerated
  flashmoe_forward_options_init(nullptr);
}

// An older header's struct is shorter: init writes only its bytes; a newer header's is longer:
// init zeroes what the library does not know.
TEST(CApi, InitSizedWritesExactlyTheCallersBytes) {
  {
    GuardedBytes mem(kForwardOptionsV1);
    auto* o = mem.as<flashmoe_forward_options>();
    ASSERT_NE(o, nullptr);
    flashmoe_forward_options_init_sized(o, kForwardOptionsV1);  // crashes if it writes past
    EXPECT_EQ(o->struct_size, kForwardOptionsV1);
    EXPECT_EQ(o->beta, 0.0f);
    EXPECT_EQ(o->topk_ids, nullptr);
  }
  {
    GuardedBytes mem(kLayerOptionsV1);
    auto* o = mem.as<flashmoe_layer_options>();
    ASSERT_NE(o, nullptr);
    flashmoe_layer_options_init_sized(o, kLayerOptionsV1);
    EXPECT_EQ(o->struct_size, kLayerOptionsV1);
    EXPECT_EQ(o->watchdog_ms, flashmoe::LayerOptions{}.watchdog_ms);
  }
  {
    constexpr std::size_t kExtra = 24;
    std::vector<unsigned char> bytes(sizeof(flashmoe_config) + kExtra + 8, 0xab);
    auto* c = reinterpret_cast<flashmoe_config*>(bytes.data());
    flashmoe_config_init_sized(c, sizeof(flashmoe_config) + kExtra);
    EXPECT_EQ(c->struct_size, sizeof(flashmoe_config) + kExtra);
    EXPECT_EQ(c->n_group, 1);
    for (std::size_t i = sizeof(flashmoe_config); i < sizeof(flashmoe_config) + kExtra; ++i) {
      EXPECT_EQ(bytes[i], 0) << "byte " << i;
    }
    for (std::size_t i = sizeof(flashmoe_config) + kExtra; i < bytes.size(); ++i) {
      EXPECT_EQ(bytes[i], 0xab) << "byte " << i;
    }
  }
}

TEST(CApi, StructSizeZeroOrBelowTheFirstVersionIsRejected) {
  const flashmoe_config good = to_c(small_config());
  flashmoe_weights w{};
  flashmoe_layer* layer = nullptr;

  flashmoe_config c = good;
  c.struct_size = 0;
  EXPECT_EQ(flashmoe_layer_create(&c, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "config->struct_size = 0: call flashmoe_config_init first"))
      << last_message();
  EXPECT_EQ(flashmoe_scratch_bytes(&c), 0u);
  EXPECT_EQ(flashmoe_workspace_bytes(&c), 0u);
  c.struct_size = sizeof(flashmoe_config) - sizeof(int);  // max_tokens cut off
  EXPECT_EQ(flashmoe_layer_create(&c, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "first version: call flashmoe_config_init first"))
      << last_message();
  EXPECT_EQ(flashmoe_scratch_bytes(&c), 0u);

  flashmoe_layer_options lo;
  flashmoe_layer_options_init(&lo);
  lo.struct_size = 0;
  EXPECT_EQ(flashmoe_layer_create_with_options(&good, &w, &lo, &layer),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "call flashmoe_layer_options_init first")) << last_message();
  lo.struct_size = 8;  // watchdog_ms cut off
  EXPECT_EQ(flashmoe_layer_create_with_options(&good, &w, &lo, &layer),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "options->struct_size = 8 is below")) << last_message();

  // The options are checked before the layer, so no GPU is needed to see it.
  flashmoe_forward_options fo;
  flashmoe_forward_options_init(&fo);
  fo.struct_size = 0;
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, &fo),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "call flashmoe_forward_options_init first"))
      << last_message();
  fo.struct_size = static_cast<std::uint32_t>(offsetof(flashmoe_forward_options, beta));
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, &fo),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "first version")) << last_message();
  EXPECT_EQ(layer, nullptr);
}

// A struct from an older, shorter header (emulated by a smaller struct_size, right before an
// inaccessible page) is accepted and nothing past it is read.
TEST(CApi, OlderShorterStructsAreAcceptedAndReadOnlyToTheirSize) {
  GuardedBytes fmem(kForwardOptionsV1);
  auto* fo = fmem.as<flashmoe_forward_options>();
  ASSERT_NE(fo, nullptr);
  flashmoe_forward_options_init_sized(fo, kForwardOptionsV1);
  fo->beta = 0.5f;
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, fo),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");  // past the options check

  GuardedBytes lmem(kLayerOptionsV1);
  auto* lo = lmem.as<flashmoe_layer_options>();
  ASSERT_NE(lo, nullptr);
  flashmoe_layer_options_init_sized(lo, kLayerOptionsV1);
  lo->max_blocks = 4;
  const flashmoe_config c = to_c(small_config());
  flashmoe_weights w{};  // invalid on a GPU; without one, create stops at "no CUDA device"
  flashmoe_layer* layer = nullptr;
  EXPECT_NE(flashmoe_layer_create_with_options(&c, &w, lo, &layer), FLASHMOE_STATUS_OK);
  EXPECT_FALSE(contains(last_message(), "struct_size")) << last_message();
  EXPECT_EQ(layer, nullptr);
}

// A struct from a newer, longer header: its unknown members are ignored, nothing is rejected.
TEST(CApi, NewerLongerStructsAreAccepted) {
  struct NewerConfig {
    flashmoe_config known;
    double future_member;
  } newer{};
  flashmoe_config_init_sized(&newer.known, sizeof newer);
  EXPECT_EQ(newer.known.struct_size, sizeof newer);
  EXPECT_EQ(newer.future_member, 0.0);
  const flashmoe_config plain = to_c(small_config());
  std::memcpy(reinterpret_cast<unsigned char*>(&newer.known) + sizeof(std::uint32_t),
              reinterpret_cast<const unsigned char*>(&plain) + sizeof(std::uint32_t),
              sizeof(flashmoe_config) - sizeof(std::uint32_t));
  newer.future_member = 42.0;
  EXPECT_EQ(flashmoe_scratch_bytes(&newer.known), flashmoe_scratch_bytes(&plain));
  EXPECT_GT(flashmoe_scratch_bytes(&newer.known), 0u);

  struct NewerForwardOptions {
    flashmoe_forward_options known;
    void* future_pointer;
  } fo{};
  flashmoe_forward_options_init_sized(&fo.known, sizeof fo);
  fo.future_pointer = &fo;
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, &fo.known),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
}

TEST(CApi, ByteQueriesMatchTheCppOnes) {
  flashmoe::Config qwen;
  qwen.hidden = 2048;
  qwen.intermediate = 768;
  qwen.experts = 128;
  qwen.top_k = 8;
  qwen.max_tokens = 4096;
  for (const flashmoe::Config& cc : {small_config(), qwen}) {
    const flashmoe_config c = to_c(cc);
    EXPECT_EQ(flashmoe_scratch_bytes(&c), flashmoe::scratch_bytes(cc));
    EXPECT_EQ(flashmoe_workspace_bytes(&c), flashmoe::workspace_bytes(cc));
    for (int n : {-1, 0, 1, 33, 100000}) {
      EXPECT_EQ(flashmoe_scratch_bytes_per_launch(&c, n), flashmoe::scratch_bytes(cc, n));
    }
    const std::size_t budget = flashmoe::scratch_bytes(cc, 33);
    EXPECT_EQ(flashmoe_tokens_per_launch_for(&c, budget),
              flashmoe::tokens_per_launch_for(cc, budget));
    EXPECT_GE(flashmoe_tokens_per_launch_for(&c, budget), std::min(33, cc.max_tokens));
    EXPECT_GT(flashmoe_scratch_bytes(&c), 0u);
    EXPECT_GT(flashmoe_workspace_bytes(&c), flashmoe_scratch_bytes(&c));
  }
  // 0 for NULL or an invalid config, and the last message stays as it was.
  flashmoe_config bad = to_c(small_config());
  bad.hidden = 0;
  flashmoe_layer* layer = nullptr;
  flashmoe_weights w{};
  ASSERT_EQ(flashmoe_layer_create(&bad, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  const std::string before = last_message();
  EXPECT_EQ(flashmoe_scratch_bytes(&bad), 0u);
  EXPECT_EQ(flashmoe_workspace_bytes(&bad), 0u);
  EXPECT_EQ(flashmoe_scratch_bytes(nullptr), 0u);
  EXPECT_EQ(flashmoe_workspace_bytes(nullptr), 0u);
  EXPECT_EQ(flashmoe_layer_scratch_bytes(nullptr), 0u);
  EXPECT_EQ(flashmoe_scratch_bytes_per_launch(nullptr, 8), 0u);
  EXPECT_EQ(flashmoe_tokens_per_launch_for(nullptr, 1u << 30), 0);
  EXPECT_EQ(flashmoe_layer_tokens_per_launch(nullptr), 0);
  EXPECT_EQ(last_message(), before);
}

TEST(CApi, StatusCodesMatchTheCppEnum) {
  EXPECT_EQ(FLASHMOE_STATUS_INVALID_ARGUMENT,
            static_cast<int>(flashmoe::StatusCode::InvalidArgument));
  EXPECT_EQ(FLASHMOE_STATUS_INTERNAL, static_cast<int>(flashmoe::StatusCode::Internal));
  EXPECT_EQ(FLASHMOE_STATUS_WORKSPACE_BUSY, static_cast<int>(flashmoe::StatusCode::WorkspaceBusy));
  EXPECT_EQ(FLASHMOE_STATUS_WORKSPACE_BUSY, 7);
  EXPECT_STREQ(flashmoe_status_string(FLASHMOE_STATUS_OK), "ok");
  EXPECT_STREQ(flashmoe_status_string(FLASHMOE_STATUS_DEVICE_TIMEOUT), "device_timeout");
  EXPECT_STREQ(flashmoe_status_string(FLASHMOE_STATUS_WORKSPACE_BUSY), "workspace_busy");
  EXPECT_STREQ(flashmoe_version(), flashmoe::version());
}

TEST(CApi, BadArgumentsReturnStatusAndMessage) {
  flashmoe_config c;
  flashmoe_config_init(&c);
  flashmoe_weights w{};
  flashmoe_layer* layer = nullptr;
  EXPECT_EQ(flashmoe_layer_create(&c, &w, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "out is a null pointer"));
  EXPECT_EQ(flashmoe_layer_create(nullptr, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "config is a null pointer");
  EXPECT_EQ(flashmoe_layer_create(&c, nullptr, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "weights is a null pointer");
  EXPECT_EQ(flashmoe_layer_create(&c, &w, &layer), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "hidden = 0")) << last_message();
  EXPECT_EQ(flashmoe_layer_create_with_options(&c, &w, nullptr, nullptr),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "out is a null pointer");
  EXPECT_EQ(flashmoe_layer_create_with_options(&c, &w, nullptr, &layer),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "hidden = 0")) << last_message();
  EXPECT_EQ(layer, nullptr);
  EXPECT_EQ(flashmoe_forward(nullptr, nullptr, nullptr, 1, nullptr, nullptr),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
  EXPECT_EQ(flashmoe_layer_device_status(nullptr, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmoe_layer_workspace_bytes(nullptr), 0u);
  EXPECT_EQ(flashmoe_layer_scratch_bytes(nullptr), 0u);
  flashmoe_layer_destroy(nullptr);
}

TEST(CApi, NullLayerCallsReturnInvalidArgument) {
  flashmoe_weights w{};
  EXPECT_EQ(flashmoe_layer_set_weights(nullptr, &w), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
  EXPECT_EQ(flashmoe_layer_set_weights(nullptr, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
  EXPECT_EQ(flashmoe_layer_set_tracing(nullptr, 64), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
  EXPECT_EQ(flashmoe_layer_write_trace(nullptr, nullptr, "a.json", "a.svg", "a.txt"),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "layer is a null pointer");
}

// ---- GPU ----

struct CLayer {
  flashmoe_layer* layer = nullptr;
  ~CLayer() { flashmoe_layer_destroy(layer); }
};

// Reference rows [0, T) of y for x.
std::vector<double> reference(const flashmoe::Config& cc, const Model& m,
                              const std::vector<std::uint16_t>& x, int T) {
  std::vector<std::uint16_t> ry(static_cast<std::size_t>(T) * cc.hidden);
  std::vector<double> ref(ry.size());
  EXPECT_TRUE(
      flashmoe::reference::forward(cc, m.host_weights(), x.data(), ry.data(), T, {}, ref.data())
          .ok());
  return ref;
}

void expect_rows_match(const std::vector<std::uint16_t>& y, const std::vector<double>& ref,
                       int rows, const flashmoe::Config& cc) {
  for (int t = 0; t < rows; ++t) {
    EXPECT_LT(rel_l2(&y[static_cast<std::size_t>(t) * cc.hidden],
                     &ref[static_cast<std::size_t>(t) * cc.hidden], cc.hidden, cc.dtype),
              tolerance(cc.dtype))
        << "token " << t;
  }
}

// Default options, and tokens_per_launch through the C struct: a smaller scratch, and the
// same forward as three launches.
TEST(CApi, GpuRoundTripMatchesTheReference) {
  FLASHMOE_NEED_GPU();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const flashmoe::Config cc = small_config();
  const Model m = make_model(cc, rng);
  const flashmoe_config c = to_c(cc);
  const flashmoe_weights w = to_c(m);
  for (int per_launch : {0, 2}) {
    SCOPED_TRACE(per_launch);
    flashmoe_layer_options lo;
    flashmoe_layer_options_init(&lo);
    lo.tokens_per_launch = per_launch;
    CLayer l;
    ASSERT_EQ(flashmoe_layer_create_with_options(&c, &w, &lo, &l.layer), FLASHMOE_STATUS_OK)
        << last_message();
    EXPECT_EQ(flashmoe_layer_tokens_per_launch(l.layer), per_launch == 0 ? c.max_tokens : 2);
    EXPECT_EQ(flashmoe_layer_scratch_bytes(l.layer),
              flashmoe_scratch_bytes_per_launch(&c, per_launch));
    EXPECT_EQ(
        flashmoe_layer_workspace_bytes(l.layer),
        per_launch == 0 ? flashmoe_workspace_bytes(&c) : flashmoe::workspace_bytes(cc, per_launch));
    if (per_launch > 0) {
      EXPECT_LT(flashmoe_layer_scratch_bytes(l.layer), flashmoe_scratch_bytes(&c));
    }

    const int T = 5;
    const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, cc.dtype, rng);
    DeviceBuffer dx = upload(x);
    DeviceBuffer dy = upload(std::vector<std::uint16_t>(x.size(), kPoison));
    ASSERT_EQ(flashmoe_forward(l.layer, dx.get(), dy.get(), T, nullptr, nullptr),
              FLASHMOE_STATUS_OK)
        << last_message();
    ASSERT_EQ(flashmoe_layer_device_status(l.layer, nullptr), FLASHMOE_STATUS_OK);
    expect_rows_match(download<std::uint16_t>(dy.get(), x.size()), reference(cc, m, x, T), T, cc);
  }
}

// Caller scratch (shared by two layers), a padded batch with device_num_tokens, the sticky
// device_status word, an older forward-options struct that has neither, and programmatic
// dependent launch.
TEST(CApi, GpuCallerScratchDeviceTokensAndDeviceStatus) {
  FLASHMOE_NEED_GPU();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const flashmoe::Config cc = small_config();
  const Model m = make_model(cc, rng);
  const flashmoe_config c = to_c(cc);
  const flashmoe_weights w = to_c(m);

  const std::size_t scratch_bytes = flashmoe_scratch_bytes(&c);
  ASSERT_GT(scratch_bytes, 0u);
  DeviceBuffer scratch(scratch_bytes);  // cudaMalloc: 256-byte aligned
  ASSERT_NE(scratch.get(), nullptr);
  flashmoe_layer_options lo;
  flashmoe_layer_options_init(&lo);
  lo.max_blocks = 6;
  lo.scratch = scratch.get();
  lo.scratch_bytes = scratch_bytes;
  CLayer a, b;
  ASSERT_EQ(flashmoe_layer_create_with_options(&c, &w, &lo, &a.layer), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_layer_create_with_options(&c, &w, &lo, &b.layer), FLASHMOE_STATUS_OK)
      << last_message();
  EXPECT_EQ(flashmoe_layer_scratch_bytes(a.layer), scratch_bytes);
  // Without its scratch a layer owns only its state.
  EXPECT_EQ(flashmoe_layer_workspace_bytes(a.layer) + scratch_bytes, flashmoe_workspace_bytes(&c));
  lo.scratch_bytes = scratch_bytes - 1;
  CLayer too_small;
  EXPECT_EQ(flashmoe_layer_create_with_options(&c, &w, &lo, &too_small.layer),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "options.scratch_bytes")) << last_message();

  const int T = 6, live = 4;
  const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, cc.dtype, rng);
  const std::vector<double> ref = reference(cc, m, x, T);
  DeviceBuffer dx = upload(x);
  DeviceBuffer dy = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  DeviceBuffer dn = upload(std::vector<std::int32_t>{live});
  DeviceBuffer dstatus = upload(std::vector<std::int32_t>{0});
  flashmoe_forward_options fo;
  flashmoe_forward_options_init(&fo);
  fo.device_num_tokens = dn.get<std::int32_t>();
  fo.device_status = dstatus.get<std::int32_t>();
  for (flashmoe_layer* layer : {a.layer, b.layer}) {
    ASSERT_EQ(flashmoe_forward(layer, dx.get(), dy.get(), T, nullptr, &fo), FLASHMOE_STATUS_OK)
        << last_message();
  }
  ASSERT_EQ(flashmoe_layer_device_status(a.layer, nullptr), FLASHMOE_STATUS_OK) << last_message();
  ASSERT_EQ(flashmoe_layer_device_status(b.layer, nullptr), FLASHMOE_STATUS_OK) << last_message();
  EXPECT_EQ(download<std::int32_t>(dstatus.get(), 1)[0], 0);
  const auto y = download<std::uint16_t>(dy.get(), x.size());
  expect_rows_match(y, ref, live, cc);
  for (std::size_t i = static_cast<std::size_t>(live) * c.hidden; i < y.size(); ++i) {
    ASSERT_EQ(y[i], kPoison) << "padding row " << i / c.hidden << " was written";
  }

  // A routing id out of range fails on the device: the word records it.
  DeviceBuffer ids =
      upload(std::vector<std::int32_t>(static_cast<std::size_t>(T) * cc.top_k, cc.experts));
  DeviceBuffer weights = upload(std::vector<float>(static_cast<std::size_t>(T) * cc.top_k, 0.5f));
  flashmoe_forward_options bad = fo;
  bad.device_num_tokens = nullptr;
  bad.topk_ids = ids.get<std::int32_t>();
  bad.topk_weights = weights.get<float>();
  ASSERT_EQ(flashmoe_forward(a.layer, dx.get(), dy.get(), T, nullptr, &bad), FLASHMOE_STATUS_OK)
      << last_message();
  EXPECT_EQ(flashmoe_layer_device_status(a.layer, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(download<std::int32_t>(dstatus.get(), 1)[0], FLASHMOE_STATUS_INVALID_ARGUMENT);

  // The first-version struct ends before device_num_tokens: all T rows are computed.
  flashmoe_forward_options old = fo;
  old.struct_size = static_cast<std::uint32_t>(kForwardOptionsV1);
  ASSERT_EQ(flashmoe_forward(b.layer, dx.get(), dy.get(), T, nullptr, &old), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_layer_device_status(b.layer, nullptr), FLASHMOE_STATUS_OK) << last_message();
  expect_rows_match(download<std::uint16_t>(dy.get(), x.size()), ref, T, cc);

  // Programmatic dependent launches, the second reading what the first wrote: both correct,
  // and the status word untouched.
  ASSERT_EQ(cudaMemset(dstatus.get(), 0, 4), cudaSuccess);
  flashmoe_forward_options pdl = fo;
  pdl.device_num_tokens = nullptr;
  pdl.programmatic_launch = 1;
  DeviceBuffer dy1 = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  DeviceBuffer dy2 = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  ASSERT_EQ(flashmoe_forward(b.layer, dx.get(), dy1.get(), T, nullptr, &pdl), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_forward(b.layer, dy1.get(), dy2.get(), T, nullptr, &pdl), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_layer_device_status(b.layer, nullptr), FLASHMOE_STATUS_OK) << last_message();
  EXPECT_EQ(download<std::int32_t>(dstatus.get(), 1)[0], 0);
  const auto y1 = download<std::uint16_t>(dy1.get(), x.size());
  expect_rows_match(y1, ref, T, cc);
  expect_rows_match(download<std::uint16_t>(dy2.get(), x.size()), reference(cc, m, y1, T), T, cc);
}

TEST(CApi, GpuSetWeightsThenForward) {
  FLASHMOE_NEED_GPU();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const flashmoe::Config cc = small_config();
  const Model m1 = make_model(cc, rng);
  const Model m2 = make_model(cc, rng);
  const flashmoe_config c = to_c(cc);
  const flashmoe_weights w1 = to_c(m1), w2 = to_c(m2);
  CLayer l;
  ASSERT_EQ(flashmoe_layer_create(&c, &w1, &l.layer), FLASHMOE_STATUS_OK) << last_message();

  const int T = 3;
  const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, cc.dtype, rng);
  DeviceBuffer dx = upload(x);
  DeviceBuffer dy = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  EXPECT_EQ(flashmoe_layer_set_weights(l.layer, nullptr), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(last_message(), "weights is a null pointer");
  flashmoe_weights broken = w2;
  broken.router = nullptr;
  EXPECT_EQ(flashmoe_layer_set_weights(l.layer, &broken), FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), "router")) << last_message();
  // The failed calls kept w1.
  ASSERT_EQ(flashmoe_forward(l.layer, dx.get(), dy.get(), T, nullptr, nullptr), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_layer_device_status(l.layer, nullptr), FLASHMOE_STATUS_OK);
  expect_rows_match(download<std::uint16_t>(dy.get(), x.size()), reference(cc, m1, x, T), T, cc);

  ASSERT_EQ(flashmoe_layer_set_weights(l.layer, &w2), FLASHMOE_STATUS_OK) << last_message();
  EXPECT_EQ(last_message(), "");
  ASSERT_EQ(flashmoe_forward(l.layer, dx.get(), dy.get(), T, nullptr, nullptr), FLASHMOE_STATUS_OK)
      << last_message();
  ASSERT_EQ(flashmoe_layer_device_status(l.layer, nullptr), FLASHMOE_STATUS_OK);
  expect_rows_match(download<std::uint16_t>(dy.get(), x.size()), reference(cc, m2, x, T), T, cc);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(CApi, GpuTraceWritesThreeFiles) {
  FLASHMOE_NEED_GPU();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const flashmoe::Config cc = small_config();
  const Model m = make_model(cc, rng);
  const flashmoe_config c = to_c(cc);
  const flashmoe_weights w = to_c(m);
  CLayer l;
  ASSERT_EQ(flashmoe_layer_create(&c, &w, &l.layer), FLASHMOE_STATUS_OK) << last_message();
  EXPECT_EQ(flashmoe_layer_set_tracing(l.layer, -1), FLASHMOE_STATUS_INVALID_ARGUMENT);
  // Nothing traced yet.
  EXPECT_EQ(flashmoe_layer_write_trace(l.layer, nullptr, nullptr, nullptr, nullptr),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  const flashmoe_status on = flashmoe_layer_set_tracing(l.layer, 256);
  if (on == FLASHMOE_STATUS_NOT_SUPPORTED) GTEST_SKIP() << last_message();
  ASSERT_EQ(on, FLASHMOE_STATUS_OK) << last_message();

  const int T = 4;
  const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, cc.dtype, rng);
  DeviceBuffer dx = upload(x);
  DeviceBuffer dy = upload(std::vector<std::uint16_t>(x.size(), kPoison));
  ASSERT_EQ(flashmoe_forward(l.layer, dx.get(), dy.get(), T, nullptr, nullptr), FLASHMOE_STATUS_OK)
      << last_message();

  std::string dir_template = ::testing::TempDir() + "flashmoe_c_trace_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template.data()), nullptr);
  const std::string dir = dir_template;
  const std::string json = dir + "/trace.json", svg = dir + "/trace.svg",
                    txt = dir + "/summary.txt";
  ASSERT_EQ(flashmoe_layer_write_trace(l.layer, nullptr, json.c_str(), svg.c_str(), txt.c_str()),
            FLASHMOE_STATUS_OK)
      << last_message();
  const std::string json_text = read_file(json), svg_text = read_file(svg),
                    txt_text = read_file(txt);
  EXPECT_FALSE(json_text.empty());
  EXPECT_FALSE(svg_text.empty());
  EXPECT_FALSE(txt_text.empty());
  const std::size_t first = json_text.find_first_not_of(" \t\r\n");
  ASSERT_NE(first, std::string::npos);
  EXPECT_TRUE(json_text[first] == '{' || json_text[first] == '[') << json_text.substr(0, 80);
  EXPECT_TRUE(contains(svg_text, "<svg")) << svg_text.substr(0, 80);
  // NULL paths are skipped; an unwritable one is named.
  EXPECT_EQ(flashmoe_layer_write_trace(l.layer, nullptr, nullptr, nullptr, nullptr),
            FLASHMOE_STATUS_OK)
      << last_message();
  const std::string unwritable = dir + "/no/such/dir/trace.svg";
  EXPECT_EQ(flashmoe_layer_write_trace(l.layer, nullptr, nullptr, unwritable.c_str(), nullptr),
            FLASHMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(last_message(), unwritable)) << last_message();
  for (const std::string& f : {json, svg, txt}) std::remove(f.c_str());
  rmdir(dir.c_str());
  EXPECT_EQ(flashmoe_layer_set_tracing(l.layer, 0), FLASHMOE_STATUS_OK) << last_message();
}

}  // namespace
