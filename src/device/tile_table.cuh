// The tile table: what the routing phase publishes for the expert tiles, one record per m-tile
// (an m-tile is up to BM rows of one expert), and how a tile ticket finds its m-tile in it.
#pragma once

#include <cstdint>

#include "params.cuh"

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

}  // namespace flashmoe::detail
