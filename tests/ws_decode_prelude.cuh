// Issue 21's routing prelude, as a prototype beside the decode stream (ws_decode_stream.cuh):
// for a few tokens (T <= 16), every block computes router logits for its share of the experts
// and publishes them with one counter; then every block, once the counter is full, runs the
// top-k of every token itself (one warp a token) instead of waiting for one block's top-k and a
// published tile table. Each block ends holding the routing in shared memory, which is where the
// decode stream's producer would start requesting weights. Softmax scoring, renormalised
// weights, E <= 256 (a warp's lanes hold 8 logits each), K <= min(16, E), H a multiple of 8
// (16-byte loads); the callers keep to these limits. Its time, launch included, is what the
// decode engine's prelude can reach (bench_ws_mainloop, DecodePrelude rows); every block writes
// its routing so the test can check that all agree with the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device/routing.cuh"  // ordered_bits
#include "device/sync.cuh"

namespace flashmoe_test {

inline constexpr int kDpThreads = 128;
inline constexpr int kDpMaxTokens = 16, kDpMaxExperts = 256, kDpMaxTopK = 16;

struct DecodePreludeArgs {
  const __nv_bfloat16* x;       // [tokens, hidden]
  const __nv_bfloat16* router;  // [experts, hidden]
  int tokens, hidden, experts, top_k;
  float* logits;             // [tokens, experts], written this launch
  std::uint32_t* published;  // router blocks done; zero before the launch
  int* ids;                  // [grid, tokens, top_k]: each block's routing
  float* weights;            // [grid, tokens, top_k]
  flashmoe::detail::Watchdog wd;
};

// The block's shared state of the prelude.
struct DpShared {
  float partial[kDpThreads / 32][kDpMaxTokens];
  int ids[kDpMaxTokens][kDpMaxTopK];
  float weights[kDpMaxTokens][kDpMaxTopK];
  int failed;
};

// The prelude, run by every thread of the block (threads past kDpThreads only meet at the
// barriers): on return the block's `sh.ids` / `sh.weights` hold every token's routing. False
// (for every thread) when the wait for the other blocks failed; the launch has then failed.
__device__ inline bool dp_route(const DecodePreludeArgs& g, DpShared& sh) {
  using namespace flashmoe::detail;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, T = g.tokens;
  const bool worker = threadIdx.x < kDpThreads;

  // Router: this block's experts, H split over the workers in 16-byte pieces, every token at once.
  for (int e = blockIdx.x; e < g.experts; e += gridDim.x) {
    if (worker) {
      float acc[kDpMaxTokens];
#pragma unroll
      for (int t = 0; t < kDpMaxTokens; ++t) acc[t] = 0.0f;
      const __nv_bfloat16* wrow = g.router + static_cast<std::int64_t>(e) * g.hidden;
      for (int c = threadIdx.x * 8; c < g.hidden; c += kDpThreads * 8) {
        const uint4 wv = __ldg(reinterpret_cast<const uint4*>(wrow + c));
        const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv);
#pragma unroll
        for (int t = 0; t < kDpMaxTokens; ++t) {
          if (t >= T) break;
          const uint4 xv = __ldg(
              reinterpret_cast<const uint4*>(g.x + static_cast<std::int64_t>(t) * g.hidden + c));
          const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 a = __bfloat1622float2(w2[i]), b = __bfloat1622float2(x2[i]);
            acc[t] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[t]));
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kDpMaxTokens; ++t) {
        if (t >= T) break;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
        if (lane == 0) sh.partial[warp][t] = acc[t];
      }
    }
    __syncthreads();
    if (threadIdx.x < T) {
      float sum = 0.0f;
      for (int w = 0; w < kDpThreads / 32; ++w) sum += sh.partial[w][threadIdx.x];  // fixed order
      g.logits[static_cast<std::int64_t>(threadIdx.x) * g.experts + e] = sum;
    }
    __syncthreads();
  }
  // Publish (every block, whether or not it had an expert), then wait for all.
  __syncthreads();
  if (threadIdx.x == 0) {
    add_release(g.published, 1);
    bool spun = false;
    sh.failed =
        wait_at_least(g.wd.ctl, g.published, gridDim.x, g.wd.timeout_ns, kSiteRouterDone, spun) ? 0
                                                                                                : 1;
  }
  __syncthreads();
  if (sh.failed != 0) return false;

  // Top-k: worker warp w takes tokens w, w + 4, ...; lane l holds experts l, l + 32, ...
  constexpr int kPerLane = kDpMaxExperts / 32;
  for (int t = warp; worker && t < T; t += kDpThreads / 32) {
    const float* row = g.logits + static_cast<std::int64_t>(t) * g.experts;
    float score[kPerLane];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      score[i] = e < g.experts ? __ldcg(row + e) : -INFINITY;  // written by other blocks
      mx = fmaxf(mx, score[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      // Unnormalised softmax: its denominator cancels in the renormalised weights.
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      score[i] = lane + 32 * i < g.experts ? __expf(score[i] - mx) : 0.0f;
    }
    std::uint32_t taken = 0;
    float picked = 0.0f, wsum = 0.0f;
    int picked_id = 0;
    for (int k = 0; k < g.top_k; ++k) {
      float bv = -INFINITY;
      int bi = 0x7fffffff;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        if (!((taken >> i) & 1u) && lane + 32 * i < g.experts && score[i] > bv) {
          bv = score[i];
          bi = lane + 32 * i;
        }
      }
      const std::uint32_t top = __reduce_max_sync(0xffffffffu, flashmoe::detail::ordered_bits(bv));
      const int id = static_cast<int>(__reduce_min_sync(
          0xffffffffu, flashmoe::detail::ordered_bits(bv) == top ? static_cast<std::uint32_t>(bi)
                                                                 : 0xffffffffu));
      const float pick = __shfl_sync(0xffffffffu, bv, id & 31);
      if ((id & 31) == lane) taken |= 1u << (id >> 5);
      if (lane == k) {
        picked = pick;
        picked_id = id;
      }
      wsum += pick;
    }
    if (lane < g.top_k) {
      sh.ids[t][lane] = picked_id;
      sh.weights[t][lane] = picked / wsum;
    }
  }
  __syncthreads();
  return true;
}

__global__ void __launch_bounds__(kDpThreads) ws_decode_prelude_kernel(const DecodePreludeArgs g) {
  __shared__ DpShared sh;
  if (!dp_route(g, sh)) return;
  // What the stream would start from; written out for the test.
  for (int i = threadIdx.x; i < g.tokens * g.top_k; i += kDpThreads) {
    const std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * g.tokens * g.top_k + i;
    g.ids[o] = sh.ids[i / g.top_k][i % g.top_k];
    g.weights[o] = sh.weights[i / g.top_k][i % g.top_k];
  }
}

}  // namespace flashmoe_test
