// The fixed-order combine: y[token, c0 : c0 + cols] = the sum of the token's weighted expert
// rows (ypart, in the activation type: top-k major, K slice minor) in that order, in fp32
// (+ beta * y), so that the result does not depend on which tile finished the token last. Run by
// the tile that finished the token slice. The warp-specialised kernel's form; the 256-thread
// kernels keep their own copy in expert_tiles.cuh (moving theirs here changed the SASS of all 24
// decode kernels, whose speed moves with their code layout: bench/NOTES.md, versions 19-25).
#pragma once

#include <cstdint>

#include "numeric.cuh"
#include "params.cuh"

namespace flashmoe::detail {

// `tokens[0 : count)` (shared memory) over `threads` threads from `tid`, 8 columns per item (one
// 16-byte load a part), all listed tokens at once. cols % 8 == 0 (H % 8 == 0 and BN % 8 == 0).
// A thread sums kItems items at a time, so that kItems x kUnroll loads are in flight: the combine
// is a chain of memory round trips, and callers with registers to spare (the warp-specialised
// kernel's consumers, whose accumulators are free by then) take more at once.
template <int kItems, int kUnroll, typename T>
__device__ __forceinline__ void combine_tokens(const KernelParams<T>& p, const std::int32_t* tokens,
                                               int count, int c0, int cols, int tid, int threads) {
  constexpr int kCols = 8;
  const int H = p.hidden;
  const std::int64_t pairs = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  const std::uint32_t parts = static_cast<std::uint32_t>(p.top_k * p.dsplit.kslices);
  const int groups = cols / kCols;
  const int items = count * groups;
  for (int first = tid; first < items; first += threads * kItems) {
    const T* src[kItems];
    T* dst[kItems];
    float sum[kItems][kCols];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      // A spare slot (past the list) repeats the last item and writes nothing.
      const int item = min(first + i * threads, items - 1);
      const std::int64_t t = tokens[item / groups];
      const int c = c0 + (item % groups) * kCols;
      src[i] = p.ypart + t * p.top_k * H + c;
      dst[i] = p.y + t * H + c;
#pragma unroll
      for (int v = 0; v < kCols; ++v) sum[i][v] = 0.0f;
    }
    // Parts in order: k major, K slice minor (one flat loop keeps the loads in flight).
    int k = 0, s = 0;
#pragma unroll kUnroll
    for (std::uint32_t j = 0; j < parts; ++j) {
      const std::int64_t off = (s * pairs + k) * static_cast<std::int64_t>(H);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const uint4 bits = __ldcg(reinterpret_cast<const uint4*>(src[i] + off));
        const T* v = reinterpret_cast<const T*>(&bits);
#pragma unroll
        for (int c = 0; c < kCols; ++c) sum[i][c] += to_f32(v[c]);
      }
      if (++s == p.dsplit.kslices) {
        s = 0;
        ++k;
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (first + i * threads >= items) break;
      uint4* out = reinterpret_cast<uint4*>(dst[i]);
      float* r = sum[i];
      if (p.beta != 0.0f) {
        const uint4 old_bits = *out;
        const T* old = reinterpret_cast<const T*>(&old_bits);
#pragma unroll
        for (int c = 0; c < kCols; ++c) r[c] = fmaf(p.beta, to_f32(old[c]), r[c]);
      }
      *out = make_uint4(pack2<T>(r[0], r[1]), pack2<T>(r[2], r[3]), pack2<T>(r[4], r[5]),
                        pack2<T>(r[6], r[7]));
    }
  }
}

}  // namespace flashmoe::detail
