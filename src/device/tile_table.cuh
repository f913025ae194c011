// The tile table: what the routing phase publishes for the expert tiles, one record per m-tile
// (an m-tile is up to BM rows of one expert), and how a tile ticket finds its m-tile in it; and
// the launches that need no table, where each block finds its m-tiles from the pairs.
#pragma once

#include <cstdint>

#include "params.cuh"
#include "validate.hpp"

namespace flashmoe::detail {

// A tile's m-tile: its slot in the tile table, its expert, and its rows (rows are grouped by
// expert: [row0, row0 + rows) of sorted_pair and h).
struct MTile {
  std::uint32_t slot, expert, row0, rows;
};

// What the tile table holds for every m-tile of an expert: one 16-byte record, so that a tile
// finds its m-tile with one load (the expert's m-tiles are consecutive slots). A decode launch
// of one live token writes one record per pair instead (k: slot k, row k, one row), so a
// repeated caller-chosen expert is two records of one m-tile each (routing.cuh, register_pair).
struct MTileInfo {
  std::uint32_t expert, first_slot, first_row, rows;  // rows: all of the expert's
  __device__ static MTileInfo from(uint4 v) { return {v.x, v.y, v.z, v.w}; }
  __device__ uint4 bits() const { return make_uint4(expert, first_slot, first_row, rows); }
};

// Tile i of a phase with `ntiles` tiles per m-tile, as (m-tile, tile within it). An expert's
// tiles are contiguous and column-major over its m-tiles, so the m-tiles of one expert read
// the same weight tile back to back and the later reads hit L2.
template <int BM, typename T>
__device__ MTile locate_tile(const KernelParams<T>& p, std::uint32_t i, int ntiles, int& ntile) {
  // Written by the tile-table build of this launch: read through L2, after the acquire. Any
  // m-tile of the right expert has its record.
  const MTileInfo info = MTileInfo::from(__ldcg(p.mtile_info + i / ntiles));
  const std::uint32_t count = (info.rows + BM - 1) / BM;
  const std::uint32_t local = i - info.first_slot * ntiles;
  const std::uint32_t j = local % count;
  ntile = static_cast<int>(local / count);
  return {info.first_slot + j, info.expert, info.first_row + j * BM,
          min(static_cast<std::uint32_t>(BM), info.rows - j * BM)};
}

// A table-free launch (table_free_tiles, workspace.hpp): 2 to BM live tokens, each with K
// distinct experts, so every live expert is one m-tile of at most BM rows. Instead of one block
// building the table and releasing it (a scan, the records and a round trip on the critical
// path), every block loads the pairs' experts once, after the routing count, and finds a
// ticket's expert and rows in its own shared memory. The m-tiles and their rows are the table's:
// live experts ascending, rows in pair order from the count of pairs of smaller experts.
struct LiveExperts {
  static constexpr int kWords = kMaxExperts / 32;
  std::uint32_t mask[kWords];   // live experts
  std::uint32_t below[kWords];  // live experts in the words below
  std::uint16_t expert[kTableFreeMaxPairs];  // pair q's expert
  std::int32_t pairs[kMaxTileM];             // the located m-tile's pairs, in order
  MTile tile;
  std::uint32_t count;  // live experts: the launch's m-tiles
};
struct NoLiveExperts {};

// The block, once per launch: the experts of the `pairs` pairs, written by the selects of this
// launch (ordered by thread 0's acquire of their count and the barrier after it: read through
// L2). Ends with a barrier; `le.count` is the launch's m-tile count.
template <typename T>
__device__ void load_live_experts(const KernelParams<T>& p, LiveExperts& le, int pairs) {
  const int lane = threadIdx.x & 31;
  if (threadIdx.x < LiveExperts::kWords) le.mask[threadIdx.x] = 0;
  __syncthreads();
  if (threadIdx.x < pairs) {
    const int e = __ldcg(p.pair_expert + threadIdx.x);
    // A select that failed (the launch is then abandoned) may leave any value: one out of range
    // is kept off the mask, whose words it would otherwise index (a stale one in range may
    // repeat an expert: locate_live_tile bounds the rows it writes).
    if (e >= 0 && e < p.experts) {
      le.expert[threadIdx.x] = static_cast<std::uint16_t>(e);
      atomicOr(&le.mask[e >> 5], 1u << (e & 31));
    } else {
      le.expert[threadIdx.x] = 0xffff;
    }
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const std::uint32_t mine = __popc(le.mask[lane]);
    std::uint32_t incl = mine;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const std::uint32_t v = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += v;
    }
    le.below[lane] = incl - mine;
    if (lane == 31) le.count = incl;
  }
  __syncthreads();
}

// The block: m-tile m (< le.count) of a table-free launch, its pairs left in `le.pairs`; warp 0
// finds it (the m-th live expert, then one ballot per 32 pairs). Ends with a barrier.
__device__ inline MTile locate_live_tile(LiveExperts& le, std::uint32_t m, int pairs) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const std::uint32_t word = le.mask[lane], below = le.below[lane];
    const unsigned hit =
        __ballot_sync(0xffffffffu, below <= m && m < below + __popc(word));
    const int w = __ffs(hit) - 1;  // m < count: one word holds it
    const std::uint32_t wbelow = __shfl_sync(0xffffffffu, below, w);
    const std::uint32_t wword = __shfl_sync(0xffffffffu, word, w);
    const int e = 32 * w + static_cast<int>(__fns(wword, 0, static_cast<int>(m - wbelow) + 1));
    std::uint32_t row0 = 0, rows = 0;
    for (int base = 0; base < pairs; base += 32) {
      const int q = base + lane;
      const int id = q < pairs ? le.expert[q] : 0xffff;
      const unsigned same = __ballot_sync(0xffffffffu, id == e);
      row0 += __popc(__ballot_sync(0xffffffffu, id < e));
      const std::uint32_t row = rows + __popc(same & ((1u << lane) - 1u));
      // A token has each expert once, so an m-tile never holds more than live <= BM rows; only
      // a launch already abandoned (a select that failed) could repeat an expert: keep it inside.
      if (id == e && row < kMaxTileM) le.pairs[row] = q;
      rows += __popc(same);
    }
    if (lane == 0) le.tile = {m, static_cast<std::uint32_t>(e), row0, rows};
  }
  __syncthreads();
  return le.tile;
}

}  // namespace flashmoe::detail
