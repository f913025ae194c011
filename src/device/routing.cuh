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

// Block: the logits of tokens [t0, t_end) = their router partials summed in K-slice order
// (the same sum on every run), left in slice 0. Separate from the top-k so that neither keeps
// the other's registers live. The partials were written by other blocks this launch (ordered
// by the caller's acquire): read through L2.
template <typename T>
__device__ void sum_router_partials(const KernelParams<T>& p, int t0, int t_end) {
  const int ks = p.rsplit.kslices;
  if (ks == 1) return;
  const std::int64_t stride = static_cast<std::int64_t>(p.num_tokens) * p.experts;
  float* base = p.logits + static_cast<std::int64_t>(t0) * p.experts;
  const int n = (t_end - t0) * p.experts;
  // Four logits a thread at a time, all their slices' loads issued first: the step is a chain
  // of L2 round trips (a 64-token chunk of 128 experts took 32 of them one logit at a time, about
  // 25 us of the chunk's top-k at T = 1024, trace of the warp-specialised kernel).
  constexpr int kBatch = 4;
  for (int first = threadIdx.x; first < n; first += kThreads * kBatch) {
    float v[kBatch][kRouterMaxKSlices];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * kThreads;
#pragma unroll
      for (int s = 0; s < kRouterMaxKSlices; ++s)
        v[b][s] = s < ks && i < n ? __ldcg(base + s * stride + i) : 0.0f;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * kThreads;
      float sum = v[b][0];
#pragma unroll
      for (int s = 1; s < kRouterMaxKSlices; ++s) sum += v[b][s];
      if (i < n) base[i] = sum;
    }
  }
}

// How a registered pair gets its row among its expert's rows.
enum class PairRow {
  Counted,   // from the expert's counter (pair_pos), for the row map
  OwnMTile,  // one live token: the pair is m-tile k of one row, its table record written here
  ByTable,   // the decode tile table's builder counts the pairs itself (table_counts_pairs)
};

// The decode launches whose tile table counts the pairs in the builder's shared memory: one
// pair a thread, so the selects need no counter atomic and the row map no loads of pair_pos.
__device__ __forceinline__ bool table_counts_pairs(int live, int top_k) {
  return live > 1 && live * top_k <= kThreads;
}
// Table-free launches (table_free_tiles) rely on it: their selects must not count into
// expert_count, which their gate/up tiles count into instead.
static_assert(kTableFreeMaxPairs == kThreads, "table-free launches register their pairs uncounted");

// Registers pair (t, k) -> expert e with weight w. Its row among e's rows comes from a
// counter, the expert's or the table builder's (order varies run to run, results do not: rows
// are computed independently and the combine sums by k). PairRow::OwnMTile (t = 0) writes the
// pair's table record here, so neither the counter nor the table's scans are needed.
template <typename T>
__device__ void register_pair(const KernelParams<T>& p, int t, int k, int e, float w,
                              PairRow row) {
  const std::int64_t pair = static_cast<std::int64_t>(t) * p.top_k + k;
  p.pair_expert[pair] = e;
  p.pair_weight[pair] = w;
  if (row == PairRow::OwnMTile) {
    const std::uint32_t slot = static_cast<std::uint32_t>(k);
    p.mtile_info[slot] = MTileInfo{static_cast<std::uint32_t>(e), slot, slot, 1}.bits();
    p.mtile_done[slot] = 0;
    p.sorted_pair[slot] = k;
  } else if (row == PairRow::Counted) {
    p.pair_pos[pair] = fetch_add_relaxed(&p.expert_count[e], 1);
  }
  if (p.out_ids != nullptr) p.out_ids[pair] = e;
  if (p.out_weights != nullptr) p.out_weights[pair] = w;
}

// Float -> uint32 with the same order (no NaN here: choices are finite or -inf; + 0.0f makes
// -0 equal to +0, as the float comparison has it).
__device__ __forceinline__ std::uint32_t ordered_bits(float v) {
  const std::uint32_t u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
}

// One warp: top-k of token t from its logits (see flashmoe::Routing for the rules). Lane l
// holds experts l, l + 32, ...; PER_LANE = ceil(E / 32) rounded up to a power of two, so the
// arrays stay in registers (only compile-time indices), and taken experts are a bit mask.
template <int PER_LANE, typename T>
__device__ void select_experts_n(const KernelParams<T>& p, int t, PairRow pair_row) {
  const int lane = threadIdx.x & 31;
  const int E = p.experts;
  // sum_router_partials left the logits in K slice 0; written by other blocks this launch.
  const float* row = p.logits + static_cast<std::int64_t>(t) * E;
  float score[PER_LANE], choice[PER_LANE];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int e = lane + 32 * i;
    score[i] = e < E ? __ldcg(row + e) : -INFINITY;
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
  for (int k = 0; k < p.top_k; ++k) {
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
  my_w *= p.scaling;
  if (lane < p.top_k) {
    if (my_id < E) {
      register_pair(p, t, lane, my_id, my_w, pair_row);
    } else {
      p.ctl.fail(StatusCode::Internal, kSiteRoutingIds);  // unreachable: choices are >= -FLT_MAX
    }
  }
}

template <typename T>
__device__ void select_experts(const KernelParams<T>& p, int t, PairRow row) {
  if (p.experts <= 128) {
    select_experts_n<4>(p, t, row);
  } else if (p.experts <= 256) {
    select_experts_n<8>(p, t, row);
  } else {
    select_experts_n<32>(p, t, row);  // kMaxExperts = 1024
  }
}

// One warp: caller-supplied routing of token t, with its ids checked.
template <typename T>
__device__ void take_user_routing(const KernelParams<T>& p, int t, PairRow row) {
  const int lane = threadIdx.x & 31;
  if (lane >= p.top_k) return;
  const std::int64_t pair = static_cast<std::int64_t>(t) * p.top_k + lane;
  const int e = __ldg(p.user_ids + pair);
  if (e < 0 || e >= p.experts) {
    p.ctl.fail(StatusCode::InvalidArgument, kSiteRoutingIds);
    return;
  }
  register_pair(p, t, lane, e, __ldg(p.user_weights + pair), row);
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

// The team: s.offset[e] = each expert's first sorted row (the exclusive sum of the expert
// counts, final once every selection is counted; written by other blocks this launch: through
// L2). The same sum as the tile table's, so a row-map ticket needs no table to place its pairs.
template <typename T>
__device__ void expert_row_offsets(const KernelParams<T>& p, ScanSmem& s) {
  constexpr int kItems = 1024 / kThreads;
  const int E = p.experts;
  std::uint32_t cnt[kItems], off[kItems], total = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    cnt[i] = e < E ? __ldcg(reinterpret_cast<const unsigned*>(p.expert_count + e)) : 0u;
  }
  team_exclusive_sum(cnt, off, total, s.count);  // s.count: the warps' sums
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    if (e < E) s.offset[e] = off[i];
  }
}

// The team: sorted_pair[row0[e] + pos] = q for the pairs q in [q0, q1) (expert e, position pos
// among e's rows). Four consecutive pairs a 16-byte load (the pair arrays start 256-byte
// aligned), kMapBatch loads of each array in flight: one L2 round trip per 4 * kMapBatch *
// kThreads pairs (one pair a thread at a time, 8192 pairs took 9 us at T = 1024).
template <typename T>
__device__ void write_row_map(const KernelParams<T>& p, const std::uint32_t* row0, std::int64_t q0,
                              std::int64_t q1) {
  constexpr int kMapBatch = 4;
  const std::int64_t quad0 = (q0 + 3) / 4, quad1 = q1 / 4;
  auto one = [&](std::int64_t q) {
    const int e = __ldcg(p.pair_expert + q);
    p.sorted_pair[row0[e] + __ldcg(reinterpret_cast<const unsigned*>(p.pair_pos + q))] =
        static_cast<std::int32_t>(q);
  };
  if (quad0 >= quad1) {
    for (std::int64_t q = q0 + threadIdx.x; q < q1; q += kThreads) one(q);
    return;
  }
  const int4* expert4 = reinterpret_cast<const int4*>(p.pair_expert);
  const uint4* pos4 = reinterpret_cast<const uint4*>(p.pair_pos);
  for (std::int64_t first = quad0 + threadIdx.x; first < quad1; first += kThreads * kMapBatch) {
    int4 e[kMapBatch];
    uint4 pos[kMapBatch];
#pragma unroll
    for (int b = 0; b < kMapBatch; ++b) {
      const std::int64_t q = first + b * kThreads;
      e[b] = q < quad1 ? __ldcg(expert4 + q) : make_int4(0, 0, 0, 0);
      pos[b] = q < quad1 ? __ldcg(pos4 + q) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int b = 0; b < kMapBatch; ++b) {
      const std::int64_t q = first + b * kThreads;
      if (q < quad1) {
        const std::int32_t pair = static_cast<std::int32_t>(4 * q);
        p.sorted_pair[row0[e[b].x] + pos[b].x] = pair;
        p.sorted_pair[row0[e[b].y] + pos[b].y] = pair + 1;
        p.sorted_pair[row0[e[b].z] + pos[b].z] = pair + 2;
        p.sorted_pair[row0[e[b].w] + pos[b].w] = pair + 3;
      }
    }
  }
  // The unaligned ends: below the first whole quad and past the last.
  if (threadIdx.x < 4 * quad0 - q0) one(q0 + threadIdx.x);
  if (threadIdx.x < q1 - 4 * quad1) one(4 * quad1 + threadIdx.x);
}

// The last routing task to finish: prefix sums over experts, the m-tile table, the row -> pair
// map (kRowMap; else each expert's first row, for the prefill kernels' row-map tickets), then
// the task count is published (release), which starts the tiles.
template <typename T, int BM, bool kRowMap>
__device__ void build_tile_table(const KernelParams<T>& p, unsigned char* smem_raw, int live,
                                 std::uint32_t routing_tickets, std::uint32_t tasks_per_mtile) {
  constexpr int kItems = 1024 / kThreads;
  auto& s = *reinterpret_cast<ScanSmem*>(smem_raw);
  __shared__ std::uint32_t scan_warp_sums[kThreads / 32];
  __shared__ std::uint32_t s_mtiles;
  const int E = p.experts;

  // Decode launches of up to one pair a thread (table_counts_pairs): the pairs are counted
  // here, in shared memory, and each thread keeps its pair's expert and position for the row
  // map; the selects registered them uncounted.
  const bool count_here = kRowMap && table_counts_pairs(live, p.top_k);
  int my_expert = -1;
  std::uint32_t my_pos = 0;
  if (count_here) {
    for (int e = threadIdx.x; e < E; e += kThreads) s.count[e] = 0;
    // Written by the selects of this launch (other blocks too): through L2, after the acquire.
    if (threadIdx.x < live * p.top_k) my_expert = __ldcg(p.pair_expert + threadIdx.x);
    team_sync();
    if (my_expert >= 0) my_pos = atomicAdd(&s.count[my_expert], 1u);
    team_sync();
  }
  std::uint32_t cnt[kItems], mt[kItems], off[kItems], moff[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = threadIdx.x * kItems + i;
    if (count_here) {
      cnt[i] = e < E ? s.count[e] : 0u;
    } else {
      cnt[i] = e < E ? __ldcg(reinterpret_cast<const unsigned*>(p.expert_count + e)) : 0u;
    }
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
    if constexpr (!kRowMap) p.expert_row0[e] = s.offset[e];
  }
  if (count_here) {
    if (my_expert >= 0) {
      p.sorted_pair[s.offset[my_expert] + my_pos] = static_cast<std::int32_t>(threadIdx.x);
    }
  } else if constexpr (kRowMap) {
    // The decode kernels' row map, here and in this form: four consecutive pairs a 16-byte load
    // (the pair arrays start 256-byte aligned), kMapBatch loads of each array in flight. Not
    // write_row_map: called here, it adds 8-12 bytes of spills to the untraced decode kernels.
    constexpr int kMapBatch = 4;
    const std::int64_t pairs = static_cast<std::int64_t>(live) * p.top_k, quads = pairs / 4;
    const int4* expert4 = reinterpret_cast<const int4*>(p.pair_expert);
    const uint4* pos4 = reinterpret_cast<const uint4*>(p.pair_pos);
    for (std::int64_t first = threadIdx.x; first < quads; first += kThreads * kMapBatch) {
      int4 e[kMapBatch];
      uint4 pos[kMapBatch];
#pragma unroll
      for (int b = 0; b < kMapBatch; ++b) {
        const std::int64_t q = first + b * kThreads;
        e[b] = q < quads ? __ldcg(expert4 + q) : make_int4(0, 0, 0, 0);
        pos[b] = q < quads ? __ldcg(pos4 + q) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int b = 0; b < kMapBatch; ++b) {
        const std::int64_t q = first + b * kThreads;
        if (q < quads) {
          const std::int32_t pair = static_cast<std::int32_t>(4 * q);
          p.sorted_pair[s.offset[e[b].x] + pos[b].x] = pair;
          p.sorted_pair[s.offset[e[b].y] + pos[b].y] = pair + 1;
          p.sorted_pair[s.offset[e[b].z] + pos[b].z] = pair + 2;
          p.sorted_pair[s.offset[e[b].w] + pos[b].w] = pair + 3;
        }
      }
    }
    for (std::int64_t q = 4 * quads + threadIdx.x; q < pairs; q += kThreads) {
      const int e = __ldcg(p.pair_expert + q);
      p.sorted_pair[s.offset[e] + __ldcg(reinterpret_cast<const unsigned*>(p.pair_pos + q))] =
          static_cast<std::int32_t>(q);
    }
  }
  team_sync();
  if (threadIdx.x == 0) {
    const std::uint32_t m = s_mtiles;
    store_release(p.ctl.word(kTasksTotal), routing_tickets + m * tasks_per_mtile);
  }
}

}  // namespace flashmoe::detail
