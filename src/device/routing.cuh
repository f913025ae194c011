// Routing phase: router logits, top-k per token, grouping of (token, k) pairs by expert,
// and the tile table that releases the expert tiles. Runs as the first tickets of the queue.
#pragma once

#include <cfloat>
#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "numeric.cuh"
#include "params.cuh"
#include "sync.cuh"
#include "tile_mma.cuh"

namespace flashmoe::detail {

// Logits of tokens [t0, t0 + kRouterTokens) x experts [e0, e0 + kRouterExperts), fp32.
// Each warp takes kRouterExperts / 8 experts; lanes stride H with 16-byte loads.
template <typename T>
__device__ void router_logits(const KernelParams<T>& p, int t0, int e0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int H = p.hidden;
  const int nt = min(kRouterTokens, p.num_tokens - t0);
  for (int e = e0 + warp; e < min(e0 + kRouterExperts, p.experts); e += kThreads / 32) {
    float acc[kRouterTokens];
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) acc[t] = 0.0f;
    const T* w_row = p.router + static_cast<std::int64_t>(e) * H;
    for (int k = lane * 8; k < H; k += 32 * 8) {
      float w[8];
      unpack8<T>(__ldg(reinterpret_cast<const uint4*>(w_row + k)), w);
#pragma unroll
      for (int t = 0; t < kRouterTokens; ++t) {
        if (t < nt) {
          float xv[8];
          unpack8<T>(__ldg(reinterpret_cast<const uint4*>(
                         p.x + static_cast<std::int64_t>(t0 + t) * H + k)),
                     xv);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[t] = fmaf(xv[i], w[i], acc[t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
      if (lane == 0 && t < nt) p.logits[static_cast<std::int64_t>(t0 + t) * p.experts + e] = acc[t];
    }
  }
}

// Registers pair (t, k) -> expert e with weight w; its row among e's rows comes from a
// counter (order varies run to run, results do not: rows are computed independently and the
// combine sums by k).
template <typename T>
__device__ void register_pair(const KernelParams<T>& p, int t, int k, int e, float w) {
  const std::int64_t pair = static_cast<std::int64_t>(t) * p.top_k + k;
  p.pair_expert[pair] = e;
  p.pair_weight[pair] = w;
  p.pair_pos[pair] = fetch_add_relaxed(&p.expert_count[e], 1);
  if (p.out_ids != nullptr) p.out_ids[pair] = e;
  if (p.out_weights != nullptr) p.out_weights[pair] = w;
}

// One warp: top-k of token t from its logits (see flashmoe::Routing for the rules).
template <typename T>
__device__ void select_experts(const KernelParams<T>& p, int t) {
  constexpr int kPerLane = 1024 / 32;  // kMaxExperts / warp size
  const int lane = threadIdx.x & 31;
  const int E = p.experts;
  const float* row = p.logits + static_cast<std::int64_t>(t) * E;
  float score[kPerLane], choice[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    score[i] = e < E ? __ldcg(row + e) : -INFINITY;  // written by other blocks this launch
    mx = fmaxf(mx, score[i]);
  }
  if (p.scoring == static_cast<int>(Scoring::Softmax)) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      score[i] = lane + 32 * i < E ? expf(score[i] - mx) : 0.0f;
      sum += score[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) score[i] /= sum;
  } else {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) score[i] = 1.0f / (1.0f + expf(-score[i]));
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    float c = score[i];
    if (p.correction_bias != nullptr && e < E) c += __ldg(p.correction_bias + e);
    if (c != c) c = -FLT_MAX;                // NaN input: still selectable, last
    choice[i] = e < E ? c : -INFINITY;       // -inf marks "not selectable"
  }

  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int k = 0; k < p.top_k; ++k) {
    float bv = -INFINITY, bs = 0.0f;
    int bi = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (choice[i] > bv) {  // ascending e within a lane: ties keep the lower id
        bv = choice[i];
        bi = lane + 32 * i;
        bs = score[i];
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
        bs = os;
      }
    }
    // top_k <= selectable experts, so bi is a real expert here.
    if ((bi & 31) == lane) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (i == (bi >> 5)) choice[i] = -INFINITY;
    }
    if (lane == k) {
      my_id = bi;
      my_w = bs;
    }
    wsum += bs;
  }
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  my_w *= p.scaling;
  if (lane < p.top_k) register_pair(p, t, lane, my_id, my_w);
}

// One warp: caller-supplied routing of token t, with its ids checked.
template <typename T>
__device__ void take_user_routing(const KernelParams<T>& p, int t) {
  const int lane = threadIdx.x & 31;
  if (lane >= p.top_k) return;
  const std::int64_t pair = static_cast<std::int64_t>(t) * p.top_k + lane;
  const int e = __ldg(p.user_ids + pair);
  if (e < 0 || e >= p.experts) {
    p.ctl.fail(StatusCode::InvalidArgument, kSiteRoutingIds);
    return;
  }
  register_pair(p, t, lane, e, __ldg(p.user_weights + pair));
}

// Shared memory of the tile-table build.
struct ScanSmem {
  std::uint32_t count[1024], offset[1024], mtile_offset[1024];
};

// The last routing task to finish: prefix sums over experts, the m-tile table, the
// row -> pair map, then the task count is published (release), which starts the tiles.
template <typename T, int BM>
__device__ void build_tile_table(const KernelParams<T>& p, unsigned char* smem_raw,
                                 std::uint32_t routing_tickets, int gateup_ntiles,
                                 int down_ntiles) {
  using Scan = cub::BlockScan<std::uint32_t, kThreads>;
  constexpr int kItems = 1024 / kThreads;
  auto& s = *reinterpret_cast<ScanSmem*>(smem_raw);
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ std::uint32_t s_mtiles;
  const int E = p.experts;

  std::uint32_t cnt[kItems], mt[kItems], off[kItems], moff[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    cnt[i] = e < E ? __ldcg(reinterpret_cast<const unsigned*>(p.expert_count + e)) : 0u;
    mt[i] = (cnt[i] + BM - 1) / BM;
  }
  Scan(scan_tmp).ExclusiveSum(cnt, off);
  __syncthreads();
  std::uint32_t total_mtiles = 0;
  Scan(scan_tmp).ExclusiveSum(mt, moff, total_mtiles);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    if (e < E) {
      s.count[e] = cnt[i];
      s.offset[e] = off[i];
      s.mtile_offset[e] = moff[i];
    }
  }
  if (threadIdx.x == 0) s_mtiles = total_mtiles;
  __syncthreads();

  for (int e = threadIdx.x; e < E; e += kThreads) {
    for (std::uint32_t j = 0; j * BM < s.count[e]; ++j) {
      const std::uint32_t slot = s.mtile_offset[e] + j;
      p.mtile_expert[slot] = e;
      p.mtile_row0[slot] = s.offset[e] + j * BM;
      p.mtile_rows[slot] = min(static_cast<std::uint32_t>(BM), s.count[e] - j * BM);
      p.mtile_done[slot] = 0;
    }
  }
  const std::int64_t pairs = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  for (std::int64_t q = threadIdx.x; q < pairs; q += kThreads) {
    const int e = __ldcg(p.pair_expert + q);
    p.sorted_pair[s.offset[e] + __ldcg(reinterpret_cast<const unsigned*>(p.pair_pos + q))] =
        static_cast<std::int32_t>(q);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const std::uint32_t m = s_mtiles;
    store_relaxed(p.ctl.word(kNumMTiles), m);
    store_release(p.ctl.word(kTasksTotal),
                  routing_tickets + m * static_cast<std::uint32_t>(gateup_ntiles + down_ntiles));
  }
}

}  // namespace flashmoe::detail
