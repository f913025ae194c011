// The host's choice of decode tile shapes (src/tile_choice.hpp), on the shapes it was measured
// with: each case below is a choice whose alternative measured slower on an H200
// (bench/NOTES.md, versions 9-15).
#include <gtest/gtest.h>

#include <cmath>

#include "tile_choice.hpp"

namespace {

using flashmoe::detail::choose_decode_kernel;
using flashmoe::detail::DecodeWidths;

constexpr DecodeWidths kWidths{32, 64, 64, 128};  // DecodeConfig's shapes
constexpr std::int64_t kSlots = 264;              // 2 blocks x 132 SMs

int qwen3(std::int64_t T) { return choose_decode_kernel(T, 2048, 768, 128, 8, kSlots, kWidths); }
int mixtral(std::int64_t T) { return choose_decode_kernel(T, 4096, 14336, 8, 2, kSlots, kWidths); }

TEST(TileChoice, FewExpertsKeepEveryBlockBusy) {
  EXPECT_EQ(mixtral(1), 0);  // 2 m-tiles: 256 down tiles of 32 columns, 128 of 64
  EXPECT_EQ(mixtral(2), 1);  // 4 m-tiles: 256 down tiles of 64 columns
  EXPECT_EQ(qwen3(1), 1);    // 8 m-tiles: 256 down tiles of 64 columns, 128 of 128
}

TEST(TileChoice, ManyTilesUseTheWideShapes) {
  for (std::int64_t T : {2, 4, 16, 64, 256}) EXPECT_EQ(qwen3(T), 3) << "T = " << T;
  for (std::int64_t T : {16, 64, 128}) EXPECT_EQ(mixtral(T), 3) << "T = " << T;
}

TEST(TileChoice, WideGateUpOnlyWithTheWidestDownTiles) {
  // Every shape and T: the wide gate/up tile never comes with narrower down tiles (Mixtral T = 1
  // measured 40% slower that way), and the choice only widens as T grows.
  struct Shape {
    int hidden, inter, experts, top_k;
  };
  for (const Shape& s : {Shape{2048, 768, 128, 8}, Shape{4096, 14336, 8, 2},
                         Shape{2048, 1024, 64, 8}, Shape{2048, 1408, 64, 6}, Shape{64, 40, 1, 1},
                         Shape{256, 64, 512, 16}, Shape{128, 48, 1024, 32}}) {
    int previous = 0;
    for (std::int64_t T = 1; T <= 4096; T *= 2) {
      const int k = choose_decode_kernel(T, s.hidden, s.inter, s.experts, s.top_k, kSlots, kWidths);
      ASSERT_GE(k, 0);
      ASSERT_LE(k, 3);
      EXPECT_GE(k, previous) << "H " << s.hidden << " E " << s.experts << " T " << T;
      previous = k;
    }
  }
}

TEST(TileChoice, DependsOnTheFullGridOnly) {
  // A smaller grid (LayerOptions::max_blocks) passes the same full-grid slot count, so the
  // choice, and with it the summation order, cannot change; a different device may choose
  // differently.
  EXPECT_EQ(choose_decode_kernel(1, 2048, 768, 128, 8, 264, kWidths), 1);
  EXPECT_EQ(choose_decode_kernel(1, 2048, 768, 128, 8, 160, kWidths), 2);
}

TEST(ThinDecode, WhileExpertsAverageAboutTwelveRows) {
  using flashmoe::detail::thin_decode_max_tokens;
  // Qwen3-30B-A3B: 12 rows per expert (T = 192) is thin, 16 (T = 256) is not.
  const std::int64_t qwen3 = thin_decode_max_tokens(4096, 8, 128, 2048, 768);
  EXPECT_GE(qwen3, 192);
  EXPECT_LT(qwen3, 256);
  // Mixtral-8x7B (large experts): 8 rows per expert (T = 32) is thin; 10 (T = 40) measured
  // slower on 16-row m-tiles.
  const std::int64_t mixtral = thin_decode_max_tokens(4096, 2, 8, 4096, 14336);
  EXPECT_GE(mixtral, 32);
  EXPECT_LT(mixtral, 40);
  // K = E: every expert has all T rows, so one 16-row m-tile holds them up to T = 16.
  EXPECT_EQ(thin_decode_max_tokens(4096, 4, 4, 128, 24), 16);
  // Never past max_tokens.
  EXPECT_EQ(thin_decode_max_tokens(8, 8, 128, 2048, 768), 8);
  EXPECT_EQ(thin_decode_max_tokens(1, 2, 8, 4096, 14336), 1);
}

TEST(TallDecode, WhereManyExpertsWouldNeedASecond32RowMTile) {
  using flashmoe::detail::tall_decode_min_tokens;
  // Measured on an H200 (bench/NOTES.md, version 62): tall faster at OLMoE T = 256, Qwen3 T = 512
  // and Mixtral T = 112, slower at OLMoE T = 192, Qwen3 T = 256 / 384, DeepSeek T = 256, Mixtral
  // T = 96.
  const std::int64_t olmoe = tall_decode_min_tokens(4096, 8, 64);
  EXPECT_GT(olmoe, 192);
  EXPECT_LE(olmoe, 256);
  const std::int64_t qwen3 = tall_decode_min_tokens(4096, 8, 128);
  EXPECT_GT(qwen3, 384);
  EXPECT_LE(qwen3, 512);
  const std::int64_t mixtral = tall_decode_min_tokens(4096, 2, 8);
  EXPECT_GT(mixtral, 96);
  EXPECT_LE(mixtral, 112);
  EXPECT_GT(tall_decode_min_tokens(4096, 6, 64), 256);
  // K = E: every m-tile count is the same at 32 and 48 rows while decode runs (T <= 32).
  EXPECT_GT(tall_decode_min_tokens(4096, 4, 4), 32);
  // A max_tokens below the range: no decode forward is tall.
  EXPECT_GT(tall_decode_min_tokens(100, 8, 64), 100);
}

TEST(DecodeVariant, ThinThen32RowThenTall) {
  using flashmoe::detail::decode_variant;
  EXPECT_EQ(decode_variant(1, 10, 20), 0);
  EXPECT_EQ(decode_variant(10, 10, 20), 0);
  EXPECT_EQ(decode_variant(11, 10, 20), 1);
  EXPECT_EQ(decode_variant(19, 10, 20), 1);
  EXPECT_EQ(decode_variant(20, 10, 20), 2);
}

TEST(DecodeVariant, OnlyWhereTheDecodeKernelsRun) {
  using flashmoe::detail::runs_prefill_kernel;
  using flashmoe::detail::tall_decode_min_tokens;
  using flashmoe::detail::thin_decode_max_tokens;
  struct Shape {
    int hidden, inter, experts, top_k;
  };
  for (const Shape& s :
       {Shape{2048, 768, 128, 8}, Shape{4096, 14336, 8, 2}, Shape{2048, 1024, 64, 8},
        Shape{2048, 1408, 64, 6}, Shape{64, 40, 1, 1}, Shape{256, 64, 512, 16},
        Shape{128, 48, 1024, 32}, Shape{64, 16456, 4, 2}}) {
    const std::int64_t t = thin_decode_max_tokens(4096, s.top_k, s.experts, s.hidden, s.inter);
    EXPECT_GE(t, 1) << "one token always fits one m-tile per expert";
    for (std::int64_t T = 1; T <= t; ++T) {
      ASSERT_FALSE(runs_prefill_kernel(T, s.top_k, s.experts))
          << "H " << s.hidden << " E " << s.experts << " T " << T;
    }
    // The tall range starts past the thin one, and once a T runs the prefill kernel every
    // larger T does, so the tall range is one run of decode T's below the switch.
    const std::int64_t tall = tall_decode_min_tokens(4096, s.top_k, s.experts);
    EXPECT_GT(tall, t);
    for (std::int64_t T = tall; T <= 4096; ++T) {
      if (runs_prefill_kernel(T, s.top_k, s.experts)) {
        for (std::int64_t U = T; U <= 4096; ++U) {
          ASSERT_TRUE(runs_prefill_kernel(U, s.top_k, s.experts)) << U;
        }
        break;
      }
    }
  }
}

TEST(DownSlices, ExpectedMTilesUnderUniformRouting) {
  using flashmoe::detail::expected_mtiles;
  EXPECT_NEAR(expected_mtiles(1, 2, 8, 32), 2.0, 1e-12);  // one token: K experts, one row each
  // Mixtral at T = 4: 8 (1 - 0.75^4) experts touched.
  EXPECT_NEAR(expected_mtiles(4, 2, 8, 32), 8.0 * (1.0 - std::pow(0.75, 4)), 1e-12);
  EXPECT_NEAR(expected_mtiles(100, 4, 4, 32), 4.0 * 4, 1e-12);  // K = E: every expert, 100 rows
  // Many tokens: close to rows / tile_m + one partial tile per expert.
  const double many = expected_mtiles(4096, 2, 8, 64);
  EXPECT_GT(many, 1024.0 / 64 * 8);
  EXPECT_LT(many, 1024.0 / 64 * 8 + 8.0 + 1e-9);
}

TEST(DownSlices, OnlyWhereTheLastWaveWouldLeaveBlocksIdle) {
  using flashmoe::detail::choose_down_slices;
  using flashmoe::detail::expected_mtiles;
  // The Mixtral cases measured on an H100 (264 blocks): 4 slices of 128-column decode tiles
  // (32 per m-tile) gained 3% at T = 4 and 112 and lost 1% at T = 16 - 64; 2 slices of the
  // prefill kernel's 64-column tiles (64 per m-tile) lost 1% at T = 128 and 256.
  auto decode = [](std::int64_t T) {
    return choose_down_slices(expected_mtiles(T, 2, 8, 32) * 32, kSlots, 4);
  };
  auto prefill = [](std::int64_t T) {
    return choose_down_slices(expected_mtiles(T, 2, 8, 64) * 64, kSlots, 2);
  };
  EXPECT_GT(decode(4), 1);
  EXPECT_GT(decode(112), 1);
  for (std::int64_t T : {16, 32, 64}) EXPECT_EQ(decode(T), 1) << "T = " << T;
  for (std::int64_t T : {128, 256}) EXPECT_EQ(prefill(T), 1) << "T = " << T;
  // Never more than wanted; a handful of tiles takes every slice offered.
  for (int wanted = 1; wanted <= 8; ++wanted) {
    EXPECT_EQ(choose_down_slices(3.0, kSlots, wanted), wanted);
    for (double tiles : {1.0, 100.0, 263.0, 264.0, 700.0, 5000.0}) {
      const int s = choose_down_slices(tiles, kSlots, wanted);
      EXPECT_GE(s, 1);
      EXPECT_LE(s, wanted);
    }
  }
}

TEST(DownSlices, EngineSlicesWhereTheLastDownTilesWouldEndTheLaunch) {
  using flashmoe::detail::choose_engine_down_slices;
  using flashmoe::detail::expected_mtiles;
  constexpr std::int64_t kEngineSlots = 132;  // one block an SM
  constexpr double kMixtralRatio = 4096.0 / 14336.0;
  // Mixtral's 256-column down tiles, 16 an m-tile: about 128 of them at T = 128 (64-row m-tiles)
  // and T = 256 (128-row) measured 5-7% faster with 2 or 4 slices than with 1; about 190 at
  // T = 512 measured no faster.
  auto mixtral = [&](std::int64_t T, int tile_m) {
    return choose_engine_down_slices(expected_mtiles(T, 2, 8, tile_m) * 16, kMixtralRatio,
                                     kEngineSlots, 8);
  };
  EXPECT_GT(mixtral(128, 64), 1);
  EXPECT_GT(mixtral(256, 128), 1);
  EXPECT_EQ(mixtral(512, 128), 1);
  // A handful of tiles takes every slice offered; never more than wanted.
  EXPECT_EQ(choose_engine_down_slices(16.0, kMixtralRatio, kEngineSlots, 8), 8);
  for (int wanted = 1; wanted <= 8; ++wanted) {
    for (double tiles : {1.0, 100.0, 131.0, 132.0, 700.0, 5000.0}) {
      const int s = choose_engine_down_slices(tiles, kMixtralRatio, kEngineSlots, wanted);
      EXPECT_GE(s, 1);
      EXPECT_LE(s, wanted);
    }
  }
}

// Gathers split into column shares where the m-tiles are too few to keep the SMs copying.
TEST(GatherParts, SplitWhereFewMTilesWouldLeaveTheSmsIdle) {
  using flashmoe::detail::choose_gather_parts;
  using flashmoe::detail::expected_mtiles;
  using flashmoe::detail::kMaxGatherParts;
  constexpr std::int64_t kEngineSlots = 132;
  // Mixtral-8x7B (H = 4096): about 8-12 m-tiles at T = 128 (64 rows) and T = 256 (128 rows).
  EXPECT_EQ(choose_gather_parts(expected_mtiles(128, 2, 8, 64), kEngineSlots, 4096),
            kMaxGatherParts);
  EXPECT_EQ(choose_gather_parts(expected_mtiles(256, 2, 8, 128), kEngineSlots, 4096),
            kMaxGatherParts);
  // Qwen3-30B-A3B at T = 1024: more m-tiles than SMs, one job an m-tile.
  EXPECT_EQ(choose_gather_parts(expected_mtiles(1024, 8, 128, 128), kEngineSlots, 2048), 1);
  // About 66 m-tiles fill the SMs in two parts; 44 in three.
  EXPECT_EQ(choose_gather_parts(66.0, kEngineSlots, 4096), 2);
  EXPECT_EQ(choose_gather_parts(44.0, kEngineSlots, 4096), 3);
  // A part keeps 64 chunks of a row: H = 1024 has 128, so two parts at most; H = 256 one.
  EXPECT_EQ(choose_gather_parts(4.0, kEngineSlots, 1024), 2);
  EXPECT_EQ(choose_gather_parts(4.0, kEngineSlots, 256), 1);
  for (double mtiles : {0.0, 0.5, 1.0, 16.0, 131.0, 1e6}) {
    for (int hidden : {8, 512, 2048, 16384}) {
      const int parts = choose_gather_parts(mtiles, kEngineSlots, hidden);
      EXPECT_GE(parts, 1);
      EXPECT_LE(parts, kMaxGatherParts);
    }
  }
}

}  // namespace
