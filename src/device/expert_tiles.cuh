// Expert tiles: gate/up (fused, activation in the epilogue) and down (routing weight in the
// epilogue, then the fixed-order combine by whichever tile finishes a token slice last), and
// the prefill kernel's router tile.
#pragma once

#include <cstdint>

#include "numeric.cuh"
#include "params.cuh"
#include "sync.cuh"
#include "tile_mma.cuh"
#include "tile_table.cuh"

namespace flashmoe::detail {

// The thread that releases a gate/up tile's count: not thread 0, which claims meanwhile.
inline constexpr int kPublisherThread = 32;

template <class S, typename T>
struct TileSmem {
  const T* a_rows[S::BM];
  const T* b_rows[S::NB];
  std::int32_t pair[S::BM];
  std::int32_t combine_token[S::BM];
};

// h[rows of m-tile, n0 : n0 + BN] = act(x W1^T) * (x W3^T) for the expert of the m-tile, then
// counted in `done` (the m-tile's gate/up counter). `token0_row`: the m-tile is one pair of
// token 0, whose row needs no lookup in sorted_pair (the one-token tiles that start before
// routing has written it). `local_pairs`: the m-tile's pairs in shared memory (a table-free
// launch, LiveExperts) instead of sorted_pair's rows. Returns false (nothing written or counted)
// when the tile was abandoned.
template <class S, typename T, class Tr>
__device__ bool gateup_tile(const KernelParams<T>& p, unsigned char* smem, const MTile mt,
                            int ntile, int ntiles, std::uint32_t* done, bool token0_row, Tr& tr,
                            const std::int32_t* local_pairs = nullptr) {
  __shared__ TileSmem<S, T> ts;
  const std::uint64_t t0 = tr.now();
  const std::uint32_t slot = mt.slot;
  const int H = p.hidden, I = p.inter, n0 = ntile * S::BN;
  // Gate rows past I read up rows (and up rows past I the next expert's): their columns are
  // dropped below. The first stages' weights are requested before the token rows are looked up.
  const int wrow0 = static_cast<int>(mt.expert) * 2 * I + n0;
  const WeightBoxes wb{&p.w13_map, {wrow0, wrow0 + I}, 0};
  if (threadIdx.x == 0) TileMma<S, T>::issue_weights_ahead(smem, wb, H);
  for (int r = threadIdx.x; r < S::BM; r += kThreads) {
    const T* row = nullptr;
    if (r < static_cast<int>(mt.rows)) {
      const int pair = token0_row             ? 0
                       : local_pairs != nullptr ? local_pairs[r]
                                                : __ldcg(p.sorted_pair + mt.row0 + r);
      row = p.x + static_cast<std::int64_t>(pair / p.top_k) * H;
    }
    ts.a_rows[r] = row;
  }
  if constexpr (!kDeviceHasTma) {
    const T* w = p.w13 + static_cast<std::int64_t>(mt.expert) * 2 * I * H;
    for (int j = threadIdx.x; j < S::NB; j += kThreads) {
      const int n = n0 + (j < S::BN ? j : j - S::BN);
      const int wrow = j < S::BN ? n : I + n;
      ts.b_rows[j] = n < I ? w + static_cast<std::int64_t>(wrow) * H : nullptr;
    }
  }
  __syncthreads();

  typename TileMma<S, T>::Acc acc;
  if (!TileMma<S, T>::template run<true, true>(acc, smem, ts.a_rows, ts.b_rows, wb,
                                               {p.ctl, p.timeout_ns}, H, p.w13,
                                               [] { return true; })) {
    return false;
  }

  T* hbase = p.h + static_cast<std::int64_t>(mt.row0) * I;
  TileMma<S, T>::for_each_pair([&](int row, int col, int f, int mi, int half) {
    if (row < static_cast<int>(mt.rows) && n0 + col < I) {
      const float g0 = acc[mi][f][2 * half], g1 = acc[mi][f][2 * half + 1];
      const float u0 = acc[mi][f + S::NI][2 * half], u1 = acc[mi][f + S::NI][2 * half + 1];
      *reinterpret_cast<std::uint32_t*>(hbase + static_cast<std::int64_t>(row) * I + n0 + col) =
          pack2<T>(activate(g0, p.activation) * u0, activate(g1, p.activation) * u1);
    }
  });
  __syncthreads();  // the whole tile is written before it is published
  // Warp 1 publishes, so that the release's wait for the tile's stores is not in front of
  // thread 0's claim of the block's next ticket (moe_kernel.cuh claims before its barrier).
  if (threadIdx.x == kPublisherThread) {
    const bool drop = p.fault == kFaultDropMTileSignal && slot == 0 && ntile == 0;
    if (!drop) add_release(done, 1);  // the old value is not needed: no acquire
  }
  tr.record(TraceKind::GateUp, t0, static_cast<int>(mt.expert),
            static_cast<int>(slot) * ntiles + ntile);
  return true;
}

// Router tile: logits[kslice, t0 : t0 + BM, e0 : e0 + BN] = x Wr^T over one K slice of H
// (fp32 partials, summed over the slices by the top-k step). Its own call of the tile loop:
// sharing the down tile's call kept the router's extra state live across that loop and
// pushed the kernel (at its 128-register cap) into spills that slowed every tile.
template <class S, typename T, class Tr>
__device__ void router_tile(const KernelParams<T>& p, unsigned char* smem, int t0, int live, int e0,
                            int kslice, int trace_tile, Tr& tr) {
  __shared__ TileSmem<S, T> ts;
  const std::uint64_t start = tr.now();
  const int H = p.hidden, k0 = kslice * p.rsplit.klen;
  for (int r = threadIdx.x; r < S::BM; r += kThreads) {
    const int t = t0 + r;
    // x may alias y (in-place forward): cp.async reads through L2, and no y is written before
    // every router tile is done.
    ts.a_rows[r] = t < live ? p.x + static_cast<std::int64_t>(t) * H + k0 : nullptr;
  }
  for (int j = threadIdx.x; j < S::NB; j += kThreads) {
    const int e = e0 + j;
    ts.b_rows[j] = e < p.experts ? p.router + static_cast<std::int64_t>(e) * H + k0 : nullptr;
  }
  team_sync();
  typename TileMma<S, T>::Acc acc;
  TileMma<S, T>::template run<false>(acc, smem, ts.a_rows, ts.b_rows, WeightBoxes{},
                                     {p.ctl, p.timeout_ns}, min(p.rsplit.klen, H - k0), p.router,
                                     [] { return true; });
  float* part = p.logits + static_cast<std::int64_t>(kslice) * p.num_tokens * p.experts;
  TileMma<S, T>::for_each_pair([&](int row, int col, int f, int mi, int half) {
    const int t = t0 + row, e = e0 + col;
    if (t < live) {
      float* dst = part + static_cast<std::int64_t>(t) * p.experts + e;
      if (e < p.experts) dst[0] = acc[mi][f][2 * half];
      if (e + 1 < p.experts) dst[1] = acc[mi][f][2 * half + 1];
    }
  });
  tr.record(TraceKind::Router, start, -1, trace_tile);
}

// After the combine of `ncombine` tokens over columns [n0, n0 + BN): their parts' lines are
// dropped from L2 unwritten. Nobody reads them again this launch, and left dirty they are written
// back to DRAM in the middle of the weight stream (bench/NOTES.md, rows 160-161). Whole lines
// only: 64 columns of a part, so BN and H multiples of 64 (the scratch is 256-byte aligned).
template <class S, typename T>
__device__ void discard_summed_parts(const KernelParams<T>& p, const std::int32_t* tokens,
                                     int ncombine, int n0, std::int64_t pairs) {
  static_assert(S::BN % 64 == 0, "a part's columns of the tile fill whole lines");
  const int H = p.hidden;
  constexpr int kLines = S::BN / 64;
  const int lines = min(S::BN, H - n0) / 64;
  const int parts = p.top_k * p.dsplit.kslices;
#pragma unroll 1
  for (int i = threadIdx.x; i < ncombine * parts * kLines; i += kThreads) {
    const int line = i % kLines, part = i / kLines % parts;
    if (line >= lines) continue;
    const std::int64_t t = tokens[i / (kLines * parts)];
    const int k = part / p.dsplit.kslices, s = part % p.dsplit.kslices;
    discard_l2_line(p.ypart + (s * pairs + t * p.top_k + k) * H + n0 + 64 * line);
  }
}

// ypart[kslice, pair, n0 : n0 + BN] = w_pair * (h W2^T) over K slice `kslice` of I, in the
// activation type as the engine's (half the bytes of fp32 rows: bench/NOTES.md, rows 154-156);
// then, for every token whose top-k pairs and K slices of this column range are now all
// present, y = sum over k, then over slices, in order, in fp32 (+ beta * y). h is read once
// `done` (the m-tile's gate/up counter) reaches gateup_ntiles. `local_pairs`: as gateup_tile's.
// Returns false when the launch is being abandoned.
template <class S, typename T, class Tr>
__device__ bool down_tile(const KernelParams<T>& p, unsigned char* smem, const MTile mt, int ntile,
                          int kslice, int ntiles, int gateup_ntiles, std::uint32_t* done, Tr& tr,
                          const std::int32_t* local_pairs = nullptr) {
  __shared__ TileSmem<S, T> ts;
  __shared__ float s_weight[S::BM];  // the rows' routing weights, read while the weights stream
  __shared__ bool s_ready;
  __shared__ int s_ncombine;
  std::uint64_t t0 = tr.now();
  const std::uint32_t slot = mt.slot;
  const int H = p.hidden, I = p.inter, n0 = ntile * S::BN;
  const int k0 = kslice * p.dsplit.klen, klen = min(p.dsplit.klen, I - k0);
  // Rows past H read the next expert's: their columns are dropped below. Columns past the
  // slice (only the last slice has a partial step) are zero in A. The first stages' weights
  // are requested before the h rows are looked up.
  const WeightBoxes wb{&p.w2_map, {static_cast<int>(mt.expert) * H + n0, 0}, k0};
  if (threadIdx.x == 0) {
    // Test fault on a down tile, which no other tile waits for, so that the weight-copy wait
    // is the one the watchdog reports: its first stage is never requested.
    const bool stall = p.fault == kFaultStallWeightCopy && slot == 0 && ntile == 0 && kslice == 0;
    TileMma<S, T>::issue_weights_ahead(smem, wb, klen, stall ? 1 : 0);
  }
  for (int r = threadIdx.x; r < S::BM; r += kThreads) {
    const bool live = r < static_cast<int>(mt.rows);
    ts.a_rows[r] = live ? p.h + static_cast<std::int64_t>(mt.row0 + r) * I + k0 : nullptr;
    const std::int32_t pair = !live                   ? -1
                              : local_pairs != nullptr ? local_pairs[r]
                                                       : __ldcg(p.sorted_pair + mt.row0 + r);
    ts.pair[r] = pair;
    s_weight[r] = live ? __ldcg(p.pair_weight + pair) : 0.0f;
  }
  if constexpr (!kDeviceHasTma) {
    const T* w = p.w2 + static_cast<std::int64_t>(mt.expert) * H * I + k0;
    for (int j = threadIdx.x; j < S::NB; j += kThreads) {
      ts.b_rows[j] = n0 + j < H ? w + static_cast<std::int64_t>(n0 + j) * I : nullptr;
    }
  }
  __syncthreads();

  // The w2 tile starts streaming before h is complete; h is read only after the m-tile's
  // gate/up tiles are all counted (acquire).
  auto wait_for_h = [&]() {
    if (threadIdx.x == 0) {
      const std::uint64_t w0 = tr.now();
      bool spun = false;
      s_ready = wait_at_least(p.ctl, done, static_cast<std::uint32_t>(gateup_ntiles), p.timeout_ns,
                              kSiteMTileDone, spun);
      if (spun) {
        tr.record(TraceKind::Wait, w0, static_cast<int>(mt.expert), static_cast<int>(slot));
        t0 = tr.now();
      }
    }
    __syncthreads();
    return s_ready;
  };
  typename TileMma<S, T>::Acc acc;
  if (!TileMma<S, T>::template run<true, true>(acc, smem, ts.a_rows, ts.b_rows, wb,
                                               {p.ctl, p.timeout_ns}, klen, p.w2, wait_for_h)) {
    return false;
  }

  const std::int64_t pairs = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  T* plane = p.ypart + kslice * pairs * H;
  TileMma<S, T>::for_each_pair([&](int row, int col, int f, int mi, int half) {
    if (row < static_cast<int>(mt.rows) && n0 + col < H) {
      const int pair = ts.pair[row];
      const float wt = s_weight[row];
      *reinterpret_cast<std::uint32_t*>(plane + static_cast<std::int64_t>(pair) * H + n0 + col) =
          pack2<T>(acc[mi][f][2 * half] * wt, acc[mi][f][2 * half + 1] * wt);
    }
  });
  if (threadIdx.x == 0) s_ncombine = 0;
  __syncthreads();  // the tile's slices are written before any is counted

  // Count this tile's rows; the last of a token's top-k x K-slice parts sends the token to the
  // combine.
  const std::int64_t stride = p.combine_stride;
  const std::uint32_t parts = static_cast<std::uint32_t>(p.top_k * p.dsplit.kslices);
  for (int r = threadIdx.x; r < static_cast<int>(mt.rows); r += kThreads) {
    const int token = ts.pair[r] / p.top_k;
    std::uint32_t* c = &p.combine_done[token * stride + ntile];
    if (fetch_add_acq_rel(c, 1) == parts - 1) {
      store_relaxed(c, 0);  // nobody else touches it again this launch
      ts.combine_token[atomicAdd(&s_ncombine, 1)] = token;  // list order is irrelevant
    }
  }
  __syncthreads();

  // y[token, n0 : n0 + BN] = sum of its ypart parts in order (+ beta * y), 4 columns per thread,
  // all listed tokens at once. A token listed twice cannot happen: only one slice is last.
  tr.record(TraceKind::Down, t0, static_cast<int>(mt.expert),
            (static_cast<int>(slot) * ntiles + ntile) * p.dsplit.kslices + kslice);
  const int ncombine = s_ncombine;
  if (ncombine == 0) return true;
  const std::uint64_t t1 = tr.now();
  const int quads = min(S::BN, H - n0) / 4;  // H % 8 == 0
  for (int i = threadIdx.x; i < ncombine * quads; i += kThreads) {
    const std::int64_t t = ts.combine_token[i / quads];
    const int c = n0 + (i % quads) * 4;
    const T* src = p.ypart + t * p.top_k * H + c;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // Parts in order: k major, K slice minor (one flat loop keeps 8 loads in flight).
    int k = 0, s = 0;
#pragma unroll 8
    for (std::uint32_t j = 0; j < parts; ++j) {
      const uint2 bits = __ldcg(
          reinterpret_cast<const uint2*>(src + (s * pairs + k) * static_cast<std::int64_t>(H)));
      const T* v = reinterpret_cast<const T*>(&bits);
      sum.x += to_f32(v[0]);
      sum.y += to_f32(v[1]);
      sum.z += to_f32(v[2]);
      sum.w += to_f32(v[3]);
      if (++s == p.dsplit.kslices) {
        s = 0;
        ++k;
      }
    }
    uint2* dst = reinterpret_cast<uint2*>(p.y + t * H + c);
    if (p.beta != 0.0f) {
      const uint2 old_bits = *dst;
      const T* old = reinterpret_cast<const T*>(&old_bits);
      sum.x = fmaf(p.beta, to_f32(old[0]), sum.x);
      sum.y = fmaf(p.beta, to_f32(old[1]), sum.y);
      sum.z = fmaf(p.beta, to_f32(old[2]), sum.z);
      sum.w = fmaf(p.beta, to_f32(old[3]), sum.w);
    }
    *dst = make_uint2(pack2<T>(sum.x, sum.y), pack2<T>(sum.z, sum.w));
  }
  __syncthreads();  // every read of the parts has returned; the span ends with the whole block
  if constexpr (S::BN % 64 == 0) {
    if (H % 64 == 0) discard_summed_parts<S>(p, ts.combine_token, ncombine, n0, pairs);
  }
  tr.record(TraceKind::Combine, t1, static_cast<int>(mt.expert), ntile);
  return true;
}

}  // namespace flashmoe::detail
