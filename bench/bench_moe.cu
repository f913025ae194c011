// FlashMoE microbenchmarks (Google Benchmark). Each benchmark times one forward as an engine
// runs it: a CUDA graph holding kInputs forwards on different inputs (so routing, and the
// experts read, differ from one forward to the next), replayed; CUDA events; the median time
// per forward is reported with the memory floor of the card, measured in the same run, and
// with the time of the unfused cuBLAS forward an engine would otherwise run (cublas_baseline.cuh)
// on the same inputs.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bench_check.hpp"
#include "bench_fill.cuh"
#include "cublas_baseline.cuh"
#include "flashmoe/flashmoe.hpp"
#include "testing.hpp"
#include "tile_choice.hpp"

namespace {

constexpr int kInputs = 8;

#define BENCH_CUDA(expr)                                                                 \
  do {                                                                                   \
    const cudaError_t e_ = (expr);                                                       \
    if (e_ != cudaSuccess) {                                                             \
      state.SkipWithError(fmt::format("{}: {}", #expr, cudaGetErrorString(e_)).c_str()); \
      return;                                                                            \
    }                                                                                    \
  } while (0)

struct Shape {
  const char* name;
  int hidden, inter, experts, top_k;
  bool renormalize;
};
const Shape kShapes[] = {
    {"Qwen3-30B-A3B", 2048, 768, 128, 8, true},
    {"OLMoE", 2048, 1024, 64, 8, true},
    {"DeepSeek-V2-Lite", 2048, 1408, 64, 6, false},
    {"Mixtral-8x7B", 4096, 14336, 8, 2, true},
};
constexpr int kMaxTokens = 4096;

// The cuBLAS baseline: off with FLASHMOE_BENCH_NO_CUBLAS=1 (quick kernel A/B runs).
bool g_cublas = true;
int g_tokens_per_launch = 0;    // LayerOptions::tokens_per_launch of every benchmarked Layer
int g_prefill_rows = 0;         // testing::set_prefill_switch of every benchmarked Layer
int g_ws_tall_rows = 0;         // testing::set_ws_tile_switch of every benchmarked Layer
int g_down_slices = 0;          // testing::set_down_slices of every benchmarked Layer
int g_decode_rows = 0;          // testing::set_decode_height of every benchmarked Layer (0: rule)
int g_decode_kernel = 0;        // testing::set_decode_kernel (+ 1) of every benchmarked Layer
double g_down_lead = 0.0;       // testing::set_down_lead of every benchmarked Layer
int g_gather_parts = 0;         // testing::set_gather_parts of every benchmarked Layer
std::string g_trace_dir;        // FLASHMOE_BENCH_TRACE_DIR: one traced forward per benchmark
bool g_programmatic = false;    // ForwardOptions::programmatic_launch of the timed forwards
bool g_caller_routing = false;  // FLASHMOE_BENCH_CALLER_ROUTING (main)
int g_one_token = -1;  // testing::set_one_token_gateup of every benchmarked Layer (-1: default)
int g_table_free = -1;  // testing::set_table_free of every benchmarked Layer (-1: default)
int g_layers = 1;      // FLASHMOE_BENCH_LAYERS: layers the timed forwards cycle over (main)
// Its timing: as many rounds of kInputs forwards as FlashMoE had iterations, at least
// kCublasRounds, stopping early once they add up to kCublasBudgetMs (Mixtral at T = 4096 takes
// tens of ms a round), but never before kCublasMinRounds.
constexpr int kCublasRounds = 10;
constexpr int kCublasMinRounds = 3;
constexpr double kCublasBudgetMs = 300.0;
// Per-token relative L2 difference allowed between the two outputs: they round different
// intermediates (gate/up, h) to 16 bits.
constexpr double kCublasTolerance = 2e-2;

struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(std::size_t bytes) {
    if (cudaMalloc(&p, bytes) != cudaSuccess) p = nullptr;
  }
  ~DeviceMem() {
    if (p) (void)cudaFree(p);
  }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

void fill(flashmoe::DType dt, void* p, std::size_t n, std::uint64_t seed, float scale) {
  if (dt == flashmoe::DType::BF16) {
    fill_random<<<1024, 256>>>(static_cast<__nv_bfloat16*>(p), n, seed, scale);
  } else {
    fill_random<<<1024, 256>>>(static_cast<__half*>(p), n, seed, scale);
  }
}

// A layer's random weights (seeds from `seed`) and its Layer with the benchmark's test settings.
struct LayerWeights {
  std::unique_ptr<DeviceMem> router, w13, w2;
  flashmoe::Layer layer;
  // `scratch` (null: the Layer's own): one shared by every layer, as an engine shares it.
  flashmoe::Status create(const flashmoe::Config& c, std::uint64_t seed, const DeviceMem* scratch) {
    const std::size_t E = c.experts, H = c.hidden, I = c.intermediate;
    router = std::make_unique<DeviceMem>(E * H * 2);
    w13 = std::make_unique<DeviceMem>(E * 2 * I * H * 2);
    w2 = std::make_unique<DeviceMem>(E * H * I * 2);
    if (!router->p || !w13->p || !w2->p) {
      return {flashmoe::StatusCode::OutOfMemory, "cudaMalloc of the benchmark's weights failed"};
    }
    fill(c.dtype, router->p, E * H, seed, 3.0f / std::sqrt(static_cast<float>(H)));
    fill(c.dtype, w13->p, E * 2 * I * H, seed + 1, 1.7f / std::sqrt(static_cast<float>(H)));
    fill(c.dtype, w2->p, E * H * I, seed + 2, 1.7f / std::sqrt(static_cast<float>(I)));
    (void)cudaDeviceSynchronize();
    flashmoe::LayerOptions options;
    options.tokens_per_launch = g_tokens_per_launch;
    if (scratch != nullptr) {
      options.scratch = scratch->p;
      options.scratch_bytes = flashmoe::scratch_bytes(c, g_tokens_per_launch);
    }
    const flashmoe::Status s = flashmoe::Layer::create(c, weights(c), layer, options);
    flashmoe::testing::set_prefill_switch(layer, g_prefill_rows);
    flashmoe::testing::set_ws_tile_switch(layer, g_ws_tall_rows);
    flashmoe::testing::set_down_slices(layer, g_down_slices);
    flashmoe::testing::set_decode_kernel(layer, g_decode_kernel - 1);
    flashmoe::testing::set_decode_height(layer, g_decode_rows);
    flashmoe::testing::set_down_lead(layer, g_down_lead);
    flashmoe::testing::set_gather_parts(layer, g_gather_parts);
    if (g_one_token >= 0) flashmoe::testing::set_one_token_gateup(layer, g_one_token == 1);
    if (g_table_free >= 0) flashmoe::testing::set_table_free(layer, g_table_free == 1);
    return s;
  }
  flashmoe::Weights weights(const flashmoe::Config& c) const {
    flashmoe::Weights w;
    w.dtype = c.dtype;
    w.router = router->p;
    w.w13 = w13->p;
    w.w2 = w2->p;
    return w;
  }
};

// The layers of one shape and dtype, kept across its benchmarks: g_layers of them, each with
// its own weights and router, as an engine's consecutive MoE layers (timed input i runs on layer
// i % g_layers, so that each forward finds the previous layer's weights, not its own, in the
// caches), sharing one scratch as an engine's layers do; one layer keeps a scratch of its own.
// Layer 0 is the one traced and compared with cuBLAS.
struct Bench {
  flashmoe::Config config;
  std::unique_ptr<DeviceMem> shared_scratch;  // outlives the layers (declared before them)
  std::vector<LayerWeights> layers;
  flashmoe::Status status;
  std::unique_ptr<flashmoe_bench::CublasBaseline> baseline;  // null when g_cublas is off
  std::string baseline_error;
  flashmoe::Layer& layer() { return layers[0].layer; }
  flashmoe::Layer& layer_for(int input) { return layers[input % layers.size()].layer; }
  // The first failure any layer's forwards reported on the device.
  flashmoe::Status device_status(cudaStream_t stream) {
    for (LayerWeights& l : layers) {
      if (flashmoe::Status s = l.layer.device_status(stream); !s.ok()) return s;
    }
    return {};
  }
};

// The layer of the last shape asked for: consecutive benchmarks share it; a new shape frees
// the old weights first (Mixtral's alone are 2.8 GB).
Bench* get_bench(const Shape& s, flashmoe::DType dt) {
  static std::unique_ptr<Bench> current;
  static std::string current_key;
  const std::string key = fmt::format("{}/{}", s.name, static_cast<int>(dt));
  if (current && current_key == key) return current.get();
  current.reset();
  auto b = std::make_unique<Bench>();
  flashmoe::Config& c = b->config;
  c.hidden = s.hidden;
  c.intermediate = s.inter;
  c.experts = s.experts;
  c.top_k = s.top_k;
  c.dtype = dt;
  c.routing.renormalize = s.renormalize;
  c.max_tokens = kMaxTokens;
  // Layer j's weights from seeds 16 j + 1 ... (layer 0's as with a single layer).
  b->layers.resize(static_cast<std::size_t>(g_layers));
  if (g_layers > 1) {
    b->shared_scratch =
        std::make_unique<DeviceMem>(flashmoe::scratch_bytes(c, g_tokens_per_launch));
    if (!b->shared_scratch->p) {
      b->status = {flashmoe::StatusCode::OutOfMemory, "cudaMalloc of the shared scratch failed"};
    }
  }
  for (int j = 0; j < g_layers && b->status.ok(); ++j) {
    b->status =
        b->layers[static_cast<std::size_t>(j)].create(c, 16u * j + 1, b->shared_scratch.get());
  }
  const flashmoe::Weights w = b->layers[0].weights(c);
  if (g_cublas && b->status.ok()) {
    flashmoe_bench::BaselineShape bs;
    bs.hidden = c.hidden;
    bs.intermediate = c.intermediate;
    bs.experts = c.experts;
    bs.top_k = c.top_k;
    bs.renormalize = c.routing.renormalize;
    bs.dtype = dt;
    bs.max_tokens = c.max_tokens;
    b->baseline = std::make_unique<flashmoe_bench::CublasBaseline>();
    b->baseline_error = b->baseline->create(bs, w.router, w.w13, w.w2);
  }
  current = std::move(b);
  current_key = key;
  return current.get();
}

double g_bandwidth = 0;  // bytes/s, device-to-device copy, read + write

// Median time in ms of `run` (work enqueued on the default stream, returning false on failure)
// over ten runs after two warm-ups, or 0 when a run failed.
template <class Fn>
double median_ms(Fn&& run) {
  cudaEvent_t e0, e1;
  (void)cudaEventCreate(&e0);
  (void)cudaEventCreate(&e1);
  std::vector<float> ms;
  bool ok = true;
  for (int i = 0; i < 12 && ok; ++i) {
    (void)cudaEventRecord(e0);
    ok = run();
    (void)cudaEventRecord(e1);
    (void)cudaEventSynchronize(e1);
    float t = 0;
    (void)cudaEventElapsedTime(&t, e0, e1);
    if (i >= 2) ms.push_back(t);
  }
  (void)cudaEventDestroy(e0);
  (void)cudaEventDestroy(e1);
  if (!ok || ms.empty()) return 0;
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double measure_bandwidth() {
  const std::size_t bytes = std::size_t{1} << 30;
  DeviceMem a(bytes), b(bytes);
  if (!a.p || !b.p) return 0;
  const double ms = median_ms(
      [&] { return cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice) == cudaSuccess; });
  return ms > 0 ? 2.0 * bytes / (ms * 1e-3) : 0;
}

double g_dense_flops = 0;  // FLOP/s of one large dense bf16 GEMM (cuBLAS), 0 when not measured

// The card's dense bf16 tensor-core rate as cuBLAS reaches it: an 8192^3 GEMM (fp32
// accumulation) on random data, median of ten after two warm-ups. The FLOP floor of a forward
// is its FLOPs over this rate.
double measure_dense_flops() {
  constexpr int n = 8192;
  const std::size_t cells = std::size_t{n} * n;
  DeviceMem a(cells * 2), b(cells * 2), c(cells * 2);
  if (!a.p || !b.p || !c.p) return 0;
  fill(flashmoe::DType::BF16, a.p, cells, 11, 1.0f);
  fill(flashmoe::DType::BF16, b.p, cells, 12, 1.0f);
  cublasHandle_t handle = nullptr;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 0;
  const float one = 1.0f, zero = 0.0f;
  const double ms = median_ms([&] {
    return cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.p, CUDA_R_16BF, n, b.p,
                        CUDA_R_16BF, n, &zero, c.p, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  });
  (void)cublasDestroy(handle);
  return ms > 0 ? 2.0 * n * n * static_cast<double>(n) / (ms * 1e-3) : 0;
}

struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~EventPair() {
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
  }
};

// Whether a token's routing differs between the two only by a near tie: FlashMoE chose an
// expert whose logit (as the baseline computed it) is within 1e-4 (relative) of the k-th one.
// Both compute the logits in fp32 but sum in different orders.
bool routing_near_tie(const std::int32_t* base_ids, const std::int32_t* flash_ids,
                      const float* logits, int top_k) {
  const std::set<int> base(base_ids, base_ids + top_k), flash(flash_ids, flash_ids + top_k);
  if (base == flash) return false;
  float kth = INFINITY;
  for (int e : base) kth = std::min(kth, logits[e]);
  for (int e : flash) {
    if (!base.count(e) && kth - logits[e] > 1e-4f * std::max(1.0f, std::fabs(kth))) return false;
  }
  return true;
}

// The cuBLAS baseline on the benchmark's inputs x_at(0..kInputs-1). First its y for input 0 is
// compared per token with FlashMoE's (flash_y0, and flash_ids0 its routing on the host), then
// rounds of kInputs forwards are timed like FlashMoE's graph replays. Returns "" and the
// median time per forward, or what failed.
std::string measure_cublas(flashmoe_bench::CublasBaseline& base, const flashmoe::Config& c,
                           const char* xs, const void* flash_y0, const std::int32_t* flash_ids0,
                           int T, int wanted_rounds, cudaStream_t stream,
                           flashmoe_bench::ExpertGemms gemms, double& median_us) {
  const std::size_t act = static_cast<std::size_t>(T) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(T) * c.top_k;
  DeviceMem ys(kInputs * act * 2);
  if (!ys.p) return "cudaMalloc of the baseline's outputs failed";
  auto x_at = [&](int i) { return xs + i * act * 2; };
  auto y_at = [&](int i) { return static_cast<char*>(ys.p) + i * act * 2; };

  if (std::string e = base.forward(x_at(0), y_at(0), T, stream, gemms); !e.empty()) return e;
  BENCH_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  std::vector<std::uint16_t> mine(act), flash(act);
  std::vector<std::int32_t> ids(pairs);
  std::vector<float> logits(static_cast<std::size_t>(T) * c.experts);
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpy(mine.data(), y_at(0), act * 2, cudaMemcpyDeviceToHost));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpy(flash.data(), flash_y0, act * 2, cudaMemcpyDeviceToHost));
  BENCH_RETURN_IF_CUDA_ERROR(
      cudaMemcpy(ids.data(), base.topk_ids(), pairs * 4, cudaMemcpyDeviceToHost));
  BENCH_RETURN_IF_CUDA_ERROR(
      cudaMemcpy(logits.data(), base.logits(), logits.size() * 4, cudaMemcpyDeviceToHost));
  double worst = -1;
  int worst_t = 0;
  for (int t = 0; t < T; ++t) {
    double diff = 0, ref = 0;
    for (int h = 0; h < c.hidden; ++h) {
      const std::size_t i = static_cast<std::size_t>(t) * c.hidden + h;
      const double a = flashmoe::reference::to_float(mine[i], c.dtype);
      const double b = flashmoe::reference::to_float(flash[i], c.dtype);
      diff += (a - b) * (a - b);
      ref += b * b;
    }
    // NaN compares false, so it is turned into an error explicitly.
    double err = ref > 0 ? std::sqrt(diff / ref) : (diff > 0 ? INFINITY : 0.0);
    if (std::isnan(err)) err = INFINITY;
    if (err >= kCublasTolerance &&
        routing_near_tie(ids.data() + t * c.top_k, flash_ids0 + t * c.top_k,
                         logits.data() + static_cast<std::size_t>(t) * c.experts, c.top_k))
      continue;  // different experts, both right within fp32 rounding: not comparable
    if (err > worst) {
      worst = err;
      worst_t = t;
    }
  }
  if (worst >= kCublasTolerance)
    return fmt::format(
        "cuBLAS baseline and FlashMoE differ on input 0: token {} has relative L2 error {:.3g} "
        "(limit {:.0e})",
        worst_t, worst, kCublasTolerance);

  EventPair ev;
  BENCH_RETURN_IF_CUDA_ERROR(cudaEventCreate(&ev.start));
  BENCH_RETURN_IF_CUDA_ERROR(cudaEventCreate(&ev.stop));
  for (int round = 0; round < 2; ++round) {  // warm-up
    for (int i = 0; i < kInputs; ++i) {
      if (std::string e = base.forward(x_at(i), y_at(i), T, stream, gemms); !e.empty()) return e;
    }
  }
  std::vector<double> per_forward_us;
  double total_ms = 0;
  const int rounds = std::max(kCublasRounds, wanted_rounds);
  for (int round = 0; round < rounds; ++round) {
    if (round >= kCublasMinRounds && total_ms >= kCublasBudgetMs) break;
    BENCH_RETURN_IF_CUDA_ERROR(cudaEventRecord(ev.start, stream));
    for (int i = 0; i < kInputs; ++i) {
      if (std::string e = base.forward(x_at(i), y_at(i), T, stream, gemms); !e.empty()) return e;
    }
    BENCH_RETURN_IF_CUDA_ERROR(cudaEventRecord(ev.stop, stream));
    BENCH_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(ev.stop));
    float ms = 0;
    BENCH_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, ev.start, ev.stop));
    total_ms += ms;
    per_forward_us.push_back(ms * 1e3 / kInputs);
  }
  std::sort(per_forward_us.begin(), per_forward_us.end());
  median_us = per_forward_us[per_forward_us.size() / 2];
  return {};
}

void BM_Forward(benchmark::State& state, Shape shape, flashmoe::DType dt) {
  const int T = static_cast<int>(state.range(0));
  Bench* b = get_bench(shape, dt);
  if (!b->status.ok()) {
    state.SkipWithError(b->status.to_string().c_str());
    return;
  }
  if (!b->baseline_error.empty()) {
    state.SkipWithError(fmt::format("cuBLAS baseline: {}", b->baseline_error).c_str());
    return;
  }
  const flashmoe::Config& c = b->config;
  const std::size_t act = static_cast<std::size_t>(T) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(T) * c.top_k;
  DeviceMem xs(kInputs * act * 2), ys(kInputs * act * 2), ids(kInputs * pairs * 4),
      wts(kInputs * pairs * 4);
  fill(dt, xs.p, kInputs * act, 100 + T, 1.0f);
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto x_at = [&](int i) { return static_cast<char*>(xs.p) + i * act * 2; };
  auto y_at = [&](int i) { return static_cast<char*>(ys.p) + i * act * 2; };

  // Routing of each input, for the floor: unique experts' weights must be read once.
  double floor_bytes = 0, unique_total = 0;
  for (int i = 0; i < kInputs; ++i) {
    flashmoe::ForwardOptions o;
    o.out_topk_ids = static_cast<std::int32_t*>(ids.p) + i * pairs;
    o.out_topk_weights = static_cast<float*>(wts.p) + i * pairs;
    const flashmoe::Status s = flashmoe::forward(b->layer_for(i), x_at(i), y_at(i), T, stream, o);
    if (!s.ok()) {
      state.SkipWithError(s.to_string().c_str());
      return;
    }
  }
  if (const flashmoe::Status s = b->device_status(stream); !s.ok()) {
    state.SkipWithError(s.to_string().c_str());
    return;
  }
  std::vector<std::int32_t> host_ids(kInputs * pairs);
  BENCH_CUDA(cudaMemcpy(host_ids.data(), ids.p, host_ids.size() * 4, cudaMemcpyDeviceToHost));
  const double expert_bytes = 3.0 * c.hidden * c.intermediate * 2;
  for (int i = 0; i < kInputs; ++i) {
    const std::set<int> unique(host_ids.begin() + i * pairs, host_ids.begin() + (i + 1) * pairs);
    unique_total += unique.size();
    floor_bytes += unique.size() * expert_bytes + 2.0 * c.experts * c.hidden + 2.0 * act * 2;
  }
  floor_bytes /= kInputs;

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  // The options of input i's timed forwards: with caller routing, the same experts and weights
  // as the library's own routing chose for that input (the weights it reports are final, and
  // caller weights are used as given), so the output and the expert bytes are unchanged and
  // the difference is the router and the top-k.
  auto timed_options = [&](int i) {
    flashmoe::ForwardOptions o;
    o.programmatic_launch = g_programmatic;
    if (g_caller_routing) {
      o.topk_ids = static_cast<const std::int32_t*>(ids.p) + i * pairs;
      o.topk_weights = static_cast<const float*>(wts.p) + i * pairs;
    }
    return o;
  };
  for (int i = 0; i < kInputs; ++i) {
    if (!flashmoe::forward(b->layer_for(i), x_at(i), y_at(i), T, stream, timed_options(i)).ok()) {
      break;
    }
  }
  BENCH_CUDA(cudaStreamEndCapture(stream, &graph));
  BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  for (int i = 0; i < 5; ++i) BENCH_CUDA(cudaGraphLaunch(exec, stream));  // warm-up
  std::vector<double> per_forward_us;
  for (auto _ : state) {
    BENCH_CUDA(cudaEventRecord(e0, stream));
    BENCH_CUDA(cudaGraphLaunch(exec, stream));
    BENCH_CUDA(cudaEventRecord(e1, stream));
    BENCH_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    per_forward_us.push_back(ms * 1e3 / kInputs);
    state.SetIterationTime(ms * 1e-3 / kInputs);
  }
  if (const flashmoe::Status s = b->device_status(stream); !s.ok()) {
    state.SkipWithError(s.to_string().c_str());
  }
  std::sort(per_forward_us.begin(), per_forward_us.end());
  const double median_us = per_forward_us[per_forward_us.size() / 2];
  const double floor_us = floor_bytes / g_bandwidth * 1e6;
  const double flops =
      2.0 * pairs * 3.0 * c.hidden * c.intermediate + 2.0 * T * c.experts * c.hidden;
  state.counters["us_median"] = median_us;
  if (g_layers > 1) state.counters["layers"] = g_layers;
  state.counters["scratch_MB"] = static_cast<double>(b->layer().scratch_bytes()) / 1e6;
  state.counters["unique_experts"] = unique_total / kInputs;
  state.counters["floor_us"] = floor_us;
  state.counters["pct_of_floor"] = 100.0 * floor_us / median_us;
  state.counters["TFLOPs"] = flops / (median_us * 1e-6) / 1e12;
  if (g_dense_flops > 0) {
    state.counters["pct_of_dense"] = 100.0 * flops / (median_us * 1e-6) / g_dense_flops;
  }
  // One traced forward of input 0, as timed (the same Layer and test settings), written as
  // <dir>/<shape>_<dtype>_T<T>.txt (the summary) and .json (bench/trace_tiles.py reads it).
  // Traced forwards of the other inputs run just before it: a lone traced launch spanned 29% more
  // than a timed forward at Qwen3 T = 1, cold (set_tracing's memset of the buffer had just gone
  // through L2, the traced kernel's code was in no SM's cache), which no trace should carry.
  if (!g_trace_dir.empty() && !state.error_occurred()) {
    const std::string name =
        fmt::format("{}_{}_T{}", shape.name, dt == flashmoe::DType::BF16 ? "bf16" : "fp16", T);
    flashmoe::Trace trace;
    flashmoe::Status s = b->layer().set_tracing(4096);
    for (int i = 1; s.ok() && i < kInputs; ++i) {
      s = flashmoe::forward(b->layer_for(i), x_at(i), y_at(i), T, stream, timed_options(i));
    }
    if (s.ok()) s = flashmoe::forward(b->layer(), x_at(0), y_at(0), T, stream, timed_options(0));
    if (s.ok()) s = b->layer().read_trace(stream, trace);
    const flashmoe::Status off = b->layer().set_tracing(0);
    if (s.ok()) s = off;
    if (s.ok()) {
      const std::string base = g_trace_dir + "/" + name;
      std::FILE* txt = std::fopen((base + ".txt").c_str(), "w");
      std::FILE* json = std::fopen((base + ".json").c_str(), "w");
      if (txt != nullptr) std::fputs(flashmoe::trace_summary_text(trace).c_str(), txt);
      if (json != nullptr) std::fputs(flashmoe::trace_to_chrome_json(trace).c_str(), json);
      if (txt != nullptr) std::fclose(txt);
      if (json != nullptr) std::fclose(json);
      if (txt == nullptr || json == nullptr) state.SkipWithError(("cannot write " + base).c_str());
    } else {
      state.SkipWithError(fmt::format("trace: {}", s.to_string()).c_str());
    }
  }
  // The graph replays above left FlashMoE's y of input 0 in y_at(0).
  // The cuBLAS forward twice: one GEMM per expert, then the grouped API (cublas_grouped_*).
  using flashmoe_bench::ExpertGemms;
  for (ExpertGemms gemms : {ExpertGemms::PerExpert, ExpertGemms::Grouped}) {
    if (!b->baseline || state.error_occurred()) break;
    const char* name = gemms == ExpertGemms::Grouped ? "cublas_grouped" : "cublas";
    double cublas_us = 0;
    const std::string e =
        measure_cublas(*b->baseline, c, x_at(0), y_at(0), host_ids.data(), T,
                       static_cast<int>(per_forward_us.size()), stream, gemms, cublas_us);
    if (e.empty()) {
      state.counters[fmt::format("{}_us", name)] = cublas_us;
      state.counters[fmt::format("{}_ratio", name)] = cublas_us / median_us;
    } else {
      state.SkipWithError(fmt::format("{} baseline: {}", name, e).c_str());
    }
  }
  (void)cudaEventDestroy(e0);
  (void)cudaEventDestroy(e1);
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
  (void)cudaStreamDestroy(stream);
}

// Host time of one forward call outside a graph (what an engine pays per layer when it does
// not capture): argument checks, variant choice, parameter set-up and the launch. Wall time on
// the host; the stream is drained outside the timed region every kDrainEvery calls, so the
// launch queue never blocks a call. with_options: routing outputs, a device token count and a
// status word, each one more pointer to check.
void BM_HostCost(benchmark::State& state, Shape shape, bool with_options) {
  constexpr int kDrainEvery = 64;
  Bench* b = get_bench(shape, flashmoe::DType::BF16);
  if (!b->status.ok()) {
    state.SkipWithError(b->status.to_string().c_str());
    return;
  }
  const flashmoe::Config& c = b->config;
  const int T = static_cast<int>(state.range(0));
  const std::size_t act = static_cast<std::size_t>(T) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(T) * c.top_k;
  DeviceMem x(act * 2), y(act * 2), ids(pairs * 4), wts(pairs * 4), words(8);
  fill(c.dtype, x.p, act, 7, 1.0f);
  BENCH_CUDA(cudaMemset(words.p, 0, 8));
  const std::int32_t count = T;
  BENCH_CUDA(cudaMemcpy(words.p, &count, 4, cudaMemcpyHostToDevice));
  flashmoe::ForwardOptions o;
  if (with_options) {
    o.out_topk_ids = static_cast<std::int32_t*>(ids.p);
    o.out_topk_weights = static_cast<float*>(wts.p);
    o.device_num_tokens = static_cast<const std::int32_t*>(words.p);
    o.device_status = static_cast<std::int32_t*>(words.p) + 1;
  }
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int i = 0; i < 8; ++i) (void)flashmoe::forward(b->layer(), x.p, y.p, T, stream, o);
  BENCH_CUDA(cudaStreamSynchronize(stream));
  int calls = 0;
  for (auto _ : state) {
    const flashmoe::Status s = flashmoe::forward(b->layer(), x.p, y.p, T, stream, o);
    if (!s.ok()) {
      state.SkipWithError(s.to_string().c_str());
      break;
    }
    if (++calls % kDrainEvery == 0) {
      state.PauseTiming();
      (void)cudaStreamSynchronize(stream);
      state.ResumeTiming();
    }
  }
  BENCH_CUDA(cudaStreamSynchronize(stream));
  if (const flashmoe::Status s = b->layer().device_status(stream); !s.ok()) {
    state.SkipWithError(s.to_string().c_str());
  }
  (void)cudaStreamDestroy(stream);
}

// What the host cost of a forward is made of, to compare with BM_HostCost: a launch of an empty
// kernel with a parameter block of the size of FlashMoE's (KernelParams, 640 bytes) on the same
// grid, and one cudaPointerGetAttributes (forward checks x, y and each option pointer so).
struct alignas(64) LaunchFloorParams {
  unsigned char bytes[640];
};
__global__ void empty_kernel(const __grid_constant__ LaunchFloorParams p) {
  if (p.bytes[threadIdx.x % 640] == 0xEE && blockIdx.x == 0x7fffffff) __trap();
}

void BM_HostCostFloor(benchmark::State& state, bool pointer_query) {
  constexpr int kDrainEvery = 64;
  DeviceMem buffer(4096);
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  const LaunchFloorParams params{};
  int calls = 0;
  for (auto _ : state) {
    if (pointer_query) {
      cudaPointerAttributes attr{};
      benchmark::DoNotOptimize(cudaPointerGetAttributes(&attr, buffer.p));
    } else {
      empty_kernel<<<2 * prop.multiProcessorCount, 256, 0, stream>>>(params);
      if (++calls % kDrainEvery == 0) {
        state.PauseTiming();
        (void)cudaStreamSynchronize(stream);
        state.ResumeTiming();
      }
    }
  }
  BENCH_CUDA(cudaStreamSynchronize(stream));
  BENCH_CUDA(cudaGetLastError());
  (void)cudaStreamDestroy(stream);
}

// An integer in [0, max] from the environment variable `name` (unset or empty: `value` stays);
// false, with a message, when it is something else.
bool read_count(const char* name, long max, int& value) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return true;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < 0 || n > max) {
    std::fprintf(stderr, "%s: '%s' is not in [0, %ld]\n", name, v, max);
    return false;
  }
  value = static_cast<int>(n);
  return true;
}

// A 0/1 switch from the environment: leaves `flag` as it is when unset; false for a value that
// is neither (with a message).
bool read_switch(const char* name, bool& flag) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return true;
  if (std::string(v) != "0" && std::string(v) != "1") {
    std::fprintf(stderr, "%s: '%s' is not 0 or 1\n", name, v);
    return false;
  }
  flag = std::string(v) == "1";
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const char* no_cublas = std::getenv("FLASHMOE_BENCH_NO_CUBLAS");
  g_cublas = !(no_cublas && *no_cublas && std::string(no_cublas) != "0");
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("No CUDA GPU found: the FlashMoE benchmarks need one. Nothing was measured.\n");
    return 0;
  }
  cudaDeviceProp prop{};
  (void)cudaGetDeviceProperties(&prop, 0);
  // FLASHMOE_BENCH_TOKENS="96,112": token counts to measure instead of the standard list.
  std::vector<int> token_counts = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
  if (const char* list = std::getenv("FLASHMOE_BENCH_TOKENS"); list != nullptr && *list) {
    token_counts.clear();
    std::stringstream in(list);
    for (std::string item; std::getline(in, item, ',');) {
      char* end = nullptr;
      const long T = std::strtol(item.c_str(), &end, 10);
      if (end == item.c_str() || *end != '\0' || T < 1 || T > kMaxTokens) {
        std::fprintf(stderr, "FLASHMOE_BENCH_TOKENS: '%s' is not a token count in [1, %d]\n",
                     item.c_str(), kMaxTokens);
        return 1;
      }
      token_counts.push_back(static_cast<int>(T));
    }
  }
  // FLASHMOE_BENCH_TOKENS_PER_LAUNCH=2048: every Layer with a scratch for that many tokens, so
  // longer forwards run one launch per chunk (LayerOptions::tokens_per_launch).
  if (!read_count("FLASHMOE_BENCH_TOKENS_PER_LAUNCH", kMaxTokens, g_tokens_per_launch)) return 1;
  // FLASHMOE_BENCH_PREFILL_ROWS=16: forwards whose experts average more than 16 rows run the
  // prefill kernels (measuring the decode/prefill switch; testing.hpp).
  if (!read_count("FLASHMOE_BENCH_PREFILL_ROWS", kMaxTokens, g_prefill_rows)) return 1;
  // FLASHMOE_BENCH_WS_TALL_ROWS=64: the warp-specialised kernel's 128-row m-tiles from 64 rows
  // per expert (measuring that switch; testing.hpp).
  if (!read_count("FLASHMOE_BENCH_WS_TALL_ROWS", kMaxTokens, g_ws_tall_rows)) return 1;
  // FLASHMOE_BENCH_DOWN_SLICES=4: down tiles in 4 K slices wherever the scratch allows
  // (measuring choose_down_slices; testing.hpp).
  if (!read_count("FLASHMOE_BENCH_DOWN_SLICES", flashmoe::detail::kMaxDownSlices, g_down_slices)) {
    return 1;
  }
  // FLASHMOE_BENCH_DECODE_KERNEL=4: decode forwards on kernel 3 of their m-tile height (wide
  // gate/up and down tiles; 1-4 for choose_decode_kernel's 0-3), measuring that rule.
  if (!read_count("FLASHMOE_BENCH_DECODE_KERNEL", 4, g_decode_kernel)) return 1;
  // FLASHMOE_BENCH_DECODE_ROWS=32: decode forwards on the 32-row m-tile kernels whatever their T
  // (16, 32 or 48; measuring the thin and tall rules, tile_choice.hpp).
  if (!read_count("FLASHMOE_BENCH_DECODE_ROWS", flashmoe::detail::kTallDecodeTileM,
                  g_decode_rows)) {
    return 1;
  }
  if (g_decode_rows % 16 != 0) {
    std::fprintf(stderr, "FLASHMOE_BENCH_DECODE_ROWS: %d is not 16, 32 or 48\n", g_decode_rows);
    return 1;
  }
  // FLASHMOE_BENCH_GATHER_PARTS=1: each of the warp-specialised kernel's gathers one job
  // (measuring choose_gather_parts; testing.hpp).
  if (!read_count("FLASHMOE_BENCH_GATHER_PARTS", flashmoe::detail::kMaxGatherParts,
                  g_gather_parts)) {
    return 1;
  }
  // FLASHMOE_BENCH_DOWN_LEAD=2: the warp-specialised kernel's down tiles interleaved with the
  // gate/up tiles from two waves into the launch (measuring that order; testing.hpp).
  if (const char* v = std::getenv("FLASHMOE_BENCH_DOWN_LEAD"); v != nullptr && *v) {
    char* end = nullptr;
    const double waves = std::strtod(v, &end);
    if (end == v || *end != '\0' || !(waves >= 0.0) || waves > 1000.0) {
      std::fprintf(stderr, "FLASHMOE_BENCH_DOWN_LEAD: '%s' is not a wave count in [0, 1000]\n", v);
      return 1;
    }
    g_down_lead = waves;
  }
  // FLASHMOE_BENCH_TRACE_DIR=out/trace: after each benchmark's timing, one traced forward with
  // the same settings (the FLASHMOE_BENCH_* hooks above included), its summary and JSON there.
  if (const char* v = std::getenv("FLASHMOE_BENCH_TRACE_DIR"); v != nullptr && *v) g_trace_dir = v;
  // FLASHMOE_BENCH_PROGRAMMATIC=1: the timed forwards with programmatic dependent launch, so
  // that each forward of the graph starts behind the previous one's tail.
  if (!read_switch("FLASHMOE_BENCH_PROGRAMMATIC", g_programmatic)) return 1;
  // FLASHMOE_BENCH_CALLER_ROUTING=1: the timed forwards with caller routing (the routing the
  // library chose for each input), which measures what the router and the top-k cost.
  if (!read_switch("FLASHMOE_BENCH_CALLER_ROUTING", g_caller_routing)) return 1;
  // FLASHMOE_BENCH_ONE_TOKEN=0 or 1: T = 1 forwards with the one-token gate/up path off or on
  // (the library's default: on), measuring it against the tile table's (testing.hpp).
  if (const char* v = std::getenv("FLASHMOE_BENCH_ONE_TOKEN"); v != nullptr && *v) {
    bool on = false;
    if (!read_switch("FLASHMOE_BENCH_ONE_TOKEN", on)) return 1;
    g_one_token = on ? 1 : 0;
  }
  // FLASHMOE_BENCH_TABLE_FREE=0 or 1: decode forwards of 2 to BM live tokens with the table-free
  // tile lookup off or on (the library's default: on), measuring it against the tile table's.
  if (const char* v = std::getenv("FLASHMOE_BENCH_TABLE_FREE"); v != nullptr && *v) {
    bool on = false;
    if (!read_switch("FLASHMOE_BENCH_TABLE_FREE", on)) return 1;
    g_table_free = on ? 1 : 0;
  }
  // FLASHMOE_BENCH_LAYERS=8: each benchmark's timed forwards cycle over 8 layers of its shape,
  // each with its own weights and router (input i on layer i % 8), as an engine's consecutive MoE
  // layers: no forward finds its own weights' translations, router or code state left warm by
  // the forward before it. The cuBLAS baseline keeps one layer, so it must be off.
  if (!read_count("FLASHMOE_BENCH_LAYERS", kInputs, g_layers)) return 1;
  if (g_layers < 1) g_layers = 1;
  if (g_layers > 1 && g_cublas) {
    std::fprintf(stderr,
                 "FLASHMOE_BENCH_LAYERS > 1 needs FLASHMOE_BENCH_NO_CUBLAS=1 (the "
                 "baseline runs one layer)\n");
    return 1;
  }
  g_bandwidth = measure_bandwidth();
  if (g_cublas) g_dense_flops = measure_dense_flops();
  std::printf("%s, %d SMs; device-to-device copy: %.0f GB/s (read + write); dense bf16 GEMM: %s\n",
              prop.name, prop.multiProcessorCount, g_bandwidth / 1e9,
              g_dense_flops > 0 ? fmt::format("{:.0f} TFLOP/s", g_dense_flops / 1e12).c_str()
                                : "not measured (cuBLAS off)");
  for (const Shape& s : kShapes) {
    for (flashmoe::DType dt : {flashmoe::DType::BF16, flashmoe::DType::FP16}) {
      auto* bm = benchmark::RegisterBenchmark(
          fmt::format("{}/{}", s.name, dt == flashmoe::DType::BF16 ? "bf16" : "fp16").c_str(),
          BM_Forward, s, dt);
      for (int T : token_counts) bm->Arg(T);
      bm->ArgName("T")->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.2);
    }
  }
  for (bool with_options : {false, true}) {
    const Shape& s = kShapes[0];
    benchmark::RegisterBenchmark(
        fmt::format("HostCost/{}/bf16/{}", s.name, with_options ? "with_options" : "plain").c_str(),
        BM_HostCost, s, with_options)
        ->Arg(1)
        ->ArgName("T")
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("HostCost/floor/empty_kernel_launch", BM_HostCostFloor, false)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("HostCost/floor/pointer_attributes", BM_HostCostFloor, true)
      ->Unit(benchmark::kMicrosecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("copy_bandwidth_GBps", fmt::format("{:.0f}", g_bandwidth / 1e9));
  benchmark::AddCustomContext("dense_bf16_TFLOPs", fmt::format("{:.0f}", g_dense_flops / 1e12));
  benchmark::AddCustomContext("cublas_baseline",
                              g_cublas ? "on" : "off (FLASHMOE_BENCH_NO_CUBLAS is set)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
