// Routing phase: router logits (decode kernels; the prefill kernel runs its router as
// tensor-core tiles, expert_tiles.cuh), top-k per token, grouping of (token, k) pairs by
// expert, and the tile table that releases the expert tiles. Runs as the first tickets of the
// queue.
#pragma once

#include <cfloat>
#include <cstdint>

#include "numeric.cuh"
#include "params.cuh"
#include "sync.cuh"
#include "tile_mma.cuh"
#include "tile_table.cuh"

namespace flashmoe::detail {

// One step of a warp's reduce-scatter of N values per lane: each lane keeps the half of
// values [0, 2S) whose index agrees with its lane id on bit S, summed with its partner's, in
// slots [0, S). After the steps S = N/2, ..., 1, slot 0 of lane l holds the sum of value l.
template <int S, int N>
__device__ __forceinline__ void lane_reduce_scatter(float (&a)[N], int lane) {
  static_assert(2 * S <= N, "");
  const bool upper = (lane & S) != 0;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const float keep = upper ? a[i + S] : a[i];
    const float send = upper ? a[i] : a[i + S];
    a[i] = keep + __shfl_xor_sync(0xffffffffu, send, S);
  }
}

// Decode kernels' router: logits of tokens [t0, t0 + kRouterTokens) x experts
// [e0, e0 + kRouterExperts), fp32, on CUDA cores (a tensor-core router tile in these kernels
// measured slower at T <= 64: bench/NOTES.md, version 16). The block splits H: warp w takes
// columns [w * 256, w * 256 + 256) of each 2048-column pass, one 16-byte load per lane for every
// expert row and token row, all issued before the first multiply-add. So a pass costs one DRAM
// round trip, and each token row is read once per task (one expert per warp read the 4 token
// rows from L2 one after the other, for each of the 8 experts: 5.3 us per task at T = 4).
// The partial sums are reduced over lanes, then over warps in a fixed order through `red`
// (shared memory, kRouterTokens * kRouterExperts * kThreads / 32 floats).
template <typename T>
__device__ void router_logits(const KernelParams<T>& p, float* red, int t0, int live, int e0) {
  constexpr int kWarps = kThreads / 32, kVals = kRouterTokens * kRouterExperts;
  static_assert(kVals == 32, "one value per lane after the reduce-scatter");
  constexpr int kPass = kThreads * 8;  // columns of H per pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int H = p.hidden;
  const int nt = min(kRouterTokens, live - t0);
  const int ne = min(kRouterExperts, p.experts - e0);
  float acc[kVals];  // [token][expert]
#pragma unroll
  for (int v = 0; v < kVals; ++v) acc[v] = 0.0f;
  for (int c0 = 0; c0 < H; c0 += kPass) {
    const int col = c0 + threadIdx.x * 8;  // H % 8 == 0: a load is wholly inside H or outside
    const bool in = col < H;
    uint4 w[kRouterExperts], xv[kRouterTokens];
#pragma unroll
    for (int e = 0; e < kRouterExperts; ++e) {
      w[e] = in && e < ne ? __ldg(reinterpret_cast<const uint4*>(
                                p.router + static_cast<std::int64_t>(e0 + e) * H + col))
                          : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int t = 0; t < kRouterTokens; ++t) {
      // x may alias y (in-place forward), which this launch writes: not the read-only path.
      xv[t] = in && t < nt ? __ldcg(reinterpret_cast<const uint4*>(
                                 p.x + static_cast<std::int64_t>(t0 + t) * H + col))
                           : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int e = 0; e < kRouterExperts; ++e) {
      float wf[8];
      unpack8<T>(w[e], wf);
#pragma unroll
      for (int t = 0; t < kRouterTokens; ++t) {
        float xf[8];
        unpack8<T>(xv[t], xf);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc[t * kRouterExperts + e] = fmaf(xf[i], wf[i], acc[t * kRouterExperts + e]);
        }
      }
    }
  }
  // Reduce-scatter over the lanes: lane l ends with the warp's sum of value l.
  lane_reduce_scatter<16>(acc, lane);
  lane_reduce_scatter<8>(acc, lane);
  lane_reduce_scatter<4>(acc, lane);
  lane_reduce_scatter<2>(acc, lane);
  lane_reduce_scatter<1>(acc, lane);
  red[warp * kVals + lane] = acc[0];
  team_sync();
  if (threadIdx.x < kVals) {
    const int t = threadIdx.x / kRouterExperts, e = threadIdx.x % kRouterExperts;
    float sum = red[threadIdx.x];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) sum += red[w * kVals + threadIdx.x];
    if (t < nt && e < ne) p.logits[static_cast<std::int64_t>(t0 + t) * p.experts + e0 + e] = sum;
  }
}

// Block: the logits of tokens [t0, t0 + n) into `logits` (shared, [n][E]): the router partials
// summed in K-slice order (the same sum on every run). The partials were written by other
// blocks this launch (ordered by the caller's acquire): read through L2, four logits a thread
// with all their slices' loads issued first, since the step is a chain of L2 round trips
// otherwise (one logit at a time, a 64-token chunk of 128 experts took 32 of them).
template <int kMaxKSlices, typename T>
__device__ void stage_logits(const KernelParams<T>& p, float* logits, int t0, int n, int E) {
  const int ks = p.rsplit.kslices;
  const std::int64_t stride = static_cast<std::int64_t>(p.num_tokens) * E;
  const float* base = p.logits + static_cast<std::int64_t>(t0) * E;
  const int count = n * E;
  constexpr int kBatch = 4;
  for (int first = threadIdx.x; first < count; first += kThreads * kBatch) {
    float v[kBatch][kMaxKSlices];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * kThreads;
#pragma unroll
      for (int s = 0; s < kMaxKSlices; ++s)
        v[b][s] = s < ks && i < count ? __ldcg(base + s * stride + i) : 0.0f;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * kThreads;
      float sum = v[b][0];
#pragma unroll
      for (int s = 1; s < kMaxKSlices; ++s) sum += v[b][s];
      if (i < count) logits[i] = sum;
    }
  }
}

// Float -> uint32 with the same order (no NaN here: choices are finite or -inf; + 0.0f makes
// -0 equal to +0, as the float comparison has it).
__device__ __forceinline__ std::uint32_t ordered_bits(float v) {
  const std::uint32_t u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
}

// A warp's routing of one token: lane k < top_k holds its k-th expert and weight.
struct Pick {
  int id;
  float w;
};

// One warp: top-k of a token from its logits `row` (shared memory; see flashmoe::Routing for
// the rules). Lane l holds experts l, l + 32, ...; PER_LANE = ceil(E / 32) rounded up to a
// power of two, so the arrays stay in registers (only compile-time indices), and taken experts
// are a bit mask.
template <int PER_LANE, typename T>
__device__ Pick select_experts_n(const KernelParams<T>& p, const float* row, int E, int K) {
  const int lane = threadIdx.x & 31;
  float score[PER_LANE], choice[PER_LANE];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int e = lane + 32 * i;
    score[i] = e < E ? row[e] : -INFINITY;
    mx = fmaxf(mx, score[i]);
  }
  if (p.scoring == static_cast<int>(Scoring::Softmax)) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      score[i] = lane + 32 * i < E ? expf(score[i] - mx) : 0.0f;
      sum += score[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = 1.0f / sum;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) score[i] *= inv;
  } else {
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) score[i] = 1.0f / (1.0f + expf(-score[i]));
  }
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int e = lane + 32 * i;
    float c = score[i];
    if (p.correction_bias != nullptr && e < E) c += __ldg(p.correction_bias + e);
    if (!(c >= -FLT_MAX)) c = -FLT_MAX;  // NaN or -inf (a masking bias): selectable, last
    choice[i] = e < E ? c : -INFINITY;   // -inf: never selectable
  }

  // Each lane keeps its best untaken expert; a round takes the warp's best of those.
  std::uint32_t taken = 0;
  float bv = -INFINITY, bs = 0.0f;
  int bi = 0x7fffffff;
  auto lane_best = [&]() {
    bv = -INFINITY;
    bi = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      if (!((taken >> i) & 1u) && choice[i] > bv) {  // ascending id: ties keep the lower
        bv = choice[i];
        bi = lane + 32 * i;
        bs = score[i];
      }
    }
  };
  lane_best();
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int k = 0; k < K; ++k) {
    // A round is two warp reductions (redux.sync) and one shuffle instead of five levels of
    // three shuffles: the largest choice, then the lowest expert id among the lanes holding it
    // (each lane's candidate is already its lowest id of that value).
    const std::uint32_t top = __reduce_max_sync(0xffffffffu, ordered_bits(bv));
    const int id = static_cast<int>(__reduce_min_sync(
        0xffffffffu, ordered_bits(bv) == top ? static_cast<std::uint32_t>(bi) : 0xffffffffu));
    const float s = __shfl_sync(0xffffffffu, bs, id & 31);
    // top_k <= selectable experts, so id is a real expert here.
    if ((id & 31) == lane) {
      taken |= 1u << (id >> 5);
      lane_best();
    }
    if (lane == k) {
      my_id = id;
      my_w = s;
    }
    wsum += s;
  }
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  return {my_id, my_w * p.scaling};
}

// One warp, more than 256 experts: the same selection (the same sums in the same order, so the
// same picks and weights) with the scores kept in the token's shared row, replaced in place, and
// the choices recomputed from them. The register variant's 64 values a lane made ptxas spill the
// decode kernels' tile loops, though this path runs only for such configs.
template <typename T>
__device__ Pick select_experts_wide(const KernelParams<T>& p, float* row, int E, int K) {
  const int lane = threadIdx.x & 31;  // lane l owns experts l, l + 32, ... of the row
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
  if (p.scoring == static_cast<int>(Scoring::Softmax)) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
      row[e] = expf(row[e] - mx);
      sum += row[e];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = 1.0f / sum;
    for (int e = lane; e < E; e += 32) row[e] *= inv;
  } else {
    for (int e = lane; e < E; e += 32) row[e] = 1.0f / (1.0f + expf(-row[e]));
  }
  std::uint32_t taken = 0;  // bit i: expert lane + 32 i (E <= 1024)
  float bv = -INFINITY, bs = 0.0f;
  int bi = 0x7fffffff;
  auto lane_best = [&]() {
    bv = -INFINITY;
    bi = 0x7fffffff;
    for (int i = 0, e = lane; e < E; ++i, e += 32) {
      float c = row[e];
      if (p.correction_bias != nullptr) c += __ldg(p.correction_bias + e);
      if (!(c >= -FLT_MAX)) c = -FLT_MAX;
      if (!((taken >> i) & 1u) && c > bv) {
        bv = c;
        bi = e;
        bs = row[e];
      }
    }
  };
  lane_best();
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int k = 0; k < K; ++k) {
    const std::uint32_t top = __reduce_max_sync(0xffffffffu, ordered_bits(bv));
    const int id = static_cast<int>(__reduce_min_sync(
        0xffffffffu, ordered_bits(bv) == top ? static_cast<std::uint32_t>(bi) : 0xffffffffu));
    const float s = __shfl_sync(0xffffffffu, bs, id & 31);
    if ((id & 31) == lane) {
      taken |= 1u << (id >> 5);
      lane_best();
    }
    if (lane == k) {
      my_id = id;
      my_w = s;
    }
    wsum += s;
  }
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  return {my_id, my_w * p.scaling};
}

// One warp: top-k of the tokens whose logits are rows[0] and rows[1] (the same row twice for
// one token).
template <typename T>
__device__ void select_experts(const KernelParams<T>& p, float* const (&rows)[2], int E, int K,
                               Pick (&picks)[2]) {
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    if (u == 1 && rows[1] == rows[0]) {
      picks[1] = picks[0];
    } else if (E <= 128) {
      picks[u] = select_experts_n<4>(p, rows[u], E, K);
    } else if (E <= 256) {
      picks[u] = select_experts_n<8>(p, rows[u], E, K);
    } else {
      picks[u] = select_experts_wide(p, rows[u], E, K);  // kMaxExperts = 1024
    }
  }
}

// Shared memory of one pass of a chunk's routing over `n` tokens: per-expert counts of the
// pass's picks (then each expert's first row for them), every pick's expert, weight and rank
// among the pass's picks of its expert, and the tokens' logits.
struct ChunkRoutingSmem {
  std::uint32_t* count;  // [E]
  int* id;               // [n * top_k]
  float* w;              // [n * top_k]
  std::uint32_t* rank;   // [n * top_k]
  float* logits;         // [n][E], unused with caller routing

  // Tokens a pass holds in `bytes` (at least one: routing_ticket.cuh checks the smallest kernel).
  __host__ __device__ static constexpr int tokens_per_pass(int bytes, int experts, int top_k) {
    return (bytes - experts * 4) / (experts * 4 + top_k * 12);
  }
  __device__ ChunkRoutingSmem(unsigned char* smem, int experts, int top_k, int n) {
    count = reinterpret_cast<std::uint32_t*>(smem);
    id = reinterpret_cast<int*>(count + experts);
    w = reinterpret_cast<float*>(id + n * top_k);
    rank = reinterpret_cast<std::uint32_t*>(w + n * top_k);
    logits = reinterpret_cast<float*>(rank + n * top_k);
  }
};

// Block: routing of tokens [t0, t_end), their top-k (or the caller's ids, checked), each pair
// given its row among its expert's rows. A pass stages its tokens' logits in shared memory and
// keeps the picks there; then one device-scope atomic per expert reserves the pass's rows, and
// the pairs are written together. So the chain is a few L2 round trips a pass, not two a token
// (the logits' load and the count atomic, each waited for before the next token: a 64-token
// chunk took about 33 us at T = 1024). The order of rows within an expert varies run to run
// (shared atomics); results do not: rows are computed independently and the combine sums by k.
template <int kSmemBytes, int kMaxKSlices, typename T>
__device__ void route_chunk(const KernelParams<T>& p, unsigned char* smem, int t0, int t_end) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int E = p.experts, K = p.top_k;
  const bool user_routing = p.user_ids != nullptr;
  const int per_pass = ChunkRoutingSmem::tokens_per_pass(kSmemBytes, E, K);
  for (int g0 = t0; g0 < t_end; g0 += per_pass) {
    const int n = min(per_pass, t_end - g0);
    const ChunkRoutingSmem s(smem, E, K, n);
    for (int e = threadIdx.x; e < E; e += kThreads) s.count[e] = 0;
    if (!user_routing) stage_logits<kMaxKSlices>(p, s.logits, g0, n, E);
    team_sync();
    // Two tokens a warp an iteration, one after the other: with one, ptxas serialised the
    // engine's wgmma for want of registers (C7511; register allocation is kernel-wide).
    for (int i = warp; i < n; i += 2 * kWarps) {
      const int token[2] = {i, i + kWarps < n ? i + kWarps : i};
      Pick pick[2] = {{-1, 0.0f}, {-1, 0.0f}};
      if (!user_routing) {
        float* const rows[2] = {s.logits + token[0] * E, s.logits + token[1] * E};
        select_experts(p, rows, E, K, pick);
      } else if (lane < K) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const std::int64_t pair = static_cast<std::int64_t>(g0 + token[u]) * K + lane;
          pick[u] = {__ldg(p.user_ids + pair), __ldg(p.user_weights + pair)};
        }
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (lane >= K || (u == 1 && token[1] == token[0])) continue;
        const bool valid = pick[u].id >= 0 && pick[u].id < E;
        if (!valid) {
          // Caller routing: an id out of range. Selected ids: unreachable (choices >= -FLT_MAX).
          p.ctl.fail(user_routing ? StatusCode::InvalidArgument : StatusCode::Internal,
                     kSiteRoutingIds);
        }
        const int slot = token[u] * K + lane;
        s.id[slot] = valid ? pick[u].id : -1;
        s.w[slot] = pick[u].w;
        s.rank[slot] = valid ? atomicAdd(&s.count[pick[u].id], 1u) : 0u;
      }
    }
    team_sync();
    // Every count's atomic is in flight before any result is waited for.
    constexpr int kBatch = 4;
    for (int first = threadIdx.x; first < E; first += kThreads * kBatch) {
      std::uint32_t first_row[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int e = first + b * kThreads;
        const std::uint32_t c = e < E ? s.count[e] : 0u;
        first_row[b] = c != 0 ? fetch_add_relaxed(&p.expert_count[e], c) : 0u;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (first + b * kThreads < E) s.count[first + b * kThreads] = first_row[b];
      }
    }
    team_sync();
    const std::int64_t pair0 = static_cast<std::int64_t>(g0) * K;
    for (int j = threadIdx.x; j < n * K; j += kThreads) {
      const int e = s.id[j];
      if (e < 0) continue;
      const float w = s.w[j];
      p.pair_expert[pair0 + j] = e;
      p.pair_weight[pair0 + j] = w;
      p.pair_pos[pair0 + j] = s.count[e] + s.rank[j];
      if (p.out_ids != nullptr) p.out_ids[pair0 + j] = e;
      if (p.out_weights != nullptr) p.out_weights[pair0 + j] = w;
    }
    team_sync();  // the next pass reuses the shared memory
  }
}

// Exclusive prefix sums over the team of kItems values per thread, in thread-major order (thread
// 0's values first), and their total. `warp_sums`: kThreads / 32 words of shared memory, free
// again only after the caller's next team_sync. Integer sums: the order of the additions does
// not change the result.
template <int kItems>
__device__ void team_exclusive_sum(const std::uint32_t (&in)[kItems], std::uint32_t (&out)[kItems],
                                   std::uint32_t& total, std::uint32_t* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  std::uint32_t mine = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) mine += in[i];
  std::uint32_t incl = mine;  // inclusive scan over the warp's lanes
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const std::uint32_t v = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += v;
  }
  if (lane == 31) warp_sums[warp] = incl;
  team_sync();
  std::uint32_t run = incl - mine;
  total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    const std::uint32_t sum = warp_sums[w];
    if (w < warp) run += sum;
    total += sum;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    out[i] = run;
    run += in[i];
  }
}

// Shared memory of the tile-table build.
struct ScanSmem {
  std::uint32_t count[1024], offset[1024], mtile_offset[1024];
};

// The last routing task to finish: prefix sums over experts, the m-tile table, the
// row -> pair map, then the task count is published (release), which starts the tiles.
template <typename T, int BM>
__device__ void build_tile_table(const KernelParams<T>& p, unsigned char* smem_raw, int live,
                                 std::uint32_t routing_tickets, std::uint32_t tasks_per_mtile) {
  constexpr int kItems = 1024 / kThreads;
  auto& s = *reinterpret_cast<ScanSmem*>(smem_raw);
  __shared__ std::uint32_t scan_warp_sums[kThreads / 32];
  __shared__ std::uint32_t s_mtiles;
  const int E = p.experts;

  std::uint32_t cnt[kItems], mt[kItems], off[kItems], moff[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    cnt[i] = e < E ? __ldcg(reinterpret_cast<const unsigned*>(p.expert_count + e)) : 0u;
    mt[i] = (cnt[i] + BM - 1) / BM;
  }
  std::uint32_t total_pairs = 0, total_mtiles = 0;
  team_exclusive_sum(cnt, off, total_pairs, scan_warp_sums);
  team_sync();
  team_exclusive_sum(mt, moff, total_mtiles, scan_warp_sums);
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
  team_sync();

  for (int e = threadIdx.x; e < E; e += kThreads) {
    const uint4 info =
        MTileInfo{static_cast<std::uint32_t>(e), s.mtile_offset[e], s.offset[e], s.count[e]}.bits();
    for (std::uint32_t j = 0; j * BM < s.count[e]; ++j) {
      p.mtile_info[s.mtile_offset[e] + j] = info;
      p.mtile_done[s.mtile_offset[e] + j] = 0;
    }
  }
  // Four pairs a thread with their loads issued before any store: the compiler must assume a
  // store to sorted_pair may alias the next pair's loads, which made the loop a chain of L2
  // round trips (8192 pairs at T = 1024: 32 a thread).
  const std::int64_t pairs = static_cast<std::int64_t>(live) * p.top_k;
  constexpr int kBatch = 4;
  for (std::int64_t first = threadIdx.x; first < pairs; first += kThreads * kBatch) {
    int e[kBatch];
    std::uint32_t pos[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const std::int64_t q = first + b * kThreads;
      e[b] = q < pairs ? __ldcg(p.pair_expert + q) : -1;
      pos[b] = q < pairs ? __ldcg(reinterpret_cast<const unsigned*>(p.pair_pos + q)) : 0u;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (e[b] >= 0) {
        p.sorted_pair[s.offset[e[b]] + pos[b]] = static_cast<std::int32_t>(first + b * kThreads);
      }
    }
  }
  team_sync();
  if (threadIdx.x == 0) {
    const std::uint32_t m = s_mtiles;
    store_release(p.ctl.word(kTasksTotal), routing_tickets + m * tasks_per_mtile);
  }
}

}  // namespace flashmoe::detail
