// The GPU forward against the CPU reference: shapes x token counts x dtypes, routing edge
// cases, engine options, and the persistent kernel's rules (one launch, graph capture,
// determinism, no deadlock beside other work, watchdog, in-kernel state reset).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "forward_check.hpp"
#include "test_util.hpp"
#include "testing.hpp"

namespace {

using flashmoe::Config;
using flashmoe::DType;
using flashmoe::ForwardOptions;
using flashmoe::Layer;
using flashmoe::StatusCode;
using namespace flashmoe_test;

const Shape kQwen3{"Qwen3_30B_A3B", 2048, 768, 128, 8, true, 16};
const Shape kMixtral{"Mixtral_8x7B", 4096, 14336, 8, 2, true, 4};
const Shape kOlmoe{"OLMoE", 2048, 1024, 64, 8, true, 16};
const Shape kDsv2Lite{"DeepSeek_V2_Lite_routed", 2048, 1408, 64, 6, false, 16};
const Shape kOneExpert{"E1_K1", 64, 40, 1, 1, true, 64};
const Shape kKEqualsE{"K_equals_E", 128, 24, 4, 4, true, 64};
const Shape kOddTiles{"I_not_tile_multiple", 136, 104, 12, 3, true, 64};
const Shape kManyExperts{"E512_K16", 256, 64, 512, 16, true, 32};
const Shape kMaxExperts{"E1024_K32", 128, 48, 1024, 32, false, 32};
// Down tiles longer than kDownSliceBytes run as K slices (decode and prefill kernels) up to
// T*K = kDownSplitMaxPairs; the last slice ends in a partial pipeline step.
const Shape kLongInter{"I_in_K_slices", 64, 16456, 4, 2, true, 16};

// 440: the tall decode kernels (48-row m-tiles) for Qwen3-30B-A3B (27.5 rows per expert, below
// the prefill kernels' switch at 32).
const int kTokenCounts[] = {1, 2, 3, 7, 16, 64, 257, 440, 1024, 4096};

// --- The shape x token-count x dtype matrix -------------------------------------------------

struct MatrixCase {
  Shape shape;
  DType dtype;
};

class ForwardMatrix : public ::testing::TestWithParam<MatrixCase> {};

TEST_P(ForwardMatrix, MatchesReferenceForEveryTokenCount) {
  FLASHMOE_NEED_GPU();
  const MatrixCase& mc = GetParam();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const Model m = make_model(make_config(mc.shape, mc.dtype, 4096), rng);
  Layer layer;
  ASSERT_TRUE(Layer::create(m.config, m.device_weights(), layer).ok());
  StreamGuard stream;
  for (int T : kTokenCounts) {
    SCOPED_TRACE(::testing::Message() << "T = " << T);
    ForwardRun run = make_run(m.config, T, rng);
    ASSERT_TRUE(run_forward(layer, run, stream.get()));
    const std::vector<int> tokens = sample_tokens(T, mc.shape.max_check, rng);
    check_routing(m, run, tokens);
    const double err = check_output(m, run, tokens);
    // The measured error, for the record (the assertion is check_output's tolerance).
    std::printf("[ error    ] %s %s T = %d: max relative L2 error %.3g over %zu tokens\n",
                mc.shape.name, mc.dtype == DType::BF16 ? "bf16" : "fp16", T, err, tokens.size());
  }
}

std::string matrix_name(const ::testing::TestParamInfo<MatrixCase>& info) {
  return std::string(info.param.shape.name) + (info.param.dtype == DType::BF16 ? "_bf16" : "_fp16");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ForwardMatrix,
    ::testing::Values(MatrixCase{kQwen3, DType::BF16}, MatrixCase{kQwen3, DType::FP16},
                      MatrixCase{kMixtral, DType::BF16}, MatrixCase{kMixtral, DType::FP16},
                      MatrixCase{kOlmoe, DType::BF16}, MatrixCase{kOlmoe, DType::FP16},
                      MatrixCase{kDsv2Lite, DType::BF16}, MatrixCase{kDsv2Lite, DType::FP16},
                      MatrixCase{kOneExpert, DType::BF16}, MatrixCase{kOneExpert, DType::FP16},
                      MatrixCase{kKEqualsE, DType::BF16}, MatrixCase{kKEqualsE, DType::FP16},
                      MatrixCase{kOddTiles, DType::BF16}, MatrixCase{kOddTiles, DType::FP16},
                      MatrixCase{kManyExperts, DType::BF16}, MatrixCase{kManyExperts, DType::FP16},
                      MatrixCase{kMaxExperts, DType::BF16}, MatrixCase{kLongInter, DType::BF16},
                      MatrixCase{kLongInter, DType::FP16}),
    matrix_name);

// --- Routing edge cases and engine options ---------------------------------------------------

class Forward : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHMOE_NEED_GPU();
    seed_ = fresh_seed();
    rng_.seed(seed_);
  }
  Model small_model(DType dt = DType::BF16, int max_tokens = 1024, int intermediate = 136) {
    Config c;
    c.hidden = 256;
    c.intermediate = intermediate;
    c.experts = 16;
    c.top_k = 4;
    c.dtype = dt;
    c.max_tokens = max_tokens;
    return make_model(c, rng_);
  }
  // One y for every run and every grid size, at T = 1, 64 and 1024.
  void check_bitwise_identical(const Model& m);
  // A forward of T tokens on `layer` (a short watchdog) whose first gate/up tile never counts:
  // DeviceTimeout, reported at the down tile that waits for it. Clears the fault after.
  void expect_dropped_count_times_out(Layer& layer, const Config& c, int T, cudaStream_t stream);
  // A forward of T tokens on `layer` with `fault` injected (cleared after): the launch's error,
  // or else the device status it left.
  flashmoe::Status faulty_forward(Layer& layer, const Config& c, int T,
                                  flashmoe::testing::Fault fault, cudaStream_t stream);
  // A traced forward of T tokens on `layer`: its routing events (one a router chunk, and the
  // tile table's unless the launch was table-free), its m-tile height in `tile_m`; -1 on failure.
  int traced_routing_events(Layer& layer, const Config& c, int T, cudaStream_t stream,
                            int& tile_m);
  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// One Layer of `m` for each grid size (LayerOptions::max_blocks; 0 is the library's choice),
// appended to `layers`.
void create_layer_per_grid(const Model& m, std::initializer_list<int> grids,
                           std::vector<Layer>& layers) {
  for (int blocks : grids) {
    flashmoe::LayerOptions o;
    o.max_blocks = blocks;
    layers.emplace_back();
    ASSERT_TRUE(Layer::create(m.config, m.device_weights(), layers.back(), o).ok());
  }
}

// A Layer of `m` whose device-side waits end in DeviceTimeout after 100 ms: the failure tests.
void create_short_watchdog_layer(const Model& m, Layer& layer) {
  flashmoe::LayerOptions options;
  options.watchdog_ms = 100;
  ASSERT_TRUE(Layer::create(m.config, m.device_weights(), layer, options).ok());
}

// A decode launch's router chunks of T tokens: one routing event each in its trace.
int router_chunks(int T) {
  return (T + flashmoe::detail::kRouterTokens - 1) / flashmoe::detail::kRouterTokens;
}

// Router rows: experts 0..K-1 get (K - e) * 0.05 in every column, the others 0. With x > 0
// (make_inputs_positive) every token's logits rank experts 0..K-1 first, in that order; experts
// K.. get no token.
void rig_router_to_the_first_experts(Model& m) {
  const Config& c = m.config;
  for (int e = 0; e < c.experts; ++e)
    for (int h = 0; h < c.hidden; ++h)
      m.router[static_cast<std::size_t>(e) * c.hidden + h] =
          flashmoe::reference::from_float(e < c.top_k ? 0.05f * (c.top_k - e) : 0.0f, c.dtype);
  m.d_router = upload(m.router);
}
void make_inputs_positive(ForwardRun& run, flashmoe::DType dtype) {
  for (auto& v : run.x) {
    const float f = flashmoe::reference::to_float(v, dtype);
    v = flashmoe::reference::from_float(std::abs(f) + 0.1f, dtype);
  }
}

TEST_F(Forward, SkewedRoutingEveryTokenToTheSameExperts) {
  SCOPED_TRACE(seed_);
  Model m = small_model();
  const Config& c = m.config;
  rig_router_to_the_first_experts(m);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  StreamGuard stream;
  for (int T : {1, 64, 1024}) {
    SCOPED_TRACE(::testing::Message() << "T = " << T);
    ForwardRun run = make_run(c, T, rng_);
    make_inputs_positive(run, c.dtype);  // so the rigged experts win
    ASSERT_TRUE(run_forward(layer, run, stream.get()));
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < c.top_k; ++k) ASSERT_EQ(run.ids[t * c.top_k + k], k) << "token " << t;
    check_output(m, run, sample_tokens(T, 64, rng_));
  }
}

TEST_F(Forward, CallerSuppliedRoutingIncludingRepeatedExperts) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  StreamGuard stream;
  // Prefill, decode, decode of one router chunk, and of one token (each pair its own m-tile,
  // a repeated expert in two of them).
  for (int T : {300, 7, 3, 1}) {
    for (bool repeats : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "T = " << T << (repeats ? ", a repeated expert" : ""));
      std::vector<std::int32_t> ids(static_cast<std::size_t>(T) * c.top_k);
      std::vector<float> wts(ids.size());
      std::uniform_real_distribution<float> uw(0.05f, 1.0f);
      for (int t = 0; t < T; ++t) {
        std::vector<std::int32_t> perm(c.experts);
        for (int e = 0; e < c.experts; ++e) perm[e] = e;
        std::shuffle(perm.begin(), perm.end(), rng_);
        for (int k = 0; k < c.top_k; ++k) {
          ids[t * c.top_k + k] = repeats && k == 1 ? perm[0] : perm[k];
          wts[t * c.top_k + k] = uw(rng_);
        }
      }
      DeviceBuffer d_ids = upload(ids), d_wts = upload(wts);
      ForwardOptions o;
      o.topk_ids = d_ids.get<std::int32_t>();
      o.topk_weights = d_wts.get<float>();
      ForwardRun run = make_run(c, T, rng_);
      ASSERT_TRUE(run_forward(layer, run, stream.get(), o));
      EXPECT_EQ(run.ids, ids);
      EXPECT_EQ(run.weights, wts);
      check_output(m, run, sample_tokens(T, 64, rng_));
    }
  }
}

TEST_F(Forward, BadCallerIdIsReportedAndYIsUntouched) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  for (int T : {20, 5, 3, 1}) {  // decode; 3: one router chunk; 1: pairs as m-tiles
    SCOPED_TRACE(::testing::Message() << "T = " << T);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T) * c.top_k);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i % c.experts);
    ids[ids.size() - 3] = c.experts;  // out of range
    DeviceBuffer d_ids = upload(ids), d_wts = upload(std::vector<float>(ids.size(), 0.25f));
    ForwardRun run = make_run(c, T, rng_);
    run.y_in = random_values(run.x.size(), 1.0f, c.dtype, rng_);
    DeviceBuffer dx = upload(run.x), dy = upload(run.y_in);
    ForwardOptions o;
    o.topk_ids = d_ids.get<std::int32_t>();
    o.topk_weights = d_wts.get<float>();
    ASSERT_TRUE(flashmoe::forward(layer, dx.get(), dy.get(), T, nullptr, o).ok());
    const flashmoe::Status s = layer.device_status(nullptr);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
    EXPECT_NE(s.message().find("routing id"), std::string::npos) << s.message();
    EXPECT_EQ(download<std::uint16_t>(dy.get(), run.x.size()), run.y_in);
    // The layer recovers: the next forward is right and reports Ok.
    ForwardRun good = make_run(c, T, rng_);
    ASSERT_TRUE(run_forward(layer, good, nullptr));
    check_output(m, good, sample_tokens(T, T, rng_));
  }
}

TEST_F(Forward, BetaAccumulatesIntoY) {
  SCOPED_TRACE(seed_);
  const Model m = small_model(DType::FP16);
  Layer layer;
  ASSERT_TRUE(Layer::create(m.config, m.device_weights(), layer).ok());
  StreamGuard stream;
  for (float beta : {0.5f, -1.25f, 1.0f}) {
    ForwardRun run = make_run(m.config, 77, rng_);
    run.y_in = random_values(run.x.size(), 1.0f, m.config.dtype, rng_);
    ForwardOptions o;
    o.beta = beta;
    ASSERT_TRUE(run_forward(layer, run, stream.get(), o));
    check_output(m, run, sample_tokens(77, 77, rng_), beta);
  }
}

TEST_F(Forward, InPlaceXEqualsY) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  for (int T : {5, 1000}) {
    ForwardRun run = make_run(c, T, rng_);
    DeviceBuffer dxy = upload(run.x);
    DeviceBuffer ids(static_cast<std::size_t>(T) * c.top_k * 4), wts(ids.bytes());
    ForwardOptions o;
    o.out_topk_ids = ids.get<std::int32_t>();
    o.out_topk_weights = wts.get<float>();
    ASSERT_TRUE(flashmoe::forward(layer, dxy.get(), dxy.get(), T, nullptr, o).ok());
    ASSERT_TRUE(layer.device_status(nullptr).ok());
    run.y = download<std::uint16_t>(dxy.get(), run.x.size());
    run.ids = download<std::int32_t>(ids.get(), static_cast<std::size_t>(T) * c.top_k);
    run.weights = download<float>(wts.get(), static_cast<std::size_t>(T) * c.top_k);
    const std::vector<int> tokens = sample_tokens(T, 64, rng_);
    check_routing(m, run, tokens);
    check_output(m, run, tokens);
  }
}

TEST_F(Forward, SigmoidBiasScalingAndGeluVariants) {
  SCOPED_TRACE(seed_);
  struct Variant {
    flashmoe::Scoring scoring;
    bool bias, renormalize;
    float scaling;
    flashmoe::Activation act;
  } variants[] = {
      {flashmoe::Scoring::Sigmoid, true, true, 2.5f, flashmoe::Activation::SiluGated},
      {flashmoe::Scoring::Sigmoid, false, false, 1.0f, flashmoe::Activation::GeluGated},
      {flashmoe::Scoring::Softmax, false, false, 1.5f, flashmoe::Activation::GeluTanhGated},
  };
  for (const Variant& v : variants) {
    Config c;
    c.hidden = 192;
    c.intermediate = 72;
    c.experts = 32;
    c.top_k = 6;
    c.max_tokens = 512;
    c.activation = v.act;
    c.routing.scoring = v.scoring;
    c.routing.use_correction_bias = v.bias;
    c.routing.renormalize = v.renormalize;
    c.routing.routed_scaling_factor = v.scaling;
    const Model m = make_model(c, rng_);
    Layer layer;
    ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
    for (int T : {3, 512}) {
      ForwardRun run = make_run(c, T, rng_);
      ASSERT_TRUE(run_forward(layer, run, nullptr));
      const std::vector<int> tokens = sample_tokens(T, 64, rng_);
      check_routing(m, run, tokens);
      check_output(m, run, tokens);
    }
  }
}

TEST_F(Forward, MinusInfinityBiasMasksExperts) {
  SCOPED_TRACE(seed_);
  Config c;
  c.hidden = 128;
  c.intermediate = 64;
  c.experts = 32;
  c.top_k = 6;
  c.max_tokens = 64;
  c.routing.scoring = flashmoe::Scoring::Sigmoid;
  c.routing.use_correction_bias = true;
  Model m = make_model(c, rng_);
  // Only experts 5, 17 and 30 are selectable; the other three picks are masked experts,
  // ranked last and tied, so the lowest ids win: 0, 1, 2.
  for (int e = 0; e < c.experts; ++e) m.bias[e] = (e == 5 || e == 17 || e == 30) ? 0.0f : -INFINITY;
  m.d_bias = upload(m.bias);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  ForwardRun run = make_run(c, 40, rng_);
  ASSERT_TRUE(run_forward(layer, run, nullptr));
  for (int t = 0; t < run.tokens; ++t) {
    std::set<int> ids(run.ids.begin() + t * c.top_k, run.ids.begin() + (t + 1) * c.top_k);
    EXPECT_EQ(ids, (std::set<int>{0, 1, 2, 5, 17, 30})) << "token " << t;
  }
  check_routing(m, run, sample_tokens(run.tokens, 40, rng_));
  check_output(m, run, sample_tokens(run.tokens, 40, rng_));
}

// --- Rules of the persistent kernel ----------------------------------------------------------

// Every decode kernel (three m-tile heights x four pairs of tile widths) against the reference,
// in bf16. The forward matrix reaches only some of them: the narrow gate/up kernels of the 32-
// and 48-row heights need few experts and a wide H. The shapes and token counts below reach all
// twelve on a device of 132 SMs with two blocks each (H100, H200; worked out from
// decode_variant and choose_decode_kernel); the trace says which kernel ran.
// Prefill forwards on an sm_90 device run the warp-specialised kernel when the build carries
// sm_90a code: 64-row m-tiles while experts average fewer than 96 rows, 128-row ones from there;
// the prefill kernel otherwise. Skewed routing (every token to the same experts) and E = 1 put
// many m-tiles on one expert; the switch moved down to 1 row per expert (a test hook) gives
// m-tiles that are mostly padding.
TEST_F(Forward, PrefillRunsTheWarpSpecialisedKernelOnSm90a) {
  SCOPED_TRACE(seed_);
#ifdef FLASHMOE_TEST_HAS_SM90A
  constexpr bool kBuiltForSm90a = true;
#else
  constexpr bool kBuiltForSm90a = false;
#endif
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  const bool ws = kBuiltForSm90a && major == 9;
  struct Case {
    int hidden, inter, experts, top_k, tokens, tile_m;
    bool skewed;
    int prefill_rows;  // testing::set_prefill_switch (0: the library's rule)
    int max_tokens = 1024;
    int ws_tall_rows = 0;  // testing::set_ws_tile_switch (0: the library's rule)
    int down_slices = 0;   // testing::set_down_slices (0: the library's model)
    double down_lead = 0;  // testing::set_down_lead (0: every gate/up tile before any down tile)
    int max_blocks = 0;    // LayerOptions::max_blocks
    int gather_parts = 0;  // testing::set_gather_parts (0: the library's rule)
  };
  // Experts' last 128-row m-tiles of at most 64 rows run as half tiles: in the 4000-pair case
  // (about 250 rows an expert), the skewed one (777 rows), the 150-row one of three down column
  // tiles, and the last m-tile of every expert in the forced 128-row case below.
  const Case cases[] = {
      {256, 136, 16, 4, 200, 64, false, 0},            // 800 pairs over 16 experts: 64-row m-tiles
      {256, 136, 16, 4, 200, 128, false, 0, 1024, 1},  // the same as half tiles of 128-row ones
      {256, 136, 16, 4, 1000, 128, false, 0},          // 4000 pairs: 128-row m-tiles
      {200, 88, 16, 4, 777, 128, true, 0},    // every token on the same 4 experts; odd H, I
      {72, 40, 1, 1, 999, 128, false, 0},     // E = 1: 8 m-tiles of one expert
      {520, 136, 16, 4, 600, 128, false, 0},  // 3 down column tiles, the last 8 columns wide
      {256, 136, 16, 4, 9, 64, false, 1},     // 36 pairs: 2-3 rows in each 64-row m-tile
      // Down tiles in 8 K slices of I, on a scratch planned for no more than 512 tokens.
      {64, 16456, 4, 2, 500, 128, false, 0, 512},
      // K slices forced where the model would choose others: 3 slices of 33 steps of the 97,
      // the last 31 and partial; then none over the same long K.
      {64, 6200, 4, 2, 300, 128, false, 0, 1024, 0, 3},
      {64, 6200, 4, 2, 300, 128, false, 0, 1024, 0, 1},
      // Down tiles interleaved with the gate/up tiles (ws_ticket_order.hpp), on both m-tile
      // heights (leads of 14 and 33 m-tiles against about 17 and 37).
      {256, 136, 16, 4, 200, 64, false, 0, 1024, 0, 0, 0.2},
      {256, 136, 16, 4, 1000, 128, false, 0, 1024, 0, 0, 0.5},
      // One block takes the tickets in order, so a down tile ahead of a gate/up tile it waits
      // for would hang it into the watchdog: 4 experts of 7 m-tiles, 7 gate/up tiles each, and
      // the lead ceil(777 / 128) - 1 = 6, the smallest that keeps this table's order.
      {200, 896, 16, 4, 777, 128, true, 0, 1024, 0, 0, 0.01, 1},
      // Gathers split into column shares where the rule keeps one job an m-tile: 65 chunks a
      // row in 8 parts of 8-9, 25 in 3 on the skewed routing, 9 in 8 (parts of 1-2 chunks).
      {520, 136, 16, 4, 600, 128, false, 0, 1024, 0, 0, 0, 0, 8},
      {200, 88, 16, 4, 777, 128, true, 0, 1024, 0, 0, 0, 0, 3},
      {72, 40, 1, 1, 999, 128, false, 0, 1024, 0, 0, 0, 0, 8},
  };
  StreamGuard stream;
  for (const Case& k : cases) {
    Config c;
    c.hidden = k.hidden;
    c.intermediate = k.inter;
    c.experts = k.experts;
    c.top_k = k.top_k;
    c.max_tokens = k.max_tokens;
    Model m = make_model(c, rng_);
    if (k.skewed) rig_router_to_the_first_experts(m);
    Layer layer;
    flashmoe::LayerOptions options;
    options.max_blocks = k.max_blocks;
    ASSERT_TRUE(Layer::create(c, m.device_weights(), layer, options).ok());
    ASSERT_TRUE(layer.set_tracing(1 << 12).ok());
    flashmoe::testing::set_prefill_switch(layer, k.prefill_rows);
    flashmoe::testing::set_ws_tile_switch(layer, k.ws_tall_rows);
    flashmoe::testing::set_down_slices(layer, k.down_slices);
    flashmoe::testing::set_down_lead(layer, k.down_lead);
    flashmoe::testing::set_gather_parts(layer, k.gather_parts);
    SCOPED_TRACE(::testing::Message() << "H " << c.hidden << " I " << c.intermediate << " E "
                                      << c.experts << " T " << k.tokens);
    ForwardRun run = make_run(c, k.tokens, rng_);
    if (k.skewed) make_inputs_positive(run, c.dtype);
    ASSERT_TRUE(run_forward(layer, run, stream.get()));
    const std::vector<int> tokens = sample_tokens(k.tokens, 32, rng_);
    check_routing(m, run, tokens);
    check_output(m, run, tokens);
    flashmoe::Trace trace;
    ASSERT_TRUE(layer.read_trace(stream.get(), trace).ok());
    expect_untraced_matches(layer, run, stream.get(), 1 << 12);
    EXPECT_EQ(trace.variant, ws ? "prefill_ws" : "prefill");
    if (ws) EXPECT_EQ(trace.tile_m, k.tile_m);
    if (ws && k.down_slices > 0) EXPECT_EQ(trace.down_k_slices, k.down_slices);
    if (k.down_lead > 0) {
      // The order of the tiles changes no bit of the result.
      flashmoe::testing::set_down_lead(layer, 0);
      ForwardRun again = run;
      ASSERT_TRUE(run_forward(layer, again, stream.get()));
      EXPECT_EQ(again.y, run.y);
    }
    if (ws && k.gather_parts > 0) {
      EXPECT_EQ(trace.gather_parts, k.gather_parts);
      // How the copy is split changes no bit of the result.
      flashmoe::testing::set_gather_parts(layer, 1);
      ForwardRun again = run;
      ASSERT_TRUE(run_forward(layer, again, stream.get()));
      EXPECT_EQ(again.y, run.y);
    }
  }
}

// One traced decode forward of T fresh tokens on `layer`: routing and output against the
// reference on up to `samples` tokens, the untraced kernel's bits, and its trace in `trace`.
void check_traced_decode(Layer& layer, const Model& m, const Config& c, int T, int samples,
                         std::mt19937_64& rng, cudaStream_t stream, flashmoe::Trace& trace) {
  ForwardRun run = make_run(c, T, rng);
  ASSERT_TRUE(run_forward(layer, run, stream));
  const std::vector<int> tokens = sample_tokens(T, samples, rng);
  check_routing(m, run, tokens);
  check_output(m, run, tokens);
  ASSERT_TRUE(layer.read_trace(stream, trace).ok());
  expect_untraced_matches(layer, run, stream, 1 << 12);
  ASSERT_EQ(trace.variant, "decode");
}

TEST_F(Forward, EveryDecodeKernelMatchesReference) {
  SCOPED_TRACE(seed_);
  struct Case {
    int hidden, inter, experts, top_k;
    std::vector<int> tokens;  // one per m-tile height, thin to tall
  };
  const Case cases[] = {
      {256, 128, 6, 1, {3, 74, 166}},       // narrow gate/up, narrow down
      {2048, 128, 6, 1, {33, 74, 166}},     // narrow gate/up, mid down
      {4096, 128, 6, 1, {33, 74, 166}},     // narrow gate/up, wide down
      {1024, 512, 16, 1, {128, 256, 437}},  // wide gate/up, wide down
  };
  std::set<std::vector<int>> ran;  // {tile_m, gate/up columns, down columns}
  StreamGuard stream;
  for (const Case& k : cases) {
    Config c;
    c.hidden = k.hidden;
    c.intermediate = k.inter;
    c.experts = k.experts;
    c.top_k = k.top_k;
    c.max_tokens = 1024;
    const Model m = make_model(c, rng_);
    Layer layer;
    ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
    ASSERT_TRUE(layer.set_tracing(1 << 12).ok());
    for (int T : k.tokens) {
      SCOPED_TRACE(::testing::Message() << "H " << c.hidden << " E " << c.experts << " T " << T);
      flashmoe::Trace trace;
      ASSERT_NO_FATAL_FAILURE(check_traced_decode(layer, m, c, T, 24, rng_, stream.get(), trace));
      ran.insert({trace.tile_m, trace.tile_n_gateup, trace.tile_n_down});
    }
  }
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  if (sms != 132) {
    GTEST_SKIP() << "outputs checked; which kernels run was worked out for 132 SMs, not " << sms;
  }
  for (int rows : {16, 32, 48}) {
    for (const auto& [gate_up, down] :
         std::vector<std::pair<int, int>>{{32, 32}, {32, 64}, {32, 128}, {64, 128}}) {
      EXPECT_EQ(ran.count({rows, gate_up, down}), 1u)
          << rows << "-row m-tiles, gate/up " << gate_up << " columns, down " << down;
    }
  }
}

TEST_F(Forward, ForcedDecodeKernelsAndHeightsMatchReference) {
  SCOPED_TRACE(seed_);
  // testing::set_decode_kernel runs each tile-width pair of the forward's m-tile height, and
  // testing::set_decode_height each m-tile height, so that the benchmark can measure the rules'
  // choices against the others on the same forwards.
  Config c;
  c.hidden = 512;
  c.intermediate = 320;
  c.experts = 16;
  c.top_k = 4;
  c.max_tokens = 256;
  const Model m = make_model(c, rng_);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  ASSERT_TRUE(layer.set_tracing(1 << 12).ok());
  const std::pair<int, int> widths[] = {{32, 32}, {32, 64}, {32, 128}, {64, 128}};
  StreamGuard stream;
  for (int T : {1, 4, 37}) {
    for (int k = 0; k < 4; ++k) {
      SCOPED_TRACE(::testing::Message() << "T " << T << " kernel " << k);
      flashmoe::testing::set_decode_kernel(layer, k);
      flashmoe::Trace trace;
      ASSERT_NO_FATAL_FAILURE(check_traced_decode(layer, m, c, T, 16, rng_, stream.get(), trace));
      EXPECT_EQ(trace.tile_n_gateup, widths[k].first);
      EXPECT_EQ(trace.tile_n_down, widths[k].second);
    }
  }
  flashmoe::testing::set_decode_kernel(layer, -1);  // the rule again
  // One live token, a few, 37, and 120 tokens at 30 rows an expert (the rule's tall kernels).
  for (int T : {1, 4, 37, 120}) {
    for (int rows : {16, 32, 48}) {
      SCOPED_TRACE(::testing::Message() << "T " << T << " rows " << rows);
      flashmoe::testing::set_decode_height(layer, rows);
      flashmoe::Trace trace;
      ASSERT_NO_FATAL_FAILURE(check_traced_decode(layer, m, c, T, 16, rng_, stream.get(), trace));
      EXPECT_EQ(trace.tile_m, rows);
    }
  }
  flashmoe::testing::set_decode_height(layer, 0);  // the rule again
}

// testing::set_down_slices in the decode kernels, past what their own tile width would take:
// the scratch's planes are sized for the widest down tile (256 columns over I = 6200: 4 slices),
// so 32-column down tiles (397 KB, one slice by the models) may be cut into 3 (17 steps of the
// 49, the last 15 and partial) or 4. One live token (the one-token path), a 4-token and a
// 37-token launch, against the reference and the untraced kernel's bits.
TEST_F(Forward, ForcedDownSlicesInDecodeKernelsMatchReference) {
  SCOPED_TRACE(seed_);
  Config c;
  c.hidden = 256;
  c.intermediate = 6200;
  c.experts = 4;
  c.top_k = 2;
  c.max_tokens = 64;
  const Model m = make_model(c, rng_);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  ASSERT_TRUE(layer.set_tracing(1 << 12).ok());
  flashmoe::testing::set_decode_kernel(layer, 0);  // 32-column gate/up and down tiles
  StreamGuard stream;
  for (int slices : {3, 4}) {
    flashmoe::testing::set_down_slices(layer, slices);
    for (int T : {1, 4, 37}) {
      SCOPED_TRACE(::testing::Message() << "T " << T << " slices " << slices);
      flashmoe::Trace trace;
      ASSERT_NO_FATAL_FAILURE(check_traced_decode(layer, m, c, T, 12, rng_, stream.get(), trace));
      EXPECT_EQ(trace.tile_n_down, 32);
      EXPECT_EQ(trace.down_k_slices, slices);
    }
  }
  flashmoe::testing::set_down_slices(layer, 0);
  flashmoe::testing::set_decode_kernel(layer, -1);
}

// testing::set_one_token_gateup: decode launches of one live token whose gate/up tiles choose
// their experts from the logits and start before the tile table. Against the table's path on
// the same inputs, the same bits: own routing (top_k 1 to 32, E 1 to 1024, I off the tile,
// fp16), caller routing with a repeated expert, a padded batch of one live token, grid sizes
// from one block up, and consecutive one-token launches (their counters start at zero again).
TEST_F(Forward, OneTokenGateUpTilesGiveTheTablePathsBits) {
  SCOPED_TRACE(seed_);
  std::vector<Model> models;
  models.push_back(small_model());
  for (const Shape& s : {kKEqualsE, kOddTiles, kMaxExperts, kOneExpert}) {
    models.push_back(make_model(make_config(s, DType::BF16, 64), rng_));
  }
  models.push_back(make_model(make_config(kOddTiles, DType::FP16, 64), rng_));
  StreamGuard stream;
  for (const Model& m : models) {
    const Config& c = m.config;
    SCOPED_TRACE(::testing::Message() << "E " << c.experts << " K " << c.top_k << " H " << c.hidden
                                      << " I " << c.intermediate);
    std::vector<Layer> layers;
    ASSERT_NO_FATAL_FAILURE(create_layer_per_grid(m, {0, 1, 3}, layers));
    for (int T : {1, 3, 1}) {
      SCOPED_TRACE(::testing::Message() << "T = " << T);
      ForwardRun table = make_run(c, T, rng_);
      flashmoe::testing::set_one_token_gateup(layers[0], false);
      ASSERT_TRUE(run_forward(layers[0], table, stream.get()));
      check_output(m, table, sample_tokens(T, T, rng_));
      for (Layer& layer : layers) {
        flashmoe::testing::set_one_token_gateup(layer, true);
        for (int rep = 0; rep < 2; ++rep) {
          ForwardRun own = table;
          ASSERT_TRUE(run_forward(layer, own, stream.get()));
          ASSERT_EQ(own.y, table.y) << "max_blocks " << layer.options().max_blocks;
          EXPECT_EQ(own.ids, table.ids);
          EXPECT_EQ(own.weights, table.weights);
        }
      }
    }
    // Caller routing: pair 1 repeats pair 0's expert where K > 1.
    const int K = c.top_k;
    std::vector<std::int32_t> perm(c.experts);
    for (int e = 0; e < c.experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng_);
    std::vector<std::int32_t> ids(perm.begin(), perm.begin() + K);
    if (K > 1) ids[1] = ids[0];
    std::vector<float> wts(K);
    std::uniform_real_distribution<float> uw(0.05f, 1.0f);
    for (float& w : wts) w = uw(rng_);
    DeviceBuffer d_ids = upload(ids), d_wts = upload(wts);
    ForwardOptions caller;
    caller.topk_ids = d_ids.get<std::int32_t>();
    caller.topk_weights = d_wts.get<float>();
    ForwardRun table = make_run(c, 1, rng_);
    flashmoe::testing::set_one_token_gateup(layers[0], false);
    ASSERT_TRUE(run_forward(layers[0], table, stream.get(), caller));
    check_output(m, table, {0});
    flashmoe::testing::set_one_token_gateup(layers[0], true);
    ForwardRun own = table;
    ASSERT_TRUE(run_forward(layers[0], own, stream.get(), caller));
    EXPECT_EQ(own.y, table.y) << "caller routing";
    // A padded batch: capacity 4, one live token; the other rows stay as they were.
    ForwardRun padded = make_run(c, 4, rng_);
    std::vector<std::vector<std::uint16_t>> ys;
    for (bool on : {false, true}) {
      flashmoe::testing::set_one_token_gateup(layers[0], on);
      ys.push_back(padded_forward(layers[0], padded, 1, c, stream.get()));
    }
    EXPECT_FALSE(ys[0].empty());
    EXPECT_EQ(ys[1], ys[0]) << "padded batch";
  }
}

// The one-token path's failures: a gate/up tile that never counts ends in DeviceTimeout at the
// down tile that waits for it, a caller's out-of-range id in InvalidArgument with y untouched;
// after each, the next one-token forward is right (its counters were reset by the failed one).
TEST_F(Forward, OneTokenGateUpFailuresAreReportedAndTheLayerRecovers) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_NO_FATAL_FAILURE(create_short_watchdog_layer(m, layer));
  flashmoe::testing::set_one_token_gateup(layer, true);
  StreamGuard stream;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    ASSERT_NO_FATAL_FAILURE(expect_dropped_count_times_out(layer, c, 1, stream.get()));
    ForwardRun good = make_run(c, 1, rng_);
    ASSERT_TRUE(run_forward(layer, good, stream.get()));
    check_output(m, good, {0});

    std::vector<std::int32_t> ids(c.top_k);
    for (int k = 0; k < c.top_k; ++k) ids[k] = k;
    ids[c.top_k - 1] = c.experts;  // out of range
    DeviceBuffer d_ids = upload(ids), d_wts = upload(std::vector<float>(ids.size(), 0.25f));
    ForwardRun bad = make_run(c, 1, rng_);
    bad.y_in = random_values(bad.x.size(), 1.0f, c.dtype, rng_);
    DeviceBuffer bx = upload(bad.x), by = upload(bad.y_in);
    ForwardOptions o;
    o.topk_ids = d_ids.get<std::int32_t>();
    o.topk_weights = d_wts.get<float>();
    ASSERT_TRUE(flashmoe::forward(layer, bx.get(), by.get(), 1, stream.get(), o).ok());
    const flashmoe::Status b = layer.device_status(stream.get());
    EXPECT_EQ(b.code(), StatusCode::InvalidArgument) << b.to_string();
    EXPECT_EQ(download<std::uint16_t>(by.get(), bad.x.size()), bad.y_in);
    ForwardRun after = make_run(c, 1, rng_);
    ASSERT_TRUE(run_forward(layer, after, stream.get()));
    check_output(m, after, {0});
  }
}

// testing::set_table_free: decode launches of 2 to BM live tokens of their own routing, whose
// blocks find their m-tiles from the pairs instead of a tile table. Against the table's path on
// the same inputs, the same bits: K from 1 to 32, E from 1 to 1024 (every word of the live
// mask, up to 256 pairs), I off the tile, fp16, T on both sides of the m-tile height, the
// 32-row kernels too (forced), every token on the same experts (full m-tiles), a padded batch,
// grid sizes from one block up, and consecutive launches (the experts' gate/up counts start at
// zero again). Traced forwards show which launches took the path: no tile-table event.
TEST_F(Forward, TableFreeTilesGiveTheTablePathsBits) {
  SCOPED_TRACE(seed_);
  std::vector<Model> models;
  models.push_back(small_model());
  for (const Shape& s : {kKEqualsE, kOddTiles, kManyExperts, kMaxExperts, kOneExpert}) {
    models.push_back(make_model(make_config(s, DType::BF16, 64), rng_));
  }
  models.push_back(make_model(make_config(kOddTiles, DType::FP16, 64), rng_));
  StreamGuard stream;
  std::map<int, int> table_free_runs;  // by m-tile height
  // A traced forward of T tokens on `layer` with the path on or off: one routing event per
  // router chunk, and the table's unless the launch was table-free.
  auto check_path = [&](Layer& layer, const Config& c, int T, bool on) {
    flashmoe::testing::set_table_free(layer, on);
    int tile_m = 0;
    const int routing = traced_routing_events(layer, c, T, stream.get(), tile_m);
    ASSERT_GE(routing, 0);
    const bool table_free = on && flashmoe::detail::table_free_tiles(T, c.top_k, tile_m);
    EXPECT_EQ(routing, router_chunks(T) + (table_free ? 0 : 1))
        << tile_m << "-row m-tiles, on " << on;
    if (table_free) ++table_free_runs[tile_m];
  };
  for (const Model& m : models) {
    const Config& c = m.config;
    SCOPED_TRACE(::testing::Message() << "E " << c.experts << " K " << c.top_k << " H " << c.hidden
                                      << " I " << c.intermediate);
    std::vector<Layer> layers;
    ASSERT_NO_FATAL_FAILURE(create_layer_per_grid(m, {0, 1, 3}, layers));
    Layer rows32;  // the 32-row kernels at every T, checked against themselves
    ASSERT_TRUE(Layer::create(c, m.device_weights(), rows32).ok());
    flashmoe::testing::set_decode_height(rows32, flashmoe::detail::kDecodeTileM);
    for (int T : {2, 3, 8, 16, 17, 2}) {
      SCOPED_TRACE(::testing::Message() << "T = " << T);
      ForwardRun table = make_run(c, T, rng_);
      flashmoe::testing::set_table_free(layers[0], false);
      ASSERT_TRUE(run_forward(layers[0], table, stream.get()));
      check_output(m, table, sample_tokens(T, 4, rng_));
      for (Layer& layer : layers) {
        flashmoe::testing::set_table_free(layer, true);
        for (int rep = 0; rep < 2; ++rep) {
          ForwardRun derived = table;
          ASSERT_TRUE(run_forward(layer, derived, stream.get()));
          ASSERT_EQ(derived.y, table.y) << "max_blocks " << layer.options().max_blocks;
          EXPECT_EQ(derived.ids, table.ids);
          EXPECT_EQ(derived.weights, table.weights);
        }
      }
      ForwardRun table32 = table;
      flashmoe::testing::set_table_free(rows32, false);
      ASSERT_TRUE(run_forward(rows32, table32, stream.get()));
      check_output(m, table32, sample_tokens(T, 4, rng_));
      flashmoe::testing::set_table_free(rows32, true);
      ForwardRun derived32 = table;
      ASSERT_TRUE(run_forward(rows32, derived32, stream.get()));
      ASSERT_EQ(derived32.y, table32.y) << "32-row m-tiles";
      for (bool on : {false, true}) {
        ASSERT_NO_FATAL_FAILURE(check_path(layers[0], c, T, on));
        ASSERT_NO_FATAL_FAILURE(check_path(rows32, c, T, on));
      }
    }
    // A padded batch: capacity 8, three live tokens; the other rows stay as they were.
    ForwardRun padded = make_run(c, 8, rng_);
    std::vector<std::vector<std::uint16_t>> ys;
    for (bool on : {false, true}) {
      flashmoe::testing::set_table_free(layers[0], on);
      ys.push_back(padded_forward(layers[0], padded, 3, c, stream.get()));
    }
    EXPECT_FALSE(ys[0].empty());
    EXPECT_EQ(ys[1], ys[0]) << "padded batch";
  }
  EXPECT_GT(table_free_runs[flashmoe::detail::kThinDecodeTileM], 0);
  EXPECT_GT(table_free_runs[flashmoe::detail::kDecodeTileM], 0);
  // Every token on experts 0..K-1: the m-tiles are full at T = 16, the thin kernels' height.
  Model rigged = small_model();
  rig_router_to_the_first_experts(rigged);
  Layer layer;
  ASSERT_TRUE(Layer::create(rigged.config, rigged.device_weights(), layer).ok());
  for (int T : {2, 16}) {
    SCOPED_TRACE(::testing::Message() << "rigged, T = " << T);
    ForwardRun table = make_run(rigged.config, T, rng_);
    make_inputs_positive(table, rigged.config.dtype);
    flashmoe::testing::set_table_free(layer, false);
    ASSERT_TRUE(run_forward(layer, table, stream.get()));
    check_output(rigged, table, sample_tokens(T, 4, rng_));
    flashmoe::testing::set_table_free(layer, true);
    ForwardRun derived = table;
    ASSERT_TRUE(run_forward(layer, derived, stream.get()));
    EXPECT_EQ(derived.y, table.y);
  }
}

// A table-free launch whose gate/up tile never counts ends in DeviceTimeout at the down tile that
// waits for it; the next forward is right (the last block out zeroed the experts' counts).
TEST_F(Forward, TableFreeFailureIsReportedAndTheLayerRecovers) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_NO_FATAL_FAILURE(create_short_watchdog_layer(m, layer));
  flashmoe::testing::set_table_free(layer, true);
  StreamGuard stream;
  // The failing launches take the path: a traced one of the same T builds no tile table.
  int tile_m = 0;
  ASSERT_EQ(traced_routing_events(layer, c, 3, stream.get(), tile_m), router_chunks(3));
  ASSERT_TRUE(flashmoe::detail::table_free_tiles(3, c.top_k, tile_m)) << tile_m;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    ASSERT_NO_FATAL_FAILURE(expect_dropped_count_times_out(layer, c, 3, stream.get()));
    for (int T : {3, 5}) {
      ForwardRun good = make_run(c, T, rng_);
      ASSERT_TRUE(run_forward(layer, good, stream.get()));
      check_output(m, good, sample_tokens(T, T, rng_));
    }
  }
}

void Forward::expect_dropped_count_times_out(Layer& layer, const Config& c, int T,
                                             cudaStream_t stream) {
  const flashmoe::Status s =
      faulty_forward(layer, c, T, flashmoe::testing::Fault::DropMTileSignal, stream);
  EXPECT_EQ(s.code(), StatusCode::DeviceTimeout) << s.to_string();
  EXPECT_NE(s.message().find("down tile"), std::string::npos) << s.message();
}

flashmoe::Status Forward::faulty_forward(Layer& layer, const Config& c, int T,
                                         flashmoe::testing::Fault fault, cudaStream_t stream) {
  flashmoe::testing::inject_fault(layer, fault);
  ForwardRun run = make_run(c, T, rng_);
  DeviceBuffer dx = upload(run.x), dy = upload(run.y_in);
  flashmoe::Status s = flashmoe::forward(layer, dx.get(), dy.get(), T, stream);
  if (s.ok()) s = layer.device_status(stream);
  flashmoe::testing::inject_fault(layer, flashmoe::testing::Fault::None);
  return s;
}

int Forward::traced_routing_events(Layer& layer, const Config& c, int T, cudaStream_t stream,
                                   int& tile_m) {
  EXPECT_TRUE(layer.set_tracing(1 << 12).ok());
  ForwardRun run = make_run(c, T, rng_);
  flashmoe::Trace trace;
  const bool traced = run_forward(layer, run, stream) && layer.read_trace(stream, trace).ok();
  EXPECT_TRUE(layer.set_tracing(0).ok());
  EXPECT_TRUE(traced);
  if (!traced) return -1;
  tile_m = trace.tile_m;
  int routing = 0;
  for (const auto& e : trace.events) routing += e.kind == flashmoe::TraceKind::Routing ? 1 : 0;
  return routing;
}

TEST_F(Forward, BitwiseIdenticalAcrossRunsAndGridSizes) {
  SCOPED_TRACE(seed_);
  check_bitwise_identical(small_model());
  // Down tiles in K slices (summed by the combine in a fixed order).
  check_bitwise_identical(make_model(make_config(kLongInter, DType::BF16, 1024), rng_));
}

void Forward::check_bitwise_identical(const Model& m) {
  const Config& c = m.config;
  SCOPED_TRACE(::testing::Message() << "I = " << c.intermediate);
  std::vector<Layer> layers;
  ASSERT_NO_FATAL_FAILURE(create_layer_per_grid(m, {0, 1, 3, 17, 50}, layers));
  for (int T : {1, 64, 1024}) {
    ForwardRun first = make_run(c, T, rng_);
    ASSERT_TRUE(run_forward(layers[0], first, nullptr));
    check_output(m, first, sample_tokens(T, 32, rng_));
    for (Layer& layer : layers) {
      for (int rep = 0; rep < 3; ++rep) {
        ForwardRun again = first;
        ASSERT_TRUE(run_forward(layer, again, nullptr));
        ASSERT_EQ(again.y, first.y)
            << "T = " << T << ", max_blocks = " << layer.options().max_blocks;
      }
    }
  }
}

TEST_F(Forward, GraphCaptureIsOneKernelNodeAndReplays1000Times) {
  SCOPED_TRACE(seed_);
  const Model m = small_model(DType::BF16, 8);
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  const int T = 8;
  const std::size_t n = static_cast<std::size_t>(T) * c.hidden,
                    pairs = static_cast<std::size_t>(T) * c.top_k;
  DeviceBuffer dx(n * 2), dy(n * 2), ids(pairs * 4), wts(pairs * 4);
  StreamGuard stream;
  ForwardOptions o;
  o.out_topk_ids = ids.get<std::int32_t>();
  o.out_topk_weights = wts.get<float>();

  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flashmoe::Status s = flashmoe::forward(layer, dx.get(), dy.get(), T, stream.get(), o);
  CUDA_OK(cudaStreamEndCapture(stream.get(), &graph));
  ASSERT_TRUE(s.ok()) << s.to_string();
  std::size_t nodes = 0;
  CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
  ASSERT_EQ(nodes, 1u) << "forward must be exactly one kernel and nothing else";
  cudaGraphNode_t node;
  CUDA_OK(cudaGraphGetNodes(graph, &node, &nodes));
  cudaGraphNodeType type;
  CUDA_OK(cudaGraphNodeGetType(node, &type));
  EXPECT_EQ(type, cudaGraphNodeTypeKernel);
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  for (int replay = 0; replay < 1000; ++replay) {
    ForwardRun run = make_run(c, T, rng_);
    CUDA_OK(cudaMemcpyAsync(dx.get(), run.x.data(), n * 2, cudaMemcpyHostToDevice, stream.get()));
    CUDA_OK(cudaMemsetAsync(dy.get(), 0xFF, n * 2, stream.get()));  // poison
    CUDA_OK(cudaGraphLaunch(exec, stream.get()));
    ASSERT_TRUE(layer.device_status(stream.get()).ok());
    run.y = download<std::uint16_t>(dy.get(), n);
    run.ids = download<std::int32_t>(ids.get(), pairs);
    run.weights = download<float>(wts.get(), pairs);
    SCOPED_TRACE(::testing::Message() << "replay " << replay);
    if (replay % 100 == 0) check_routing(m, run, sample_tokens(T, T, rng_));
    check_output(m, run, sample_tokens(T, T, rng_));
    if (HasFailure()) break;
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
}

__global__ void busy_kernel(unsigned long long ns) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

TEST_F(Forward, CorrectWhileAnotherKernelOccupiesTheGpu) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  Layer layer;
  ASSERT_TRUE(Layer::create(m.config, m.device_weights(), layer).ok());
  int sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, layer.device()));
  StreamGuard busy, work;
  for (int T : {16, 1024}) {
    // A whole 1024-thread block on 3/4 of the SMs for 30 ms: the MoE kernel starts with few
    // resident blocks and gains more as the busy blocks leave.
    busy_kernel<<<sms * 3 / 4, 1024, 0, busy.get()>>>(30ull * 1000 * 1000);
    CUDA_OK(cudaGetLastError());
    ForwardRun run = make_run(m.config, T, rng_);
    ASSERT_TRUE(run_forward(layer, run, work.get()));
    CUDA_OK(cudaStreamSynchronize(busy.get()));
    check_output(m, run, sample_tokens(T, 64, rng_));
  }
}

TEST_F(Forward, TwoLayersConcurrentlyOnTwoStreams) {
  SCOPED_TRACE(seed_);
  const Model ma = small_model(), mb = small_model(DType::FP16);
  Layer la, lb;
  ASSERT_TRUE(Layer::create(ma.config, ma.device_weights(), la).ok());
  ASSERT_TRUE(Layer::create(mb.config, mb.device_weights(), lb).ok());
  StreamGuard sa, sb;
  const int T = 200, reps = 10;
  struct Job {
    const Model* m;
    Layer* layer;
    cudaStream_t stream;
    ForwardRun run;
    DeviceBuffer dx, dy, ids, wts;
  };
  std::vector<Job> jobs;
  for (int r = 0; r < reps; ++r) {
    for (int which = 0; which < 2; ++which) {
      const Model& m = which ? mb : ma;
      Job j{&m,
            which ? &lb : &la,
            which ? sb.get() : sa.get(),
            make_run(m.config, T, rng_),
            {},
            {},
            {},
            {}};
      j.dx = upload(j.run.x);
      j.dy = upload(j.run.y_in);
      j.ids = DeviceBuffer(static_cast<std::size_t>(T) * m.config.top_k * 4);
      j.wts = DeviceBuffer(j.ids.bytes());
      jobs.push_back(std::move(j));
    }
  }
  CUDA_OK(cudaDeviceSynchronize());
  for (Job& j : jobs) {  // interleaved on the two streams, no waits in between
    ForwardOptions o;
    o.out_topk_ids = j.ids.get<std::int32_t>();
    o.out_topk_weights = j.wts.get<float>();
    ASSERT_TRUE(flashmoe::forward(*j.layer, j.dx.get(), j.dy.get(), T, j.stream, o).ok());
  }
  ASSERT_TRUE(la.device_status(sa.get()).ok());
  ASSERT_TRUE(lb.device_status(sb.get()).ok());
  for (Job& j : jobs) {
    j.run.y = download<std::uint16_t>(j.dy.get(), j.run.x.size());
    j.run.ids =
        download<std::int32_t>(j.ids.get(), static_cast<std::size_t>(T) * j.m->config.top_k);
    j.run.weights = download<float>(j.wts.get(), j.run.ids.size());
    check_output(*j.m, j.run, sample_tokens(T, 16, rng_));
  }
}

TEST_F(Forward, WatchdogTurnsAHangIntoDeviceTimeoutAndTheLayerRecovers) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  Layer layer;
  ASSERT_NO_FATAL_FAILURE(create_short_watchdog_layer(m, layer));
  StreamGuard stream;
  for (int round = 0; round < 2; ++round) {
    for (int T : {1, 4, 700}) {  // 1: the pairs are the m-tiles
      SCOPED_TRACE(::testing::Message() << "round " << round << " T = " << T);
      ASSERT_NO_FATAL_FAILURE(expect_dropped_count_times_out(layer, m.config, T, stream.get()));
      EXPECT_TRUE(layer.device_status(stream.get()).ok()) << "status is cleared once read";

      ForwardRun good = make_run(m.config, T, rng_);
      ASSERT_TRUE(run_forward(layer, good, stream.get()));
      check_output(m, good, sample_tokens(T, 32, rng_));
    }
  }
}

// Decode tiles that start before any tile table wait for routing's own signal: one live token's
// gate/up tiles for its experts, a table-free launch's tiles for every router chunk's count.
// Routing that never signals ends the forward in DeviceTimeout at that wait; the Layer recovers.
TEST_F(Forward, WatchdogEndsAMissingRoutingSignalAndTheLayerRecovers) {
  SCOPED_TRACE(seed_);
  const Model m = small_model();
  const Config& c = m.config;
  Layer layer;
  ASSERT_NO_FATAL_FAILURE(create_short_watchdog_layer(m, layer));
  flashmoe::testing::set_one_token_gateup(layer, true);
  flashmoe::testing::set_table_free(layer, true);
  StreamGuard stream;
  int tile_m = 0;  // T = 3 takes the table-free path: a traced forward builds no tile table
  ASSERT_EQ(traced_routing_events(layer, c, 3, stream.get(), tile_m), router_chunks(3));
  for (int round = 0; round < 2; ++round) {
    for (int T : {1, 3}) {
      SCOPED_TRACE(::testing::Message() << "round " << round << " T = " << T);
      const flashmoe::Status s =
          faulty_forward(layer, c, T, flashmoe::testing::Fault::DropRoutingSignal, stream.get());
      EXPECT_EQ(s.code(), StatusCode::DeviceTimeout) << s.to_string();
      // T = 1 publishes a tile table too: its down tiles then wait for gate/up tiles that never
      // ran, and either wait may reach the watchdog first.
      const bool at_routing = s.message().find("choose its tokens' experts") != std::string::npos;
      const bool at_down = s.message().find("down tile") != std::string::npos;
      EXPECT_TRUE(at_routing || (T == 1 && at_down)) << s.message();

      ForwardRun good = make_run(c, T, rng_);
      ASSERT_TRUE(run_forward(layer, good, stream.get()));
      check_output(m, good, sample_tokens(T, T, rng_));
    }
  }
}

// A copy-engine wait that never completes (one down tile's first weight stage is never
// requested) ends the forward with DeviceTimeout after one watchdog period, not one per later
// wait on that stage: I = 4096 gives the down tiles 32 (decode) and 64 (prefill) K steps over
// 4-8 stages, and each later wait would be one phase behind its copy. The abandoned tile
// publishes nothing: every element of y is either as it was or bitwise the value a forward
// without the fault writes (never a partial sum), x == y included. Then the Layer recovers.
TEST_F(Forward, WatchdogEndsAStalledWeightCopyOnceAndTheLayerRecovers) {
  SCOPED_TRACE(seed_);
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  if (major < 9) GTEST_SKIP() << "the weight copies use the copy engine from sm_90 on";
  const Model m = small_model(DType::BF16, 1024, 4096);
  Layer layer;
  ASSERT_NO_FATAL_FAILURE(create_short_watchdog_layer(m, layer));
  StreamGuard stream;
  for (int T : {1, 4, 700}) {  // decode (1: the pairs are the m-tiles) and prefill kernels
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "T = " << T << (in_place ? ", x == y" : ""));
      ForwardRun clean = make_run(m.config, T, rng_);
      ASSERT_TRUE(run_forward(layer, clean, stream.get()));

      flashmoe::testing::inject_fault(layer, flashmoe::testing::Fault::StallWeightCopy);
      const std::vector<std::uint16_t> before =
          in_place ? clean.x : std::vector<std::uint16_t>(clean.x.size(), 0x1234);
      DeviceBuffer dx = upload(clean.x), dy = upload(before);
      void* y = in_place ? dx.get() : dy.get();
      const auto start = std::chrono::steady_clock::now();
      ASSERT_TRUE(flashmoe::forward(layer, dx.get(), y, T, stream.get()).ok());
      ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      const flashmoe::Status s = layer.device_status(stream.get());
      EXPECT_EQ(s.code(), StatusCode::DeviceTimeout) << s.to_string();
      EXPECT_NE(s.message().find("weight copies"), std::string::npos) << s.message();
      EXPECT_LT(ms, 1.8 * layer.options().watchdog_ms)
          << "the stalled stage ran into the watchdog again";
      const std::vector<std::uint16_t> after = download<std::uint16_t>(y, before.size());
      std::size_t untouched = 0, complete = 0;
      for (std::size_t i = 0; i < after.size(); ++i) {
        if (after[i] == before[i]) {
          ++untouched;
        } else if (after[i] == clean.y[i]) {
          ++complete;
        } else {
          FAIL() << "y[" << i / m.config.hidden << ", " << i % m.config.hidden
                 << "] holds neither its old value nor the final one";
        }
      }
      EXPECT_GT(untouched, 0u) << "the stalled tile's columns cannot have been written";
      std::printf("[ watchdog ] T = %d%s: %zu of %zu elements of y untouched, %zu final\n", T,
                  in_place ? " in place" : "", untouched, after.size(), complete);

      flashmoe::testing::inject_fault(layer, flashmoe::testing::Fault::None);
      ForwardRun good = make_run(m.config, T, rng_);
      ASSERT_TRUE(run_forward(layer, good, stream.get()));
      check_output(m, good, sample_tokens(T, 32, rng_));
    }
  }
}

}  // namespace
