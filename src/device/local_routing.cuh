// Block-local routing for launches of a few tokens (decode, at most kLocalRoutingMaxPairs
// (token, k) pairs): the router tasks publish the logits with one counter, and then every block
// takes the top-k of all the launch's tokens itself and keeps the expert-sorted rows and the
// m-tiles in shared memory. The published path (routing_ticket.cuh) hands the routing from the
// router tasks to one block's top-k and from there to one block's tile table, two device-scope
// round trips more before any expert weight is requested (issue 21's routing prelude). m-tiles
// are the thin kernels' 16 rows: one an expert for the router's routing of at most 16 tokens,
// more where a caller's routing repeats an expert within a token.
#pragma once

#include <cstdint>

#include "params.cuh"
#include "routing.cuh"
#include "sync.cuh"
#include "tile_table.cuh"
#include "trace.cuh"

namespace flashmoe::detail {

// What a block keeps of the launch's routing for its tiles.
inline constexpr int kLocalTileM = kThinDecodeTileM;

struct LocalRouting {
  // m-tile j (ascending expert, then row): its expert (bits 0-15), first row (16-23) and rows
  // (24-31).
  std::uint32_t mtile[kLocalRoutingMaxPairs];
  float weight[kLocalRoutingMaxPairs];       // pair t*K+k -> its routing weight
  std::uint8_t pair[kLocalRoutingMaxPairs];  // row (grouped by expert) -> pair
};
static_assert(kLocalRoutingMaxPairs <= 256, "pairs and rows fit a byte");

// The block's LocalRouting: one per kernel that uses it.
__device__ __forceinline__ LocalRouting& local_routing() {
  __shared__ LocalRouting lr;
  return lr;
}

// The tiles' view of a row of the local table (PublishedRows' counterpart).
struct LocalRows {
  template <typename T>
  __device__ int pair(const KernelParams<T>&, std::uint32_t row) const {
    return local_routing().pair[row];
  }
  template <typename T>
  __device__ float weight(const KernelParams<T>&, int pair) const {
    return local_routing().weight[pair];
  }
};

// Tile i of a phase with `ntiles` tiles per m-tile (locate_tile's counterpart, m-tile major).
__device__ __forceinline__ MTile locate_local_tile(std::uint32_t i, int ntiles, int& ntile) {
  const std::uint32_t slot = i / static_cast<std::uint32_t>(ntiles);
  const std::uint32_t m = local_routing().mtile[slot];
  ntile = static_cast<int>(i % static_cast<std::uint32_t>(ntiles));
  return {slot, m & 0xffffu, (m >> 16) & 0xffu, m >> 24};
}

// One warp: token t's choices (lane k < top_k: its k-th expert and weight), for any E.
template <typename T>
__device__ __forceinline__ void top_k_of(const KernelParams<T>& p, int t, int& id, float& w) {
  if (p.experts <= 128) {
    top_k_choices<4>(p, t, id, w);
  } else if (p.experts <= 256) {
    top_k_choices<8>(p, t, id, w);
  } else {
    top_k_choices<32>(p, t, id, w);  // kMaxExperts = 1024
  }
}

// Every thread of the block, on its first tile ticket once the router tasks are all counted:
// the routing of the `live` tokens into local_routing(), and the m-tile count into `mtiles`
// (shared). `key`: 2 * kLocalRoutingMaxPairs 16-bit words of shared memory free until the
// block's first tile requests weights. `publish`: this block writes the routing outputs
// (out_ids / out_weights; one block does). Every block computes the same routing, so a caller's
// id out of range is found by all of them: false for every block (reported; the launch fails
// with nothing written).
template <typename T>
__device__ bool route_locally(const KernelParams<T>& p, std::uint16_t* key, int live, bool publish,
                              std::uint32_t& mtiles, Tracer& tr) {
  LocalRouting& lr = local_routing();
  const std::uint64_t start = tr.now();
  const int lane = threadIdx.x & 31, K = p.top_k, pairs = live * K;
  std::uint16_t* head = key + kLocalRoutingMaxPairs;
  bool bad = false;
  for (int t = threadIdx.x >> 5; t < live; t += kThreads / 32) {
    int e = 0;
    float w = 0.0f;
    if (p.user_ids != nullptr) {
      if (lane < K) {
        e = __ldg(p.user_ids + t * K + lane);
        w = __ldg(p.user_weights + t * K + lane);
      }
    } else {
      top_k_of(p, t, e, w);  // the logits: published by the router tasks (acquired)
    }
    if (lane < K) {
      if (e < 0 || e >= p.experts) {
        bad = true;
        e = 0;  // keeps the table in range; nothing runs from it
      }
      const int q = t * K + lane;
      key[q] = static_cast<std::uint16_t>(e);
      lr.weight[q] = w;
      if (publish && p.out_ids != nullptr) p.out_ids[q] = e;
      if (publish && p.out_weights != nullptr) p.out_weights[q] = w;
    }
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) {
      p.ctl.fail(p.user_ids != nullptr ? StatusCode::InvalidArgument : StatusCode::Internal,
                 kSiteRoutingIds);
    }
    return false;
  }
  // Rows in (expert, pair) order: a pair's row is the number of pairs before it in that order,
  // and every kLocalTileM-th row of an expert, from its first, starts an m-tile. One pair a
  // thread (pairs <= kThreads).
  static_assert(kLocalRoutingMaxPairs <= kThreads, "one pair a thread");
  const int q = threadIdx.x;
  int e = 0, below = 0, same = 0, same_before = 0;
  if (q < pairs) {
    e = key[q];
    for (int j = 0; j < pairs; ++j) {
      const int f = key[j];
      below += f < e;
      same += f == e;
      same_before += (f == e) & (j < q);
    }
    lr.pair[below + same_before] = static_cast<std::uint8_t>(q);
    head[q] = same_before % kLocalTileM == 0 ? static_cast<std::uint16_t>(e) : 0xffffu;
  }
  const bool heads_mtile = q < pairs && same_before % kLocalTileM == 0;
  const int heads = __syncthreads_count(heads_mtile);
  if (heads_mtile) {
    int slot = same_before / kLocalTileM;                 // + the m-tiles of lower experts
    for (int j = 0; j < pairs; ++j) slot += head[j] < e;  // 0xffff: not a head, never below
    const int rows = min(kLocalTileM, same - same_before);
    lr.mtile[slot] = static_cast<std::uint32_t>(e) |
                     static_cast<std::uint32_t>(below + same_before) << 16 |
                     static_cast<std::uint32_t>(rows) << 24;
  }
  if (threadIdx.x == 0) mtiles = static_cast<std::uint32_t>(heads);
  __syncthreads();
  tr.record(TraceKind::Routing, start, -1, -1);
  return true;
}

// Local-routing kernels' routing ticket: a router task (none with the caller's routing), ticket
// 0 also zeroing the counters the tiles use (the scratch is shared with other Layers' forwards),
// and every routing ticket counted, which is what the tiles wait for.
template <typename T>
__device__ void run_local_routing_ticket(const KernelParams<T>& p, unsigned char* smem,
                                         std::uint32_t ticket, int nd, int live, Tracer& tr) {
  const RouterSplit rs = p.rsplit;
  if (ticket == 0) {
    for (int i = threadIdx.x; i < live * nd; i += kThreads) {
      p.combine_done[(i / nd) * p.combine_stride + i % nd] = 0;
    }
    const int pairs = live * p.top_k;
    const int mtiles = min(pairs, static_cast<int>(mtile_bound(pairs, p.experts, kLocalTileM)));
    for (int i = threadIdx.x; i < mtiles; i += kThreads) p.mtile_done[i] = 0;
  }
  const int per_chunk = rs.eslices * rs.kslices;
  const int chunk = static_cast<int>(ticket) / per_chunk;
  if (p.user_ids == nullptr && chunk * rs.chunk_tokens < live) {
    const std::uint64_t start = tr.now();
    router_logits(p, reinterpret_cast<float*>(smem), chunk * rs.chunk_tokens, live,
                  (static_cast<int>(ticket) % per_chunk) * kRouterExperts);
    tr.record(TraceKind::Router, start, -1, static_cast<int>(ticket));
  }
  team_sync();  // the task's logits and zeros are written before it is counted
  if (threadIdx.x == 0) add_release(p.ctl.word(kRoutingDone), 1);
}

}  // namespace flashmoe::detail
