// The warp-specialised engine's expert-tile order (src/ws_ticket_order.hpp): every tile once,
// and every down tile after the gate/up tiles it waits for, on tile tables laid out as the
// kernel's (an expert's m-tiles consecutive, its tiles column-major over them).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "ws_ticket_order.hpp"

namespace {

using flashmoe::detail::kAllGateUpFirst;
using flashmoe::detail::ws_down_lead;
using flashmoe::detail::ws_tile_at;
using flashmoe::detail::WsTileSlot;

// Phase index -> m-tile slot, as locate_tile (tile_table.cuh) finds it: `first[s]` and
// `count[s]` are the first slot and the m-tile count of slot s's expert.
std::uint32_t slot_of(std::uint32_t index, std::uint32_t ntiles, const std::vector<int>& first,
                      const std::vector<int>& count) {
  const std::uint32_t s = index / ntiles;
  const std::uint32_t local = index - static_cast<std::uint32_t>(first[s]) * ntiles;
  return static_cast<std::uint32_t>(first[s]) + local % static_cast<std::uint32_t>(count[s]);
}

// Checks the order of one launch (every tile once, as gtest failures); returns false when a down
// tile comes before one of its m-tile's gate/up tiles.
bool check_order(const std::vector<int>& mtiles_per_expert, std::uint32_t ng, std::uint32_t ndk,
                 std::uint32_t lead) {
  std::vector<int> first, count;
  for (int c : mtiles_per_expert) {
    const int f = static_cast<int>(first.size());
    for (int j = 0; j < c; ++j) {
      first.push_back(f);
      count.push_back(c);
    }
  }
  const auto m = static_cast<std::uint32_t>(first.size());
  std::vector<int> gateup_seen(m * ng, 0), down_seen(m * ndk, 0);
  std::vector<std::uint32_t> gateup_done(m, 0);  // gate/up tiles of each m-tile issued so far
  bool ordered = true;
  for (std::uint32_t t = 0; t < m * (ng + ndk); ++t) {
    const WsTileSlot at = ws_tile_at(t, m, ng, ndk, lead);
    if (at.gateup) {
      EXPECT_LT(at.index, m * ng) << "ticket " << t;
      if (at.index >= m * ng) return false;
      ++gateup_seen[at.index];
      ++gateup_done[slot_of(at.index, ng, first, count)];
    } else {
      EXPECT_LT(at.index, m * ndk) << "ticket " << t;
      if (at.index >= m * ndk) return false;
      ++down_seen[at.index];
      if (gateup_done[slot_of(at.index, ndk, first, count)] != ng) ordered = false;
    }
  }
  for (int n : gateup_seen) EXPECT_EQ(n, 1);
  for (int n : down_seen) EXPECT_EQ(n, 1);
  return ordered;
}

TEST(WsTicketOrder, AllGateUpFirstWithoutALead) {
  for (std::uint32_t t = 0; t < 10 * (6 + 8); ++t) {
    const WsTileSlot at = ws_tile_at(t, 10, 6, 8, kAllGateUpFirst);
    EXPECT_EQ(at.gateup, t < 60);
    EXPECT_EQ(at.index, t < 60 ? t : t - 60);
  }
  // A lead of every m-tile or more is the same order.
  for (std::uint32_t t = 0; t < 10 * (6 + 8); ++t) {
    const WsTileSlot a = ws_tile_at(t, 10, 6, 8, 10), b = ws_tile_at(t, 10, 6, 8, 1000);
    EXPECT_EQ(a.gateup, t < 60);
    EXPECT_EQ(b.gateup, t < 60);
    EXPECT_EQ(a.index, b.index);
  }
}

TEST(WsTicketOrder, InterleavesAfterTheLead) {
  // 5 m-tiles, 2 gate/up and 3 down tiles each, lead 2: G0 G0 G1 G1 | G2 G2 D0 D0 D0 |
  // G3 G3 D1 D1 D1 | G4 G4 D2 D2 D2 | D3 D3 D3 D4 D4 D4 (phase indices by m-tile position).
  const std::vector<std::pair<bool, std::uint32_t>> want = {
      {true, 0},   {true, 1},   {true, 2},   {true, 3},  {true, 4},  {true, 5},  {false, 0},
      {false, 1},  {false, 2},  {true, 6},   {true, 7},  {false, 3}, {false, 4}, {false, 5},
      {true, 8},   {true, 9},   {false, 6},  {false, 7}, {false, 8}, {false, 9}, {false, 10},
      {false, 11}, {false, 12}, {false, 13}, {false, 14}};
  for (std::uint32_t t = 0; t < want.size(); ++t) {
    const WsTileSlot at = ws_tile_at(t, 5, 2, 3, 2);
    EXPECT_EQ(at.gateup, want[t].first) << "ticket " << t;
    EXPECT_EQ(at.index, want[t].second) << "ticket " << t;
  }
}

TEST(WsTicketOrder, EveryTileOnceAndDownTilesAfterTheirGateUpTiles) {
  std::mt19937 rng(20);
  for (int trial = 0; trial < 300; ++trial) {
    const int experts = 1 + static_cast<int>(rng() % 40);
    const auto ng = static_cast<std::uint32_t>(1 + rng() % 12);
    const auto ndk = static_cast<std::uint32_t>(1 + rng() % 20);
    std::vector<int> per_expert(experts);
    int most = 0;
    for (int& c : per_expert) {
      c = static_cast<int>(rng() % 5);  // experts without rows have no m-tile
      most = std::max(most, c);
    }
    if (trial % 7 == 0) per_expert[rng() % experts] = most = 9;  // skewed: one expert holds most
    const int m = [&] {
      int s = 0;
      for (int c : per_expert) s += c;
      return s;
    }();
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ", " << m << " m-tiles");
    // Any lead of at least (most m-tiles of one expert) - 1 keeps the dependencies.
    for (int lead = std::max(0, most - 1); lead <= m + 1; lead += 1 + lead / 3) {
      EXPECT_TRUE(check_order(per_expert, ng, ndk, static_cast<std::uint32_t>(lead)))
          << "lead " << lead;
    }
    EXPECT_TRUE(check_order(per_expert, ng, ndk, kAllGateUpFirst));
  }
}

TEST(WsTicketOrder, ALeadBelowAnExpertsMTilesWouldBreakTheOrder) {
  // The bound is tight here: an expert of 4 m-tiles first, 3 gate/up tiles each, lead 2
  // (< 4 - 1): its second down tile (m-tile 1) comes before m-tile 1's last gate/up tile, which
  // the expert's column-major layout puts in the fourth position.
  EXPECT_FALSE(check_order({4, 1, 1, 1}, 3, 2, 2));
  EXPECT_TRUE(check_order({4, 1, 1, 1}, 3, 2, 3));
}

TEST(WsTicketOrder, LaunchLeadCoversEveryRoutedExpert) {
  // No waves (the library's order), or caller routing: all gate/up tiles first.
  EXPECT_EQ(ws_down_lead(0.0, 132, 6, 4096, 128, false), kAllGateUpFirst);
  EXPECT_EQ(ws_down_lead(2.0, 132, 6, 4096, 128, true), kAllGateUpFirst);
  // Two waves of 132 blocks over 6 gate/up tiles an m-tile: 44 m-tiles.
  EXPECT_EQ(ws_down_lead(2.0, 132, 6, 1024, 128, false), 44u);
  // A routed expert holds at most every token once: ceil(T / tile_m) m-tiles, so the lead is
  // at least one less than that.
  EXPECT_EQ(ws_down_lead(0.5, 132, 112, 8192, 128, false), 63u);
  EXPECT_EQ(ws_down_lead(0.5, 132, 112, 100, 128, false), 1u);
  // Routed launches of every size: the tightest table (one expert with every token) keeps
  // the order with the lead the launch gets.
  for (int tokens : {1, 64, 65, 129, 1000, 4096}) {
    for (double waves : {0.1, 1.0, 2.0}) {
      const std::uint32_t lead = ws_down_lead(waves, 132, 6, tokens, 64, false);
      const int own = (tokens + 63) / 64;
      std::vector<int> per_expert = {own, 1, 2, 1};
      EXPECT_TRUE(check_order(per_expert, 6, 8, lead)) << tokens << " tokens, " << waves;
    }
  }
}

}  // namespace
