// Helpers shared by the tests: GPU detection, device buffers, random models, comparisons.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashmoe/flashmoe.hpp"

namespace flashmoe_test {

#ifdef FLASHMOE_REQUIRE_GPU
inline constexpr bool kRequireGpu = true;
#else
inline constexpr bool kRequireGpu = false;
#endif

inline bool has_gpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  return ok;
}

// Skips without a GPU, except in the `gpu` preset where a missing GPU is a failure.
#define FLASHMOE_NEED_GPU()                                                       \
  do {                                                                            \
    if (!::flashmoe_test::has_gpu()) {                                            \
      if (::flashmoe_test::kRequireGpu) FAIL() << "FLASHMOE_REQUIRE_GPU: no GPU"; \
      GTEST_SKIP() << "no CUDA GPU on this machine";                              \
    }                                                                             \
  } while (0)

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

// A fresh seed per run, printed by the tests so that a failure can be replayed.
inline std::uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// The device copy is complete on return. (cudaMemcpy from pageable memory may return before
// its DMA lands, and the tests run forward on non-blocking streams that do not wait for the
// legacy stream: without the synchronisation a late poison upload can overwrite y.)
template <typename T>
DeviceBuffer upload(const std::vector<T>& host) {
  DeviceBuffer d(host.size() * sizeof(T));
  if (d.get() != nullptr && !host.empty()) {
    (void)cudaMemcpy(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    (void)cudaDeviceSynchronize();
  }
  return d;
}

template <typename T>
std::vector<T> download(const void* device, std::size_t count) {
  std::vector<T> host(count);
  (void)cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}

// Random 16-bit values, uniform with the given standard deviation. Large arrays are filled
// by several threads (each from its own seed drawn from rng): the big shapes have GBs of weights.
inline std::vector<std::uint16_t> random_values(std::size_t n, float stddev, flashmoe::DType dt,
                                                std::mt19937_64& rng) {
  std::vector<std::uint16_t> v(n);
  const float a = stddev * 1.7320508f;  // uniform on [-a, a] has this stddev
  const unsigned workers = n < (1u << 20) ? 1u : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  const std::size_t per = (n + workers - 1) / workers;
  for (unsigned w = 0; w < workers; ++w) {
    const std::uint64_t seed = rng();
    pool.emplace_back([&v, a, dt, seed, lo = w * per, hi = std::min(n, (w + 1) * per)] {
      std::uint64_t s = seed | 1;
      for (std::size_t i = lo; i < hi; ++i) {
        s ^= s << 13;  // xorshift64
        s ^= s >> 7;
        s ^= s << 17;
        const float u = static_cast<float>(s >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        v[i] = flashmoe::reference::from_float((2.0f * u - 1.0f) * a, dt);
      }
    });
  }
  for (auto& t : pool) t.join();
  return v;
}

// Runs fn(i) for i in [0, n) on all cores (the CPU reference is slow on big shapes).
template <class Fn>
void parallel_for(int n, Fn&& fn) {
  const int workers =
      std::max(1, std::min<int>(n, static_cast<int>(std::thread::hardware_concurrency())));
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (auto& t : pool) t.join();
}

// Host and device copies of one random layer. Scales keep every activation O(1).
struct Model {
  flashmoe::Config config;
  std::vector<std::uint16_t> router, w13, w2;
  std::vector<float> bias;
  DeviceBuffer d_router, d_w13, d_w2, d_bias;

  flashmoe::Weights host_weights() const {
    flashmoe::Weights w;
    w.dtype = config.dtype;
    w.router = router.data();
    w.w13 = w13.data();
    w.w2 = w2.data();
    w.correction_bias = config.routing.use_correction_bias ? bias.data() : nullptr;
    return w;
  }
  flashmoe::Weights device_weights() const {
    flashmoe::Weights w;
    w.dtype = config.dtype;
    w.router = d_router.get();
    w.w13 = d_w13.get();
    w.w2 = d_w2.get();
    w.correction_bias = config.routing.use_correction_bias ? d_bias.get<float>() : nullptr;
    return w;
  }
};

inline Model make_model(const flashmoe::Config& c, std::mt19937_64& rng,
                        float router_scale = 1.0f) {
  Model m;
  m.config = c;
  const std::size_t E = c.experts, H = c.hidden, I = c.intermediate;
  // Router logits of std ~ router_scale * 2: a spread of routing weights, few exact ties.
  m.router =
      random_values(E * H, 2.0f * router_scale / std::sqrt(static_cast<float>(H)), c.dtype, rng);
  m.w13 = random_values(E * 2 * I * H, 1.0f / std::sqrt(static_cast<float>(H)), c.dtype, rng);
  m.w2 = random_values(E * H * I, 1.0f / std::sqrt(static_cast<float>(I)), c.dtype, rng);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  m.bias.resize(E);
  for (auto& b : m.bias) b = u(rng);
  m.d_router = upload(m.router);
  m.d_w13 = upload(m.w13);
  m.d_w2 = upload(m.w2);
  m.d_bias = upload(m.bias);
  return m;
}

// ||a - b|| / ||b|| over one token's row.
inline double rel_l2(const std::uint16_t* gpu, const double* ref, int n, flashmoe::DType dt) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    const double g = flashmoe::reference::to_float(gpu[i], dt);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - ref[i]) * (g - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Bound on per-token relative L2 error: intermediates and y are rounded to the dtype.
inline double tolerance(flashmoe::DType dt) { return dt == flashmoe::DType::BF16 ? 1e-2 : 2e-3; }

constexpr std::uint16_t kPoison = 0xFFFF;  // a NaN in both bf16 and fp16

}  // namespace flashmoe_test
