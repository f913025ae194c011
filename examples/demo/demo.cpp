// FlashMoE demo: one Qwen3-30B-A3B-shaped MoE layer (H=2048, I=768, E=128, K=8, bf16, softmax
// top-k renormalised) with random weights. On a GPU: forward T tokens, check every token
// against the CPU reference, then time the forward. Without a GPU: run the CPU reference only.
//
// Usage: flashmoe_demo [T]   (T defaults to 16 with a GPU, 4 without)
#include <cuda_runtime_api.h>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <flashmoe/flashmoe.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using flashmoe::DType;

constexpr int kHidden = 2048;
constexpr int kIntermediate = 768;
constexpr int kExperts = 128;
constexpr int kTopK = 8;
constexpr DType kDType = DType::BF16;
constexpr int kInputs = 4;  // distinct x the timing loop rotates through
constexpr int kWarmup = 20;
constexpr int kIterations = 200;
constexpr double kMaxRelError = 2e-2;  // bf16 storage, fp32 accumulation

void cuda_check(cudaError_t err, const char* expr, int line) {
  if (err != cudaSuccess) {
    fmt::print(stderr, "CUDA error at demo.cpp:{}: {} returned {} ({})\n", line, expr,
               cudaGetErrorName(err), cudaGetErrorString(err));
    std::exit(1);
  }
}
#define CUDA_CHECK(expr) cuda_check((expr), #expr, __LINE__)

void status_check(const flashmoe::Status& status, const char* what) {
  if (!status.ok()) {
    fmt::print(stderr, "{} failed: {}\n", what, status.to_string());
    std::exit(1);
  }
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---- random data ---------------------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Approximately N(0, 1): the sum of the four 16-bit uniforms of one 64-bit draw (Irwin-Hall),
// centred and scaled to unit variance. Cheap, and plenty normal for a demo.
float normal_from_bits(std::uint64_t bits) {
  float sum = 0.0f;
  for (int i = 0; i < 4; ++i) sum += (static_cast<float>((bits >> (16 * i)) & 0xFFFF) + 0.5f);
  return (sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;  // var of the sum is 4/12
}

// values[i] ~ N(0, 1) * scale in `dtype`, deterministic for a seed whatever the thread count.
std::vector<std::uint16_t> random_tensor(std::size_t count, float scale, std::uint64_t seed) {
  std::vector<std::uint16_t> values(count);
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  const std::size_t chunks = (count + kChunk - 1) / kChunk;
  const unsigned threads =
      std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 32u));
  auto work = [&](unsigned first) {
    for (std::size_t c = first; c < chunks; c += threads) {
      std::uint64_t state = seed * 0x100000001B3ull + c;
      const std::size_t end = std::min(count, (c + 1) * kChunk);
      for (std::size_t i = c * kChunk; i < end; ++i) {
        values[i] =
            flashmoe::reference::from_float(normal_from_bits(splitmix64(state)) * scale, kDType);
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& thread : pool) thread.join();
  return values;
}

struct HostModel {
  std::vector<std::uint16_t> router, w13, w2;
  flashmoe::Weights weights() const {
    flashmoe::Weights w;
    w.dtype = kDType;
    w.router = router.data();
    w.w13 = w13.data();
    w.w2 = w2.data();
    return w;
  }
};

flashmoe::Config make_config(int max_tokens) {
  flashmoe::Config config;
  config.hidden = kHidden;
  config.intermediate = kIntermediate;
  config.experts = kExperts;
  config.top_k = kTopK;
  config.dtype = kDType;
  config.activation = flashmoe::Activation::SiluGated;
  config.routing.scoring = flashmoe::Scoring::Softmax;
  config.routing.renormalize = true;
  config.max_tokens = max_tokens;
  return config;
}

// Runs the CPU reference on the first T tokens of x and prints a checksum and the time.
int run_cpu_reference(const flashmoe::Config& config, const HostModel& model,
                      const std::vector<std::uint16_t>& x, int tokens) {
  std::vector<std::uint16_t> y(static_cast<std::size_t>(tokens) * kHidden);
  std::vector<double> y_f64(y.size());
  const auto start = std::chrono::steady_clock::now();
  status_check(flashmoe::reference::forward(config, model.weights(), x.data(), y.data(), tokens, {},
                                            y_f64.data()),
               "reference::forward");
  const double elapsed = seconds_since(start);
  double sum = 0.0, sum_abs = 0.0, sum_sq = 0.0;
  for (double v : y_f64) {
    sum += v;
    sum_abs += std::fabs(v);
    sum_sq += v * v;
  }
  fmt::print("CPU reference: {} token(s) in {:.3f} s ({:.1f} ms/token)\n", tokens, elapsed,
             1e3 * elapsed / tokens);
  fmt::print("checksum: sum(y) = {:.6f}, sum|y| = {:.6f}, rms(y) = {:.6f}\n", sum, sum_abs,
             std::sqrt(sum_sq / static_cast<double>(y_f64.size())));
  return 0;
}

template <typename T>
T* device_alloc(std::size_t count) {
  void* ptr = nullptr;
  CUDA_CHECK(cudaMalloc(&ptr, count * sizeof(T)));
  return static_cast<T*>(ptr);
}

// Complete on return: a pageable cudaMemcpy may return before its DMA lands, and forward runs
// on a non-blocking stream that does not wait for the legacy stream.
template <typename T>
void upload(T* dst, const std::vector<T>& src) {
  CUDA_CHECK(cudaMemcpy(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaDeviceSynchronize());
}

template <typename T>
std::vector<T> download(const T* src, std::size_t count) {
  std::vector<T> dst(count);
  CUDA_CHECK(cudaMemcpy(dst.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost));
  return dst;
}

bool contains(const std::int32_t* ids, std::int32_t id) {
  return std::find(ids, ids + kTopK, id) != ids + kTopK;
}

}  // namespace

int main(int argc, char** argv) {
  int device_count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&device_count);
  const bool have_gpu = count_err == cudaSuccess && device_count > 0;
  if (count_err != cudaSuccess) (void)cudaGetLastError();  // no driver or no device: clear it

  int tokens = have_gpu ? 16 : 4;
  if (argc > 1) {
    tokens = std::atoi(argv[1]);
    if (tokens <= 0 || tokens > 65536) {
      fmt::print(stderr, "usage: {} [tokens in 1..65536]\n", argv[0]);
      return 2;
    }
  }
  const flashmoe::Config config = make_config(tokens);

  fmt::print("FlashMoE {} demo: H={} I={} E={} K={} bf16, SiLU-gated, softmax top-k renormalised\n",
             flashmoe::version(), kHidden, kIntermediate, kExperts, kTopK);

  // Random weights with outputs of order one: logits, gate and up ~ N(0, 1).
  const auto gen_start = std::chrono::steady_clock::now();
  HostModel model;
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(kHidden));
  model.router = random_tensor(std::size_t{kExperts} * kHidden, in_scale, 1);
  model.w13 = random_tensor(std::size_t{kExperts} * 2 * kIntermediate * kHidden, in_scale, 2);
  model.w2 = random_tensor(std::size_t{kExperts} * kHidden * kIntermediate,
                           2.0f / std::sqrt(static_cast<float>(kIntermediate)), 3);
  std::vector<std::vector<std::uint16_t>> xs;
  for (int i = 0; i < kInputs; ++i) {
    xs.push_back(random_tensor(static_cast<std::size_t>(tokens) * kHidden, 1.0f, 100 + i));
  }
  const double weight_bytes =
      2.0 * static_cast<double>(model.router.size() + model.w13.size() + model.w2.size());
  fmt::print("random weights: {:.2f} GB generated in {:.1f} s\n", weight_bytes / 1e9,
             seconds_since(gen_start));

  if (!have_gpu) {
    fmt::print("No CUDA GPU found: running the CPU reference only\n");
    return run_cpu_reference(config, model, xs[0], tokens);
  }

  CUDA_CHECK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  fmt::print("device: {} (sm_{}{}, {} SMs)\n", prop.name, prop.major, prop.minor,
             prop.multiProcessorCount);

  // Upload.
  auto* d_router = device_alloc<std::uint16_t>(model.router.size());
  auto* d_w13 = device_alloc<std::uint16_t>(model.w13.size());
  auto* d_w2 = device_alloc<std::uint16_t>(model.w2.size());
  upload(d_router, model.router);
  upload(d_w13, model.w13);
  upload(d_w2, model.w2);
  std::vector<std::uint16_t*> d_x(kInputs);
  for (int i = 0; i < kInputs; ++i) {
    d_x[i] = device_alloc<std::uint16_t>(xs[i].size());
    upload(d_x[i], xs[i]);
  }
  const std::size_t y_count = static_cast<std::size_t>(tokens) * kHidden;
  const std::size_t route_count = static_cast<std::size_t>(tokens) * kTopK;
  auto* d_y = device_alloc<std::uint16_t>(y_count);
  auto* d_ids = device_alloc<std::int32_t>(route_count);
  auto* d_topw = device_alloc<float>(route_count);
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  flashmoe::Weights d_weights;
  d_weights.dtype = kDType;
  d_weights.router = d_router;
  d_weights.w13 = d_w13;
  d_weights.w2 = d_w2;

  auto not_supported = [&](const flashmoe::Status& status) {
    fmt::print("FlashMoE cannot run this layer on this GPU: {}\n", status.to_string());
    fmt::print("Running the CPU reference instead.\n");
    return run_cpu_reference(config, model, xs[0], tokens);
  };

  flashmoe::Layer layer;
  flashmoe::Status status = flashmoe::Layer::create(config, d_weights, layer);
  if (status.code() == flashmoe::StatusCode::NotSupported) return not_supported(status);
  status_check(status, "Layer::create");
  fmt::print("layer: {:.1f} MB of workspace\n", static_cast<double>(layer.workspace_bytes()) / 1e6);

  // Forward T tokens of x[0], keeping the routing it used.
  flashmoe::ForwardOptions options;
  options.out_topk_ids = d_ids;
  options.out_topk_weights = d_topw;
  status = flashmoe::forward(layer, d_x[0], d_y, tokens, stream, options);
  if (status.code() == flashmoe::StatusCode::NotSupported) return not_supported(status);
  status_check(status, "forward");
  status_check(layer.device_status(stream), "forward (device status)");
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<std::uint16_t> y = download(d_y, y_count);
  const std::vector<std::int32_t> ids = download(d_ids, route_count);
  const std::vector<float> topw = download(d_topw, route_count);

  // Check against the CPU reference. A token whose expert set differs is accepted only for a
  // near tie (the swapped experts' weights agree to 1e-3); it is then checked with the GPU's
  // routing.
  const auto ref_start = std::chrono::steady_clock::now();
  const flashmoe::Weights host_weights = model.weights();
  std::vector<std::int32_t> ref_ids(route_count);
  std::vector<float> ref_topw(route_count);
  status_check(flashmoe::reference::route(config, host_weights, xs[0].data(), tokens,
                                          ref_ids.data(), ref_topw.data()),
               "reference::route");
  std::vector<std::uint16_t> y_ref(y_count);
  std::vector<double> y_ref_f64(y_count);
  status_check(flashmoe::reference::forward(config, host_weights, xs[0].data(), y_ref.data(),
                                            tokens, {}, y_ref_f64.data()),
               "reference::forward");
  int ties = 0, bad_routes = 0;
  bool any_tie = false;
  std::vector<bool> tie(tokens, false);
  for (int t = 0; t < tokens; ++t) {
    const std::int32_t* g = &ids[static_cast<std::size_t>(t) * kTopK];
    const std::int32_t* r = &ref_ids[static_cast<std::size_t>(t) * kTopK];
    const float* gw = &topw[static_cast<std::size_t>(t) * kTopK];
    const float* rw = &ref_topw[static_cast<std::size_t>(t) * kTopK];
    const float last = *std::min_element(rw, rw + kTopK);
    bool same = true, near = true;
    for (int k = 0; k < kTopK; ++k) {
      if (g[k] < 0 || g[k] >= kExperts) near = false;
      if (!contains(r, g[k])) {
        same = false;
        if (std::fabs(gw[k] - last) > 1e-3f * std::max(last, 1e-30f)) near = false;
      }
    }
    if (same) continue;
    if (near) {
      tie[t] = any_tie = true;
      ++ties;
    } else {
      ++bad_routes;
      fmt::print("token {}: GPU experts differ from the reference beyond a near tie\n", t);
    }
  }
  std::vector<double> y_gpu_route_f64;
  if (any_tie) {
    std::vector<std::uint16_t> scratch(y_count);
    y_gpu_route_f64.resize(y_count);
    flashmoe::ForwardOptions given;
    given.topk_ids = ids.data();
    given.topk_weights = topw.data();
    status_check(flashmoe::reference::forward(config, host_weights, xs[0].data(), scratch.data(),
                                              tokens, given, y_gpu_route_f64.data()),
                 "reference::forward (GPU routing)");
  }
  double max_err = 0.0, sum_err = 0.0;
  int worst = 0;
  for (int t = 0; t < tokens; ++t) {
    const std::vector<double>& ref = tie[t] ? y_gpu_route_f64 : y_ref_f64;
    double num = 0.0, den = 0.0;
    for (int h = 0; h < kHidden; ++h) {
      const std::size_t i = static_cast<std::size_t>(t) * kHidden + h;
      const double d = flashmoe::reference::to_float(y[i], kDType) - ref[i];
      num += d * d;
      den += ref[i] * ref[i];
    }
    const double err = std::sqrt(num / std::max(den, 1e-300));
    sum_err += err;
    if (err > max_err || t == 0) {
      max_err = err;
      worst = t;
    }
  }
  const bool pass = bad_routes == 0 && max_err <= kMaxRelError;
  fmt::print(
      "check vs CPU reference ({:.1f} s): {} token(s), routing identical on {}, near ties {},"
      " wrong {}\n",
      seconds_since(ref_start), tokens, tokens - ties - bad_routes, ties, bad_routes);
  fmt::print("relative L2 error per token: max {:.2e} (token {}), mean {:.2e}, limit {:.0e}: {}\n",
             max_err, worst, sum_err / tokens, kMaxRelError, pass ? "PASS" : "FAIL");

  // Timing: median of per-iteration CUDA event times, rotating through kInputs inputs.
  std::vector<int> sizes = {1};
  if (tokens > 1) sizes.push_back(tokens);
  std::vector<cudaEvent_t> start(kIterations), stop(kIterations);
  for (int i = 0; i < kIterations; ++i) {
    CUDA_CHECK(cudaEventCreate(&start[i]));
    CUDA_CHECK(cudaEventCreate(&stop[i]));
  }
  const double expert_bytes = 2.0 * 3.0 * kIntermediate * kHidden;
  const double router_bytes = 2.0 * kExperts * kHidden;
  fmt::print("\n{:>7} {:>11} {:>9} {:>9} {:>8} {:>13}\n", "tokens", "median_us", "min_us", "p90_us",
             "experts", "weight_GB/s");
  for (int t : sizes) {
    for (int i = 0; i < kWarmup; ++i) {
      status_check(flashmoe::forward(layer, d_x[i % kInputs], d_y, t, stream), "forward");
    }
    for (int i = 0; i < kIterations; ++i) {
      CUDA_CHECK(cudaEventRecord(start[i], stream));
      status_check(flashmoe::forward(layer, d_x[i % kInputs], d_y, t, stream), "forward");
      CUDA_CHECK(cudaEventRecord(stop[i], stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
    status_check(layer.device_status(stream), "forward (device status)");
    std::vector<double> us(kIterations);
    for (int i = 0; i < kIterations; ++i) {
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start[i], stop[i]));
      us[i] = 1e3 * ms;
    }
    std::sort(us.begin(), us.end());
    // Distinct experts the first input's t tokens use (reference routing): the weights read.
    std::vector<bool> used(kExperts, false);
    int distinct = 0;
    for (std::size_t k = 0; k < static_cast<std::size_t>(t) * kTopK; ++k) {
      if (!used[ref_ids[k]]) {
        used[ref_ids[k]] = true;
        ++distinct;
      }
    }
    const double median = us[kIterations / 2];
    fmt::print("{:>7} {:>11.1f} {:>9.1f} {:>9.1f} {:>8} {:>13.0f}\n", t, median, us.front(),
               us[kIterations * 9 / 10], distinct,
               (distinct * expert_bytes + router_bytes) / (median * 1e-6) / 1e9);
  }
  fmt::print("({} warm-up and {} timed forwards per row, {} inputs in rotation)\n", kWarmup,
             kIterations, kInputs);

  for (int i = 0; i < kIterations; ++i) {
    CUDA_CHECK(cudaEventDestroy(start[i]));
    CUDA_CHECK(cudaEventDestroy(stop[i]));
  }
  layer = flashmoe::Layer();  // frees the workspace before the weights go
  CUDA_CHECK(cudaStreamDestroy(stream));
  for (void* p : {static_cast<void*>(d_router), static_cast<void*>(d_w13), static_cast<void*>(d_w2),
                  static_cast<void*>(d_y), static_cast<void*>(d_ids), static_cast<void*>(d_topw)}) {
    CUDA_CHECK(cudaFree(p));
  }
  for (auto* p : d_x) CUDA_CHECK(cudaFree(p));
  return pass ? 0 : 1;
}
