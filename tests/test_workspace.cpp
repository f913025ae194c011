// The workspace plan's router split (src/workspace.hpp): every K slice real, the partial-logit
// buffer large enough for any T, and the task counts the split promises.
#include <gtest/gtest.h>

#include <cstdint>
#include <utility>

#include "flashmoe/layer.hpp"
#include "workspace.hpp"

namespace {

using flashmoe::detail::kRouterMaxKSlices;
using flashmoe::detail::kRouterTargetTasks;
using flashmoe::detail::router_partial_rows;
using flashmoe::detail::router_split;
using flashmoe::detail::RouterSplit;
using flashmoe::detail::runs_prefill_kernel;

TEST(RouterSplit, DecodeRouterTakesWholeRows) {
  const RouterSplit r = router_split(20, 2048, 128, false, false, 32, 64, 128);
  EXPECT_EQ(r.chunk_tokens, flashmoe::detail::kRouterTokens);
  EXPECT_EQ(r.chunks, (20 + r.chunk_tokens - 1) / r.chunk_tokens);
  EXPECT_EQ(r.eslices, 128 / flashmoe::detail::kRouterExperts);
  EXPECT_EQ(r.kslices, 1);
  EXPECT_EQ(r.klen, 2048);
  // The chunk's last router task selects: no select tickets.
  EXPECT_EQ(r.select_tokens, 0);
  EXPECT_EQ(r.selects, 0);
  EXPECT_EQ(r.tasks(), r.router_tasks());
}

TEST(RouterSplit, FewChunksSpreadOverKSlices) {
  // Mixtral-8x7B at its first prefill T (129: T * K > 32 * E) with the prefill down tile
  // (64 x 64, 64-column steps): 3 chunks x 1 expert slice, H = 4096 in 16 slices of 4 steps.
  const RouterSplit r = router_split(129, 4096, 8, false, true, 64, 64, 64);
  EXPECT_EQ(r.chunk_tokens, 64);
  EXPECT_EQ(r.chunks, 3);
  EXPECT_EQ(r.eslices, 1);
  EXPECT_EQ(r.kslices, 16);
  EXPECT_EQ(r.klen, 256);
  EXPECT_EQ(r.router_tasks(), 48);
  // Then one select ticket per 8 tokens.
  EXPECT_EQ(r.select_tokens, 8);
  EXPECT_EQ(r.selects, 17);
  EXPECT_EQ(r.tasks(), 48 + 2 * 17);  // and a row-map ticket per select ticket
}

TEST(RouterSplit, ManyChunksSplitLess) {
  // 1024 tokens in 64-row chunks are 16 chunks x 2 expert slices: four K slices reach the
  // 128-task target (one wave); 4096 tokens (64 chunks) keep whole rows, and so do 16384.
  const RouterSplit r = router_split(1024, 2048, 128, false, true, 64, 64, 64);
  EXPECT_EQ(r.chunks, 16);
  EXPECT_EQ(r.kslices, 4);
  EXPECT_EQ(r.router_tasks(), 128);
  const RouterSplit r4096 = router_split(4096, 2048, 128, false, true, 64, 64, 64);
  EXPECT_EQ(r4096.chunks, 64);
  EXPECT_EQ(r4096.kslices, 1);
  EXPECT_EQ(r4096.router_tasks(), 128);
  const RouterSplit big = router_split(16384, 2048, 128, false, true, 64, 64, 64);
  EXPECT_EQ(big.kslices, 1);
  EXPECT_EQ(big.klen, 2048);
}

TEST(RouterSplit, SelectTicketsGrowToStayNearTheTarget) {
  // 8 tokens a ticket (one a warp) up to 1024 tokens, then more tokens a ticket, up to a whole
  // 64-token chunk, so that the select tickets stay about one wave.
  const int expected[][3] = {{1, 8, 1},       {100, 8, 13},    {1024, 8, 128},  {1025, 16, 65},
                             {2048, 16, 128}, {4096, 32, 128}, {8192, 64, 128}, {16384, 64, 256}};
  for (const auto& e : expected) {
    const RouterSplit r = router_split(e[0], 2048, 128, false, true, 64, 64, 64);
    SCOPED_TRACE(testing::Message() << "T " << e[0]);
    EXPECT_EQ(r.select_tokens, e[1]);
    EXPECT_EQ(r.selects, e[2]);
    EXPECT_EQ(r.tasks(), r.router_tasks() + 2 * r.selects);
  }
}

TEST(RouterSplit, CallerRoutingIsOneTaskPerChunkInDecodeAndSelectTicketsInPrefill) {
  const RouterSplit d = router_split(100, 2048, 128, true, false, 32, 64, 128);
  EXPECT_EQ(d.chunks, 25);
  EXPECT_EQ(d.eslices, 1);
  EXPECT_EQ(d.kslices, 1);
  EXPECT_EQ(d.tasks(), 25);
  // Prefill: no router tasks, only select tickets taking the caller's ids and row-map tickets.
  const RouterSplit r = router_split(100, 2048, 128, true, true, 32, 64, 128);
  EXPECT_EQ(r.chunks, 4);
  EXPECT_EQ(r.eslices, 0);
  EXPECT_EQ(r.router_tasks(), 0);
  EXPECT_EQ(r.kslices, 1);
  EXPECT_EQ(r.selects, 13);
  EXPECT_EQ(r.tasks(), 2 * 13);
}

TEST(RouterSplit, SlicesCoverHOnceAndFitTheBuffer) {
  struct Tile {
    int m, n, k;
  };
  for (const Tile tile : {Tile{32, 32, 128}, Tile{32, 64, 128}, Tile{32, 128, 64}, Tile{64, 64, 64},
                          Tile{16, 32, 64}}) {
    for (int hidden : {8, 64, 136, 1000, 2048, 4096, 7168}) {
      for (int experts : {1, 8, 60, 64, 128, 1024}) {
        for (std::int64_t T : {1, 2, 3, 16, 31, 33, 100, 256, 511, 1024, 4097}) {
          const RouterSplit r =
              router_split(T, hidden, experts, false, true, tile.m, tile.n, tile.k);
          SCOPED_TRACE(testing::Message() << "T " << T << " H " << hidden << " E " << experts
                                          << " tile " << tile.m << "x" << tile.n << "x" << tile.k);
          ASSERT_GE(r.kslices, 1);
          ASSERT_LE(r.kslices, kRouterMaxKSlices);
          if (r.kslices > 1) {
            EXPECT_EQ(r.klen % tile.k, 0) << "slices of whole pipeline steps";
          }
          EXPECT_LT(static_cast<std::int64_t>(r.kslices - 1) * r.klen, hidden) << "empty slice";
          EXPECT_GE(static_cast<std::int64_t>(r.kslices) * r.klen, hidden) << "H not covered";
          if (r.kslices > 1) {
            EXPECT_LE(r.router_tasks(), kRouterTargetTasks);
          }
          // Select tickets cover the tokens once, in whole warps' worth of tokens; a ticket
          // lies within one router chunk whenever chunks are whole tickets.
          ASSERT_GE(r.select_tokens, 8);
          EXPECT_EQ(r.select_tokens % 8, 0);
          EXPECT_GE(static_cast<std::int64_t>(r.selects) * r.select_tokens, T);
          EXPECT_LT(static_cast<std::int64_t>(r.selects - 1) * r.select_tokens, T);
          if (tile.m % 8 == 0) {
            EXPECT_EQ(tile.m % r.select_tokens, 0);
          }
          EXPECT_EQ(r.tasks(), r.router_tasks() + 2 * r.selects);
          // The buffer of a layer sized for exactly T (the tightest) holds kslices x T rows
          // whenever T runs a prefill kernel (the only ones that split K).
          for (int top_k : {1, 8}) {
            if (top_k > experts) continue;
            const std::int64_t rows = router_partial_rows(T, top_k, experts);
            EXPECT_GE(rows, T);
            if (runs_prefill_kernel(T, top_k, experts)) {
              EXPECT_LE(r.kslices * T, rows);
            }
          }
        }
      }
    }
  }
}

TEST(RouterSplit, DecodeOnlyLayersKeepOneRowPerToken) {
  // Qwen3-30B-A3B (E = 128, K = 8): T = 512 is the last decode T (4096 pairs = 32 x 128), on
  // every device. A layer sized for 512 holds no K slices; one more token reaches a prefill
  // kernel, whose split needs up to 16 slices of rows (capped at 128 chunks of 64 rows).
  EXPECT_FALSE(runs_prefill_kernel(512, 8, 128));
  EXPECT_TRUE(runs_prefill_kernel(513, 8, 128));
  EXPECT_EQ(router_partial_rows(512, 8, 128), 512);
  EXPECT_EQ(router_partial_rows(513, 8, 128),
            std::min<std::int64_t>(kRouterMaxKSlices * 513, kRouterTargetTasks * 64));
  EXPECT_EQ(router_partial_rows(300, 8, 8), 16 * 300);
  EXPECT_EQ(router_partial_rows(4096, 8, 128), kRouterTargetTasks * 64);
  // The workspace follows: a decode-only layer's logits region is T x E floats.
  flashmoe::Config c;
  c.hidden = 2048;
  c.intermediate = 768;
  c.experts = 128;
  c.top_k = 8;
  c.max_tokens = 512;
  const auto w = flashmoe::detail::plan_scratch(c);
  EXPECT_EQ(w.pair_expert - w.logits, std::size_t{512} * 128 * 4);
  EXPECT_FALSE(w.has_x_sorted);
  c.max_tokens = 513;
  EXPECT_TRUE(flashmoe::detail::plan_scratch(c).has_x_sorted);
}

flashmoe::Config qwen3(int max_tokens) {
  flashmoe::Config c;
  c.hidden = 2048;
  c.intermediate = 768;
  c.experts = 128;
  c.top_k = 8;
  c.max_tokens = max_tokens;
  return c;
}

TEST(Layout, StateIsSmallAndScratchStartsWithTheOwnerLine) {
  // What each Layer keeps for itself is counters, not data: a few KB even at 8192 tokens, so
  // that 48 Layers sharing one scratch cost 48 small states.
  const auto state = flashmoe::detail::plan_state(qwen3(8192));
  EXPECT_LE(state.total, std::size_t{64} << 10);
  EXPECT_GE(state.router_done + state.router_chunks * 4, state.expert_count + 128 * 4);
  const auto scratch = flashmoe::detail::plan_scratch(qwen3(8192));
  EXPECT_EQ(scratch.owner, 0u);
  EXPECT_GE(scratch.logits, flashmoe::detail::kScratchHeaderBytes);
  for (std::size_t offset :
       {scratch.logits, scratch.pair_expert, scratch.pair_weight, scratch.pair_pos,
        scratch.sorted_pair, scratch.expert_row0, scratch.mtile_info, scratch.mtile_done,
        scratch.combine_done, scratch.h, scratch.ypart, scratch.x_sorted, scratch.sorted_weight}) {
    EXPECT_EQ(offset % 256, 0u);
    EXPECT_LT(offset, scratch.total);
  }
  // The engine's regions (8192 tokens reach it): x_sorted, then its rows' routing weights, which
  // end the scratch.
  ASSERT_TRUE(scratch.has_x_sorted);
  EXPECT_GE(scratch.sorted_weight, scratch.x_sorted + std::size_t{8192} * 8 * 2048 * 2);
  EXPECT_GE(scratch.total, scratch.sorted_weight + std::size_t{8192} * 8 * 4);
  // A decode-only layer has neither.
  const auto decode_only = flashmoe::detail::plan_scratch(qwen3(16));
  EXPECT_FALSE(decode_only.has_x_sorted);
  EXPECT_EQ(decode_only.sorted_weight, 0u);
  EXPECT_EQ(decode_only.x_sorted, 0u);
  // The public queries agree with the plans.
  EXPECT_EQ(flashmoe::scratch_bytes(qwen3(8192)), scratch.total);
  EXPECT_EQ(flashmoe::workspace_bytes(qwen3(8192)), scratch.total + state.total);
}

TEST(Layout, ScratchGrowsWithMaxTokens) {
  std::size_t previous = 0;
  for (int T : {1, 16, 256, 1024, 8192}) {
    const std::size_t bytes = flashmoe::scratch_bytes(qwen3(T));
    EXPECT_GT(bytes, previous) << "T " << T;
    previous = bytes;
  }
}

// LayerOptions::tokens_per_launch: the scratch of a launch of that many tokens, the same as a
// config whose max_tokens it is; 0 and anything past max_tokens mean max_tokens.
TEST(Layout, ScratchPerLaunchFollowsTokensPerLaunch) {
  const flashmoe::Config c = qwen3(8192);
  EXPECT_EQ(flashmoe::scratch_bytes(c, 0), flashmoe::scratch_bytes(c));
  EXPECT_EQ(flashmoe::scratch_bytes(c, 8192), flashmoe::scratch_bytes(c));
  EXPECT_EQ(flashmoe::scratch_bytes(c, 100000), flashmoe::scratch_bytes(c));
  EXPECT_EQ(flashmoe::scratch_bytes(c, -1), 0u);
  EXPECT_EQ(flashmoe::workspace_bytes(c, -1), 0u);
  std::size_t previous = 0;
  for (int n : {1, 2, 16, 255, 256, 513, 1024, 2048, 4095, 8192}) {
    const std::size_t bytes = flashmoe::scratch_bytes(c, n);
    EXPECT_EQ(bytes, flashmoe::scratch_bytes(qwen3(n))) << "n " << n;
    EXPECT_GE(bytes, previous) << "n " << n;
    EXPECT_EQ(flashmoe::workspace_bytes(c, n), bytes + flashmoe::detail::plan_state(c).total);
    previous = bytes;
  }
}

TEST(Layout, TokensPerLaunchForABudgetIsTheLargestThatFits) {
  const flashmoe::Config c = qwen3(8192);
  EXPECT_EQ(flashmoe::tokens_per_launch_for(c, flashmoe::scratch_bytes(c)), 8192);
  EXPECT_EQ(flashmoe::tokens_per_launch_for(c, std::size_t{1} << 50), 8192);
  EXPECT_EQ(flashmoe::tokens_per_launch_for(c, 1000), 0);  // not even one token's
  flashmoe::Config bad = c;
  bad.top_k = 0;
  EXPECT_EQ(flashmoe::tokens_per_launch_for(bad, std::size_t{1} << 40), 0);
  for (int n : {1, 7, 300, 2047, 5000}) {
    const std::size_t bytes = flashmoe::scratch_bytes(c, n);
    const int fit = flashmoe::tokens_per_launch_for(c, bytes);
    EXPECT_GE(fit, n);
    EXPECT_LE(flashmoe::scratch_bytes(c, fit), bytes);
    if (fit < 8192) {
      EXPECT_GT(flashmoe::scratch_bytes(c, fit + 1), bytes) << "n " << n;
    }
  }
}

// Issue 19's target: the Qwen3-30B-A3B shape at max_tokens = 8192 in at most a quarter of the
// bytes one launch of 8192 tokens needs, with launches of close to 2048 tokens.
TEST(Layout, Qwen3At8192TokensFitsAQuarterOfTheOneLaunchWorkspace) {
  const flashmoe::Config c = qwen3(8192);
  const std::size_t quarter = flashmoe::workspace_bytes(c) / 4;
  const std::size_t state = flashmoe::detail::plan_state(c).total;
  const int n = flashmoe::tokens_per_launch_for(c, quarter - state);
  EXPECT_GE(n, 1900);
  EXPECT_LE(flashmoe::workspace_bytes(c, n), quarter);
}

TEST(KernelChoice, PrefillKernelPastOneDecodeMTileOfRowsPerExpert) {
  // Mixtral-8x7B (352 MB per expert): 32 rows per expert (T = 128) runs the tall decode
  // kernels, which measured 4-6% faster there than the prefill kernel (bench/NOTES.md, 64).
  EXPECT_FALSE(runs_prefill_kernel(128, 2, 8));
  EXPECT_TRUE(runs_prefill_kernel(129, 2, 8));
  // OLMoE (12.6 MB per expert): the same rule.
  EXPECT_FALSE(runs_prefill_kernel(256, 8, 64));
  EXPECT_TRUE(runs_prefill_kernel(257, 8, 64));
  // DeepSeek-V2-Lite (E = 64, K = 6): 341 tokens are 2046 pairs, under 32 x 64. The engine on
  // sm_90a keeps this rule too: the decode kernels win at 24-32 rows an expert on every shape
  // (bench/NOTES.md, rows 163-165).
  EXPECT_FALSE(runs_prefill_kernel(341, 6, 64));
  EXPECT_TRUE(runs_prefill_kernel(342, 6, 64));
  EXPECT_TRUE(flashmoe::detail::large_experts(4096, 14336));
  EXPECT_FALSE(flashmoe::detail::large_experts(2048, 1408));
  // The rule grows with T for any shape (router_partial_rows relies on it).
  for (const auto& [top_k, experts] : {std::pair{2, 8}, std::pair{8, 128}, std::pair{32, 1024},
                                       std::pair{6, 64}, std::pair{1, 1}}) {
    bool prefill = false;
    for (std::int64_t T = 1; T <= 4096; ++T) {
      const bool now = runs_prefill_kernel(T, top_k, experts);
      EXPECT_TRUE(now || !prefill) << "T " << T << " K " << top_k << " E " << experts;
      prefill = now;
    }
    EXPECT_TRUE(prefill);
  }
  // A scratch has the engine's expert-sorted rows exactly when its max_tokens reaches a prefill
  // kernel.
  for (int max_tokens : {1, 383, 384, 512, 513, 4096}) {
    EXPECT_EQ(flashmoe::detail::plan_scratch(qwen3(max_tokens)).has_x_sorted,
              runs_prefill_kernel(max_tokens, 8, 128))
        << max_tokens;
  }
}

TEST(DownSplit, SlicesCoverIOnceAndFitTheYpartPlanes) {
  using flashmoe::detail::down_slices_allowed;
  using flashmoe::detail::down_split;
  using flashmoe::detail::ypart_rows;
  struct Tile {
    int n, k;  // the down shapes of the decode, prefill and warp-specialised prefill kernels
  };
  for (int inter : {40, 768, 4096, 14336, 16456, 65536}) {
    for (int top_k : {1, 2, 8}) {
      for (std::int64_t max_tokens : {1, 7, 128, 512, 4096}) {
        const std::int64_t rows = ypart_rows(max_tokens, top_k, inter);
        EXPECT_GE(rows, max_tokens * top_k);
        for (std::int64_t T : {std::int64_t{1}, max_tokens / 2 + 1, max_tokens}) {
          for (const Tile tile :
               {Tile{32, 128}, Tile{64, 128}, Tile{128, 64}, Tile{64, 64}, Tile{256, 64}}) {
            const int allowed = down_slices_allowed(T * top_k, inter, tile.n);
            for (int slices = 1; slices <= allowed; ++slices) {
              const auto d = down_split(inter, tile.k, slices);
              SCOPED_TRACE(testing::Message() << "I " << inter << " K " << top_k << " T " << T
                                              << " tile " << tile.n << " slices " << slices);
              ASSERT_GE(d.kslices, 1);
              EXPECT_LE(d.kslices, slices);
              EXPECT_TRUE(d.klen % tile.k == 0 || d.kslices == 1) << "whole steps";
              EXPECT_LT(static_cast<std::int64_t>(d.kslices - 1) * d.klen, inter) << "empty";
              EXPECT_GE(static_cast<std::int64_t>(d.kslices) * d.klen, inter) << "I covered";
              EXPECT_LE(d.kslices * T * top_k, rows) << "planes fit the workspace";
            }
          }
        }
      }
    }
  }
}

}  // namespace
