// Which decode kernel (pair of tile shapes) a forward runs. Host-only and free of CUDA, so the
// rule is tested on the CPU (tests/test_tile_choice.cpp).
#pragma once

#include <algorithm>
#include <cmath>
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

// Expected m-tiles of tile_m rows when each of T tokens picks top_k of E experts uniformly:
// an expert's rows n ~ Binomial(T, K/E), and E[ceil(n / tile_m)] = sum over j >= 0 of
// P(n > j tile_m).
inline double expected_mtiles(std::int64_t num_tokens, int top_k, int experts, int tile_m) {
  const double q = static_cast<double>(top_k) / experts;
  if (q >= 1.0) return static_cast<double>(experts) * ((num_tokens + tile_m - 1) / tile_m);
  // The pmf in log space: P(n = 0) = (1 - q)^T underflows a double from T of a few thousand.
  const double odds = std::log(q / (1.0 - q));
  double log_pmf = static_cast<double>(num_tokens) * std::log1p(-q);
  double cdf = 0.0, per_expert = 0.0;
  for (std::int64_t n = 0; n < num_tokens && cdf < 1.0 - 1e-12; ++n) {  // the tail is empty
    cdf += std::exp(log_pmf);
    if (n % tile_m == 0) per_expert += std::fmax(0.0, 1.0 - cdf);  // P(rows > j tile_m)
    log_pmf += std::log(static_cast<double>(num_tokens - n) / static_cast<double>(n + 1)) + odds;
  }
  return per_expert * experts;
}

// The largest T (at most max_tokens) that runs the thin decode kernels (16-row m-tiles,
// ThinDecodeConfig) instead of the 32-row ones: every T up to it runs a decode kernel, and
// under uniform routing needs at most `ratio` times the 32-row kernels' m-tiles. Each m-tile
// reads its expert's weights once, so the thin kernels' faster streaming pays only while
// almost every expert fits one 16-row m-tile (about 12 rows per expert on average). What they
// gain sets the ratio (bench/NOTES.md, versions 61 and 63): 2-5% for small experts on an H200
// (Qwen3-30B-A3B T = 192 at a ratio of 1.094: -1.3%; at 16 rows, 1.43: +8.5%), about 1% for
// experts of kLargeExpertBytes, whose 32-row kernels already stream at the floor from T = 8
// (Mixtral-8x7B T = 32 at 1.0006: -1.4%; T = 40 at 1.012: +1.2%). Computed once per layer:
// the scan costs two expected_mtiles per T.
inline constexpr double kThinMTileRatio = 1.10;
inline constexpr double kThinMTileRatioLargeExperts = 1.005;
inline std::int64_t thin_decode_max_tokens(std::int64_t max_tokens, int top_k, int experts,
                                           int hidden, int intermediate) {
  const double ratio =
      large_experts(hidden, intermediate) ? kThinMTileRatioLargeExperts : kThinMTileRatio;
  std::int64_t t = 0;
  while (t < max_tokens) {
    const std::int64_t next = t + 1;
    if (runs_prefill_kernel(next, top_k, experts)) break;
    if (expected_mtiles(next, top_k, experts, kThinDecodeTileM) >
        ratio * expected_mtiles(next, top_k, experts, kDecodeTileM)) {
      break;
    }
    t = next;
  }
  return t;
}

// The smallest T from which every decode forward up to max_tokens runs the tall decode
// kernels (48-row m-tiles, TallDecodeConfig); above every decode T (and max_tokens) when none
// does. Near the switch to the prefill kernel (32 rows per expert on average) many experts
// need a second 32-row m-tile, and each m-tile costs about the same whatever its live rows;
// one 48-row m-tile holds them, though 48-row tiles are about 7% slower where both need the
// same count. So the tall kernels run where the 32-row kernels would need more than
// kTallMTileRatio times their m-tiles (bench/NOTES.md, version 62, H200: OLMoE T = 256 at
// 1.45 -7.1%, Qwen3-30B-A3B T = 512 at 1.45 -8.0%, Mixtral-8x7B T = 112 at 1.16 -3.0%; at 1.04
// and below +6 to +9%). The scan runs down from the last decode T.
inline constexpr double kTallMTileRatio = 1.15;
inline std::int64_t tall_decode_min_tokens(std::int64_t max_tokens, int top_k, int experts) {
  std::int64_t last = std::min<std::int64_t>(
      max_tokens, static_cast<std::int64_t>(kDecodeTileM) * experts / top_k + 1);
  while (last > 0 && runs_prefill_kernel(last, top_k, experts)) --last;
  std::int64_t t = last + 1;
  while (t > 1 && expected_mtiles(t - 1, top_k, experts, kDecodeTileM) >
                      kTallMTileRatio * expected_mtiles(t - 1, top_k, experts, kTallDecodeTileM)) {
    --t;
  }
  return t;
}

// The decode variant of a forward of T tokens (T runs a decode kernel): 0 thin (16-row
// m-tiles), 1 the 32-row kernels, 2 tall (48-row).
inline int decode_variant(std::int64_t num_tokens, std::int64_t thin_max_tokens,
                          std::int64_t tall_min_tokens) {
  if (num_tokens <= thin_max_tokens) return 0;
  return num_tokens >= tall_min_tokens ? 2 : 1;
}

// K slices of the down tiles (1 to `wanted`, down_split) from a model of the down phase:
// `down_tiles` tiles run in waves over `slots` blocks; a wave less than kWaveFloor full takes
// as long as one that full (a block streams at most ~1.3x its fair share of the bandwidth), and
// each extra slice costs 1% (its tiles reload their h rows and add a combine part). Measured on
// an H100 (bench/NOTES.md, version 35): Mixtral at T = 4 (about 175 down tiles on 264 blocks)
// and T = 112 (about 300) gain 3% from slices; at about one or three full waves they lose 1%.
inline int choose_down_slices(double down_tiles, std::int64_t slots, int wanted) {
  constexpr double kWaveFloor = 0.77, kSliceCost = 0.01;
  int best = 1;
  double best_cost = 0.0;
  for (int s = 1; s <= wanted; ++s) {
    const double waves = s * down_tiles / static_cast<double>(slots);
    const double full = std::floor(waves), last = waves - full;
    const double time = (full + (last > 0.0 ? std::fmax(last, kWaveFloor) : 0.0)) / s;
    const double cost = time * (1.0 + kSliceCost * (s - 1));
    if (s == 1 || cost < best_cost) {
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

// K slices of the warp-specialised engine's down tiles (1 to `wanted`). Its tickets hand out
// every gate/up tile first, so blocks enter the down phase staggered and take its tiles as they
// free: the launch ends at the balanced time (gate/up work over the blocks, then the down work
// with 1% a slice more) unless the dependency is longer: the last m-tile's down tiles start when
// its last gate/up tile (H / I of an unsliced down tile: same rows, K = H against I) ends and
// take 1 / s. In units of one unsliced down tile, the gate/up work being twice the down work.
// Measured on an H200 (bench/NOTES.md, row 117): Mixtral-8x7B at about 128 down tiles on 132
// blocks (T = 128-384) 2 slices, its pick, -5 to -7% (4 and 8 less); at about 190 (T = 512) one.
inline int choose_engine_down_slices(double down_tiles, double hidden_over_inter,
                                     std::int64_t slots, int wanted) {
  constexpr double kSliceCost = 0.01;
  const double gateup_end = 2.0 * down_tiles / static_cast<double>(slots);
  int best = 1;
  double best_time = 0.0;
  for (int s = 1; s <= wanted; ++s) {
    const double balanced =
        gateup_end + down_tiles / static_cast<double>(slots) * (1.0 + kSliceCost * (s - 1));
    const double critical = gateup_end + hidden_over_inter + 1.0 / s;
    const double time = std::fmax(balanced, critical);
    if (s == 1 || time < best_time) {
      best = s;
      best_time = time;
    }
  }
  return best;
}

// Gather jobs per m-tile of the warp-specialised engine (1 to kMaxGatherParts), each copying
// an equal share of the rows' 16-byte chunks. A gather is a chain of L2 round trips on one SM,
// and every gate/up tile of its m-tile waits for it: with a few m-tiles of long rows (Mixtral
// at T = 128-256: 8 gathers of 16 us on 8 SMs while 124 idle) the launch's first tile waits
// for one SM's copy rate. Parts spread the copy over about `slots` SMs; a part keeps at least
// kMinGatherPartChunks chunks of a row (1 KB), so that its loads stay whole lines.
inline constexpr int kMaxGatherParts = 8, kMinGatherPartChunks = 64;
inline int choose_gather_parts(double mtiles, std::int64_t slots, int hidden) {
  const int by_row = std::max(1, hidden / 8 / kMinGatherPartChunks);
  const double fill = static_cast<double>(slots) / std::fmax(mtiles, 1.0);
  const int parts = static_cast<int>(std::floor(fill + 0.5));
  return std::clamp(parts, 1, std::min(kMaxGatherParts, by_row));
}

}  // namespace flashmoe::detail
