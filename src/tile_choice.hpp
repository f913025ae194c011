// Which decode kernel (pair of tile shapes) a forward runs. Host-only and free of CUDA, so the
// rule is tested on the CPU (tests/test_tile_choice.cpp).
#pragma once

#include <cstdint>

#include "workspace.hpp"

namespace flashmoe::detail {

// Column widths of the decode variant's wider tile shapes (the narrow ones are what is left).
struct DecodeWidths {
  int tile_m;       // rows of an m-tile
  int gateup_wide;  // columns of the wide gate/up tile
  int down_mid, down_wide;
};

// Index of the decode kernel (the order of Layer::Impl::decode):
//   0: narrow gate/up + narrow down, 1: narrow gate/up + mid down,
//   2: narrow gate/up + wide down,   3: wide gate/up + wide down.
// Down tiles as wide as still give most blocks of a full grid (`slots`) a tile (0.7 per block);
// with the widest down tiles, wide gate/up tiles too when they also number 0.7 per block. Tying
// the two matters: with Mixtral at T = 1, wide gate/up tiles paired with 128-column down tiles
// (64 of them) measured 40% slower. The m-tiles are counted on the device after routing; the
// host uses their bound (one per touched expert, at most T*K of them, plus overflow), which is
// exact at T = 1. `slots` is a full grid, not the launch's: a max_blocks limit must not change
// results (the shapes sum K in different steps).
inline int choose_decode_kernel(std::int64_t num_tokens, int hidden, int intermediate, int experts,
                                int top_k, std::int64_t slots, const DecodeWidths& w) {
  const std::int64_t mtiles = mtile_bound(num_tokens * top_k, experts, w.tile_m);
  auto enough = [&](int n, int bn) { return 10 * mtiles * ((n + bn - 1) / bn) >= 7 * slots; };
  if (enough(hidden, w.down_wide)) return enough(intermediate, w.gateup_wide) ? 3 : 2;
  return enough(hidden, w.down_mid) ? 1 : 0;
}

}  // namespace flashmoe::detail
