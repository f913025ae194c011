// Order of the warp-specialised engine's expert-tile tickets (after routing and the gathers), in
// m-tile positions of the tile table: the gate/up tiles of the first `lead` positions; then, for
// each position u, the gate/up tiles of position lead + u followed by the down tiles of position
// u; then the down tiles left. A phase index (gate/up or down) becomes an m-tile and a column tile
// in locate_tile (tile_table.cuh). lead >= the launch's m-tiles: all gate/up tiles, then all
// down tiles. With a smaller lead the down tiles stream beside later gate/up tiles instead of in
// a phase of their own at the end (bench/NOTES.md, session 20).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "workspace.hpp"

namespace flashmoe::detail {

// The lead that keeps the gate/up tiles first (the order before session 20).
inline constexpr std::uint32_t kAllGateUpFirst = 0xffffffffu;

struct WsTileSlot {
  bool gateup;
  std::uint32_t index;  // within its phase
};

// Expert-tile ticket `task` (0 = the first after the gathers) of a launch with `mtiles` m-tiles,
// `ng` gate/up tiles and `ndk` down tiles (column tiles x K slices) per m-tile.
FLASHMOE_HOST_DEVICE inline WsTileSlot ws_tile_at(std::uint32_t task, std::uint32_t mtiles,
                                                  std::uint32_t ng, std::uint32_t ndk,
                                                  std::uint32_t lead) {
  const std::uint32_t gateup_tiles = mtiles * ng;
  if (lead >= mtiles) {
    return task < gateup_tiles ? WsTileSlot{true, task} : WsTileSlot{false, task - gateup_tiles};
  }
  const std::uint32_t head = lead * ng;
  if (task < head) return {true, task};
  task -= head;
  const std::uint32_t unit = ng + ndk, mixed = (mtiles - lead) * unit;
  if (task < mixed) {
    const std::uint32_t u = task / unit, w = task - u * unit;
    return w < ng ? WsTileSlot{true, (lead + u) * ng + w} : WsTileSlot{false, u * ndk + (w - ng)};
  }
  return {false, (mtiles - lead) * ndk + (task - mixed)};
}

// The lead of a launch: `waves` waves of `grid` blocks' gate/up tiles (0: kAllGateUpFirst),
// raised so that every down tile still comes after the gate/up tiles it waits for, which is
// what keeps the engine free of deadlock (a job waits only on smaller tickets). An expert's
// gate/up tiles interleave its m-tiles (locate_tile), so its down tiles may wait for any of them:
// with c m-tiles an expert is safe with lead >= c - 1. Routed, a token picks an expert at most
// once, so c <= ceil(tokens / tile_m); caller routing may repeat an expert within a token, so there
// the gate/up tiles stay first.
// `grid` is the full grid, so that max_blocks leaves the order as it is.
inline std::uint32_t ws_down_lead(double waves, std::int64_t grid, int ng, std::int64_t tokens,
                                  int tile_m, bool caller_routing) {
  if (!(waves > 0.0) || caller_routing || ng <= 0 || grid <= 0) return kAllGateUpFirst;
  const double positions = std::ceil(waves * static_cast<double>(grid) / ng);
  if (!(positions < 4.0e9)) return kAllGateUpFirst;  // beyond any launch's m-tiles
  const auto wanted = static_cast<std::int64_t>(positions);
  const std::int64_t safe = std::max<std::int64_t>(0, (tokens + tile_m - 1) / tile_m - 1);
  const std::int64_t lead = std::max(wanted, safe);
  return lead >= kAllGateUpFirst ? kAllGateUpFirst : static_cast<std::uint32_t>(lead);
}

}  // namespace flashmoe::detail
