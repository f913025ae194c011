// The persistent MoE kernel. Blocks take tickets from one queue counter; ticket order is a
// topological order of the task graph:
//   [0, R)               routing: router tasks (token chunk x expert slice, x K slice in the
//                        prefill kernel), the last of a chunk's runs its top-k (or caller
//                        routing, one task per chunk);
//                        the last one builds the tile table and publishes the ticket total
//   [R, R + M*NG)        gate/up tiles, m-tile major
//   [R + M*NG, total)    down tiles, ND column tiles x K slices of I per m-tile (each waits
//                        for its m-tile's NG gate/up tiles), with the combine done by the
//                        last tile to finish a token slice.
// One live token (decode kernels, `one_token_gateup`): the m-tiles are the K pairs, so the total
// is known at launch; gate/up tile k waits only for the token's experts (released by the
// routing ticket before it writes the table; with caller routing, for nothing) and counts into
// its own word; down tiles still wait for the table. Those waits are on smaller tickets too.
// 2 to BM live tokens of the kernel's own routing (decode kernels, `table_free`): no table; the
// tiles wait for every routing ticket's count, and each block derives the total and its
// m-tiles from the pairs (tile_table.cuh, LiveExperts). Gate/up tiles count into their expert's
// word of expert_count, which the last block out zeroes.
// A task waits only on tasks with smaller tickets, and a ticket is taken only by a running
// block, so the kernel cannot deadlock whatever number of blocks is resident. Counters are
// reset inside the kernel (by the last block to exit, or by their last user), so consecutive
// launches need no host memset.
#pragma once

#include <cstdint>
#include <type_traits>

#include "expert_tiles.cuh"
#include "params.cuh"
#include "routing.cuh"
#include "routing_ticket.cuh"
#include "sync.cuh"
#include "task_queue.cuh"
#include "tile_mma.cuh"
#include "tile_table.cuh"
#include "trace.cuh"

namespace flashmoe::detail {

constexpr int cmax(int a, int b) { return a > b ? a : b; }
inline constexpr int kSmemAlign = 1024;

// Tile shapes of one kernel variant: a narrow and a wide gate/up shape and up to three down
// shapes, narrow to wide. The host picks the shapes of each launch (each pair is its own
// kernel, so every kernel keeps the register allocation of a single tile loop). Wide tiles
// amortise a tile's set-up, and load each token row once for more output columns, when there
// are enough of them to give every block work; narrow ones keep every block busy when few
// experts are touched (Mixtral at T = 1 has 2 m-tiles: 256 down tiles of 32 columns, 64 of
// 128). Down tiles have a short K (= I), so they pay their set-up often.
template <int BM_, bool TILE_ROUTER, class GateUp_, class GateUpWide_, class Down0_,
          class Down1_ = Down0_, class Down2_ = Down1_>
struct KernelConfig {
  static constexpr int BM = BM_;
  // Router on tensor cores (router_tile, split K) or on CUDA cores (router_logits).
  static constexpr bool tile_router = TILE_ROUTER;
  using GateUp = GateUp_;
  using GateUpWide = GateUpWide_;
  using Down0 = Down0_;
  using Down1 = Down1_;
  using Down2 = Down2_;
  // Decode kernels whose launches may find their tiles without a tile table (LiveExperts).
  static constexpr bool table_free = !TILE_ROUTER && table_free_height(BM_);
  static constexpr bool single_shape = std::is_same_v<GateUp, GateUpWide> &&
                                       std::is_same_v<Down0, Down1> && std::is_same_v<Down1, Down2>;
  static_assert(BM_ == GateUp::BM && BM_ == GateUpWide::BM && BM_ == Down0::BM &&
                    BM_ == Down1::BM && BM_ == Down2::BM,
                "one m-tile height per variant");
  static_assert(BM_ >= kMinTileM && BM_ <= kMaxTileM && Down0::BN >= kMinDownTileN,
                "workspace tables assume these");
  static_assert(Down0::BN <= Down1::BN && Down1::BN <= Down2::BN, "narrow to wide");
  // Dynamic shared memory of the kernel running gate/up shape G and down shape D, with room
  // to align the stages to the 1024 bytes the copy engine's 128-byte swizzle needs.
  template <class G, class D>
  static constexpr int smem_bytes() {
    return cmax(cmax(G::SMEM_BYTES, D::SMEM_BYTES), static_cast<int>(sizeof(ScanSmem))) +
           kSmemAlign;
  }
};

// Few rows per expert (decode, up to 32 on average): thin tiles, warps split K. A block's
// streaming rate is bounded by its pipeline steps (each costs about the same whatever its
// bytes), so the narrow gate/up tile steps 128 columns of K (24 KB, 4 stages), and so do the
// 32- and 64-column down tiles (16 and 24 KB); the wide gate/up and the 128-column down tiles
// step 64 columns (20 KB) and take 5 stages, 100 KB, which two blocks per SM still hold: one
// more weight stage in flight per block made T = 256 0.9-2.1% faster on an H200 and 1.5-1.6% on
// an H100, and T = 8-128 0.4-1.8% on the H200 (bench/NOTES.md, version 57).
using DecodeConfig =
    KernelConfig<32, false, TileShape<32, 32, true, 1, 4, 2, 4, 128>,
                 TileShape<32, 64, true, 1, 4, 2, 5, 64>, TileShape<32, 32, false, 1, 4, 2, 4, 128>,
                 TileShape<32, 64, false, 1, 4, 2, 4, 128>,
                 TileShape<32, 128, false, 1, 4, 2, 5, 64>>;
static_assert(DecodeConfig::BM == kDecodeTileM, "runs_prefill_kernel and the workspace use it");
// The same shapes on 16-row m-tiles, while experts average at most about 12 rows
// (thin_decode_max_tokens, tile_choice.hpp), so that few need a second m-tile: a stage then
// carries half the token rows (at T = 1, 31 of 32 were zero-filled), and the stages freed go
// to more weight bytes in flight (5 narrow gate/up stages, 8 narrow down stages). Measured
// against DecodeConfig (bench/NOTES.md, version 61): Qwen3-30B-A3B T = 1 to 64 -3.3 to -5.9% on
// an H200, Mixtral-8x7B T = 1 -9.6%; on an H100 -0.6 to -1.9%, Mixtral T = 1 -3.5%.
using ThinDecodeConfig =
    KernelConfig<16, false, TileShape<16, 32, true, 1, 4, 2, 5, 128>,
                 TileShape<16, 64, true, 1, 4, 2, 5, 64>, TileShape<16, 32, false, 1, 4, 2, 8, 128>,
                 TileShape<16, 64, false, 1, 4, 2, 5, 128>,
                 TileShape<16, 128, false, 1, 4, 2, 5, 64>>;
static_assert(ThinDecodeConfig::BM == kThinDecodeTileM, "thin_decode_max_tokens uses it");
// 48-row m-tiles where experts average close to 32 rows, so that most experts fit one m-tile
// (tall_decode_min_tokens, tile_choice.hpp). A stage carries half again as many A rows, so the
// 24 KB shapes drop to 3 stages and the 20 KB ones to 4 (bench/NOTES.md, version 62).
using TallDecodeConfig =
    KernelConfig<48, false, TileShape<48, 32, true, 1, 4, 2, 3, 128>,
                 TileShape<48, 64, true, 1, 4, 2, 4, 64>, TileShape<48, 32, false, 1, 4, 2, 5, 128>,
                 TileShape<48, 64, false, 1, 4, 2, 3, 128>,
                 TileShape<48, 128, false, 1, 4, 2, 4, 64>>;
static_assert(TallDecodeConfig::BM == kTallDecodeTileM, "tall_decode_min_tokens uses it");
// Two blocks per SM (__launch_bounds__ below) need both blocks' shared memory in the 228 KB of
// an sm_90 SM, with the static tile state (up to 4480 bytes, by ptxas) and 1 KB reserved per
// block besides. Only the dynamic part is checked here; a kernel whose static state grew past
// the rest would silently run one block per SM (the host sizes its grid from the occupancy it
// reads).
template <class Cfg>
constexpr bool two_blocks_per_sm() {
  constexpr int kLimit = 106 * 1024;
  return Cfg::template smem_bytes<typename Cfg::GateUp, typename Cfg::Down0>() <= kLimit &&
         Cfg::template smem_bytes<typename Cfg::GateUp, typename Cfg::Down1>() <= kLimit &&
         Cfg::template smem_bytes<typename Cfg::GateUp, typename Cfg::Down2>() <= kLimit &&
         Cfg::template smem_bytes<typename Cfg::GateUpWide, typename Cfg::Down2>() <= kLimit;
}
static_assert(two_blocks_per_sm<DecodeConfig>() && two_blocks_per_sm<ThinDecodeConfig>() &&
                  two_blocks_per_sm<TallDecodeConfig>(),
              "two decode blocks per SM");
// Many rows per expert (prefill): one shape each, on the warpgroup MMA where built for sm_90a.
using PrefillGateUp = TileShape<64, 64, true, 4, 2, 1, 4, 64, true>;
using PrefillConfig = KernelConfig<64, true, PrefillGateUp, PrefillGateUp,
                                   TileShape<64, 64, false, 4, 2, 1, 4, 64, true>>;

// Thread 0 of a one-token launch's block: waits until control word `w` is set, once per block
// (`seen` remembers it); `site` names the wait if it times out. False when the launch is being
// abandoned.
template <typename T, class Tr>
__device__ bool wait_once(const KernelParams<T>& p, ControlWord w, ErrorSite site, bool& seen,
                          Tr& tr) {
  if (!seen) {
    const std::uint64_t w0 = tr.now();
    bool spun = false;
    seen = wait_at_least(p.ctl, p.ctl.word(w), 1, p.timeout_ns, site, spun);
    if (spun) tr.record(TraceKind::Wait, w0, -1, -1);
  }
  return seen;
}

// One-token launch, every thread of the block: the expert of pair k into `expert`, from the
// caller's routing, or once the routing ticket has chosen the token's experts. False when the
// launch is being abandoned or k's caller-given expert is out of range (its routing ticket
// reports that).
template <typename T, class Tr>
__device__ bool one_token_expert(const KernelParams<T>& p, std::uint32_t k, bool& seen, int& expert,
                                 bool& ok, Tr& tr) {
  if (threadIdx.x == 0) {
    if (p.user_ids != nullptr) {
      expert = __ldg(p.user_ids + k);
      ok = expert >= 0 && expert < p.experts;
    } else {
      ok = wait_once(p, kRoutingDone, kSiteRoutingDone, seen, tr);
      // Written by another block this launch: through L2, after the acquire.
      if (ok) expert = __ldcg(p.pair_expert + k);
    }
  }
  __syncthreads();
  return ok;
}

// One-token launch, every thread of the block: before its first down tile, the block waits for
// routing's tables (the m-tile records, pair weights and zeroed combine counters), as the tiles
// of other launches do in claim_ticket. False when the launch is being abandoned.
template <typename T, class Tr>
__device__ bool await_tables(const KernelParams<T>& p, bool& seen, bool& ok, Tr& tr) {
  if (threadIdx.x == 0) ok = wait_once(p, kTasksTotal, kSiteTasksTotal, seen, tr);
  __syncthreads();
  return ok;
}

template <class Cfg, class GateUp, class Down, typename T, bool kTraced>
__global__ void __launch_bounds__(kThreads, 2)
    moe_kernel(const __grid_constant__ KernelParams<T> p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((kSmemAlign - smem_u32(smem_raw) % kSmemAlign) % kSmemAlign);
  __shared__ std::uint32_t s_ticket, s_total, s_mtiles;
  __shared__ int s_live;
  __shared__ bool s_flag;
  __shared__ std::uint32_t s_claim;  // ScratchClaim
  // One-token launch: whether it takes the path above, whether this block has seen the token's
  // experts and the table, and the expert of the block's gate/up tile.
  __shared__ bool s_one_token, s_experts_seen, s_tables_seen;
  __shared__ int s_expert;
  // Table-free launch: whether it is one, and what the block derived from the pairs (an empty
  // struct in the kernels that never are).
  __shared__ bool s_table_free;
  __shared__ std::conditional_t<Cfg::table_free, LiveExperts, NoLiveExperts> s_live_experts;

  wait_for_prior_grids();
  const RouterSplit rs = p.rsplit;  // router_split() for this kernel, by the host
  const std::uint32_t routing_tickets = static_cast<std::uint32_t>(rs.tasks());
  const int ng = (p.inter + GateUp::BN - 1) / GateUp::BN;
  const int nd = (p.hidden + Down::BN - 1) / Down::BN;
  // Tile tasks per m-tile: gate/up column tiles, then down column tiles x K slices. The tile
  // table publishes routing + m-tiles x this as the ticket total, and the blocks divide it back.
  const std::uint32_t tasks_per_mtile = static_cast<std::uint32_t>(ng + nd * p.dsplit.kslices);
  if (threadIdx.x == 0) {
    s_total = 0;
    pipe_barriers_init();
    s_live = live_token_count(p);
    s_claim = kClaimPending;
    s_one_token = !Cfg::tile_router && p.one_token_gateup && s_live == 1;
    s_experts_seen = false;
    s_tables_seen = false;
    s_table_free = table_free_launch<Cfg>(p, s_live);
    if (s_one_token) {
      // What finish_routing publishes for one live token, known before it runs.
      s_mtiles = static_cast<std::uint32_t>(p.top_k);
      s_total = one_token_total(routing_tickets, p.top_k, tasks_per_mtile);
    }
  }
  Tracer<kTraced> tr(p.trace);

  for (;;) {
    // Thread 0 alone claims, as soon as it is done with the previous ticket (the other warps'
    // ends and warp 1's release of a gate/up count run beside the claim's round trip), and
    // waits for the ticket total when the ticket is past routing; the block reads both only
    // after the second barrier (the first one: every warp has read the previous ticket). The
    // prefill kernel's first tile also waits for the row map (routing_ticket.cuh).
    std::uint32_t claimed = 0;
    if (threadIdx.x == 0) {
      std::uint32_t row_maps = 0, routing_counts = 0;
      if constexpr (Cfg::tile_router) {
        row_maps = rs.live_selects(s_live);
      } else if (s_table_free) {
        const int chunks = (s_live + rs.chunk_tokens - 1) / rs.chunk_tokens;
        routing_counts = static_cast<std::uint32_t>(chunks);
      }
      claimed = claim_ticket<Cfg::tile_router>(p, routing_tickets, tasks_per_mtile,
                                               {s_claim, s_total, s_mtiles}, tr, row_maps,
                                               routing_counts);
    }
    // Everyone is done with the previous ticket's shared state, and its ordinary writes are
    // ordered before the copy engine's next writes to the same bytes.
    fence_proxy_async_smem();
    __syncthreads();
    if (threadIdx.x == 0) s_ticket = claimed;
    __syncthreads();
    const std::uint32_t ticket = s_ticket;
    if (ticket == kNoTicket) break;

    if (ticket < routing_tickets) {
      // (s_live is read here, from shared memory: a register held across the tile loop would
      // spill.)
      run_routing_ticket<Cfg, Down>(p, smem, ticket, routing_tickets, tasks_per_mtile, nd, s_live,
                                    s_flag, tr);
      continue;
    }

    if constexpr (Cfg::table_free) {
      if (s_total == kTotalToDerive) {
        // Table-free: the block's first tile ticket, past every routing ticket's count.
        load_live_experts(p, s_live_experts, s_live * p.top_k);
        if (threadIdx.x == 0) {
          s_mtiles = s_live_experts.count;
          s_total = routing_tickets + s_live_experts.count * tasks_per_mtile;
        }
        __syncthreads();
      }
    }
    if (ticket >= s_total) break;  // s_total is set: thread 0 waited for it above

    const std::uint32_t mtiles = s_mtiles;  // set with s_total
    const std::uint32_t task = ticket - routing_tickets;
    int ntile = 0;
    const bool one_token = s_one_token;
    const bool table_free = s_table_free;  // false in the kernels that never are
    if (task < mtiles * ng) {
      if (table_free) {
        if constexpr (Cfg::table_free) {
          const MTile mt = locate_live_tile(s_live_experts, task / ng, s_live * p.top_k);
          ntile = static_cast<int>(task % ng);
          if (!gateup_tile<GateUp>(p, smem, mt, ntile, ng, &p.expert_count[mt.expert], false, tr,
                                   s_live_experts.pairs)) {
            break;
          }
        }
      } else if (one_token) {
        // Pair k = m-tile k: one row, token 0's, h row k (register_pair's layout).
        const std::uint32_t k = task / ng;
        if (!one_token_expert(p, k, s_experts_seen, s_expert, s_flag, tr)) break;
        ntile = static_cast<int>(task % ng);
        const MTile mt{k, static_cast<std::uint32_t>(s_expert), k, 1};
        if (!gateup_tile<GateUp>(p, smem, mt, ntile, ng, p.ctl.word(kOneTokenDone) + k, true, tr)) {
          break;
        }
      } else {
        const MTile mt = locate_tile<Cfg::BM>(p, task, ng, ntile);
        if (!gateup_tile<GateUp>(p, smem, mt, ntile, ng, &p.mtile_done[mt.slot], false, tr)) break;
      }
    } else {
      if (one_token && !await_tables(p, s_tables_seen, s_flag, tr)) break;
      // Down tasks per m-tile: column tiles x K slices, the slices of a column tile adjacent.
      const int ks = p.dsplit.kslices;
      const std::uint32_t i = task - mtiles * ng;
      MTile mt{};
      std::uint32_t* done = nullptr;
      const std::int32_t* local_pairs = nullptr;
      if (table_free) {
        if constexpr (Cfg::table_free) {
          mt = locate_live_tile(s_live_experts, i / (nd * ks), s_live * p.top_k);
          ntile = static_cast<int>(i % (nd * ks));
          done = &p.expert_count[mt.expert];
          local_pairs = s_live_experts.pairs;
        }
      } else {
        mt = locate_tile<Cfg::BM>(p, i, nd * ks, ntile);
        done = one_token ? p.ctl.word(kOneTokenDone) + mt.slot : &p.mtile_done[mt.slot];
      }
      if (!down_tile<Down>(p, smem, mt, ntile / ks, ntile % ks, nd, ng, done, tr, local_pairs)) {
        break;
      }
    }
  }
  allow_dependent_grids();
  if (s_claim == kClaimRefused) return;  // read after the loop's last barrier
  tr.finish();
  finish_launch<kThreads, Cfg::tile_router>(p, rs.chunks, s_flag);
}

}  // namespace flashmoe::detail
