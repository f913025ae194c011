// The fixed-order combine: y[token, c0 : c0 + cols] = the sum of the token's weighted expert
// rows (ypart, here in the activation type: top-k major, K slice minor) in that order, in fp32
// (+ beta * y), so that the result does not depend on which tile finished the token last. Run by
// the tile that finished the token slice. The warp-specialised kernel's form; the 256-thread
// kernels keep their own copy in expert_tiles.cuh (moving theirs here changed the SASS of all 24
// decode kernels, whose speed moves with their code layout: bench/NOTES.md, versions 19-25).
#pragma once

#include <cstdint>

#include "numeric.cuh"
#include "params.cuh"

namespace flashmoe::detail {

// `tokens[0 : count)` (shared memory) over `threads` threads from `tid`, 4 columns per item, all
// listed tokens at once. cols % 4 == 0 (H % 8 == 0). A thread sums kItems items at a time, so
// that kItems x kUnroll loads are in flight: the combine is a chain of memory round trips, and
// callers with registers to spare (the warp-specialised kernel's consumers, whose accumulators
// are free by then) take more at once.
template <int kItems, int kUnroll, typename T>
__device__ __forceinline__ void combine_tokens(const KernelParams<T>& p, const std::int32_t* tokens,
                                               int count, int c0, int cols, int tid, int threads) {
  const int H = p.hidden;
  const std::int64_t pairs = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  const std::uint32_t parts = static_cast<std::uint32_t>(p.top_k * p.dsplit.kslices);
  const int quads = cols / 4;
  const int items = count * quads;
  for (int first = tid; first < items; first += threads * kItems) {
    const T* src[kItems];
    T* dst[kItems];
    float4 sum[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      // A spare slot (past the list) repeats the last item and writes nothing.
      const int item = min(first + i * threads, items - 1);
      const std::int64_t t = tokens[item / quads];
      const int c = c0 + (item % quads) * 4;
      src[i] = reinterpret_cast<const T*>(p.ypart) + t * p.top_k * H + c;
      dst[i] = p.y + t * H + c;
      sum[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    // Parts in order: k major, K slice minor (one flat loop keeps the loads in flight).
    int k = 0, s = 0;
#pragma unroll kUnroll
    for (std::uint32_t j = 0; j < parts; ++j) {
      const std::int64_t off = (s * pairs + k) * static_cast<std::int64_t>(H);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const uint2 bits = __ldcg(reinterpret_cast<const uint2*>(src[i] + off));
        const T* v = reinterpret_cast<const T*>(&bits);
        sum[i].x += to_f32(v[0]);
        sum[i].y += to_f32(v[1]);
        sum[i].z += to_f32(v[2]);
        sum[i].w += to_f32(v[3]);
      }
      if (++s == p.dsplit.kslices) {
        s = 0;
        ++k;
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (first + i * threads >= items) break;
      uint2* out = reinterpret_cast<uint2*>(dst[i]);
      float4 r = sum[i];
      if (p.beta != 0.0f) {
        const uint2 old_bits = *out;
        const T* old = reinterpret_cast<const T*>(&old_bits);
        r.x = fmaf(p.beta, to_f32(old[0]), r.x);
        r.y = fmaf(p.beta, to_f32(old[1]), r.y);
        r.z = fmaf(p.beta, to_f32(old[2]), r.z);
        r.w = fmaf(p.beta, to_f32(old[3]), r.w);
      }
      *out = make_uint2(pack2<T>(r.x, r.y), pack2<T>(r.z, r.w));
    }
  }
}

}  // namespace flashmoe::detail
