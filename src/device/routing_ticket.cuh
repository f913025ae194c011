// One routing ticket of the persistent kernels (moe_kernel.cuh has the ticket order).
// Decode kernels: a router task of a token chunk (CUDA-core logits), then, by the chunk's last
// router task (or at once with caller routing), the chunk's top-k. Prefill kernels: a router
// task is a tensor-core tile over a K slice; then select tickets, each waiting for its tokens'
// router tasks, sum the partials and select (or take the caller's routing). The last routing
// ticket to finish builds the tile table and publishes the ticket total. Every thread of the
// 256-thread team calls it; `flag` is the block's shared decision word.
#pragma once

#include <cstdint>

#include "expert_tiles.cuh"
#include "params.cuh"
#include "routing.cuh"
#include "sync.cuh"
#include "trace.cuh"

namespace flashmoe::detail {

// The ticket total of a launch with one live token: its K pairs are its m-tiles (row 101), so
// the total is known before routing runs (moe_kernel.cuh's one-token path reads it at launch).
__device__ __forceinline__ std::uint32_t one_token_total(std::uint32_t routing_tickets, int top_k,
                                                         std::uint32_t tasks_per_mtile) {
  return routing_tickets + static_cast<std::uint32_t>(top_k) * tasks_per_mtile;
}

// Whether a decode launch is table-free (table_free_tiles; tile_table.cuh, LiveExperts): only
// with the kernel's own routing, whose K experts of a token are distinct.
template <class Cfg, typename T>
__device__ __forceinline__ bool table_free_launch(const KernelParams<T>& p, int live) {
  if constexpr (Cfg::table_free) {
    return p.table_free && p.user_ids == nullptr && table_free_tiles(live, p.top_k, Cfg::BM);
  } else {
    return false;
  }
}

// The end of a ticket that routed tokens [t0, t_end): their combine counters zeroed, the ticket
// counted, and the tile table built by the last of `live_tickets` (`own_mtiles`: the pairs
// wrote it as they were registered, and only its count is published; `table_free`: no table,
// the tiles wait for every ticket's count). `start`: the routing event's start.
// `chunks_to_reset`: router_done words the table's builder clears (the prefill kernels' select
// tickets read them until then; 0 in decode, where each chunk's last task clears its own).
template <class Cfg, typename T, class Tr>
__device__ __forceinline__ void finish_routing(const KernelParams<T>& p, unsigned char* smem,
                                               int t0, int t_end, int nd, int live,
                                               int live_tickets, int trace_tile,
                                               int chunks_to_reset, std::uint32_t routing_tickets,
                                               std::uint32_t tasks_per_mtile, bool own_mtiles,
                                               bool table_free, bool& s_flag,
                                               std::uint64_t start, Tr& tr) {
  // The combine counters of the tokens start at zero: they live in the scratch, which other
  // Layers' forwards also write. Ordered before every down tile by the routing-done count and
  // the tile table's release.
  for (int i = threadIdx.x; i < (t_end - t0) * nd; i += kThreads) {
    p.combine_done[(t0 + i / nd) * p.combine_stride + i % nd] = 0;
  }
  team_sync();
  if (table_free) {
    if (threadIdx.x == 0 && p.fault != kFaultDropRoutingSignal) {
      add_release(p.ctl.word(kRoutingDone), 1);
    }
    tr.record(TraceKind::Routing, start, -1, trace_tile);
    return;
  }
  if (threadIdx.x == 0) {
    // Decided by thread 0 alone: the abort flag may change while the block reads it.
    // One ticket: this block is the last, and its own writes need no hand-off, so the
    // device-scope round trip is skipped.
    s_flag = (live_tickets == 1 || fetch_add_acq_rel(p.ctl.word(kRoutingDone), 1) ==
                                       static_cast<std::uint32_t>(live_tickets) - 1) &&
             !p.ctl.aborted();
  }
  tr.record(TraceKind::Routing, start, -1, trace_tile);
  team_sync();
  if (s_flag) {
    start = tr.now();
    for (int i = threadIdx.x; i < chunks_to_reset; i += kThreads) p.router_done[i] = 0;
    if (own_mtiles) {
      // The pairs wrote their m-tile records (register_pair), ordered before this by the
      // barriers above: only the count is left to publish.
      if (threadIdx.x == 0) {
        store_release(p.ctl.word(kTasksTotal),
                      one_token_total(routing_tickets, p.top_k, tasks_per_mtile));
      }
    } else {
      build_tile_table<T, Cfg::BM, !Cfg::tile_router>(p, smem, live, routing_tickets,
                                                      tasks_per_mtile);
    }
    tr.record(TraceKind::Routing, start, -1, -1);
  }
}

// Prefill kernels (tile router): router task `ticket` (chunk-major, so that the first chunks'
// select tickets can start while later chunks' router tasks still run), select ticket
// `ticket - router tasks`, or the row-map ticket of the select ticket `ticket - router tasks -
// selects`, which waits for the tile table.
template <class Cfg, class Down, typename T, class Tr>
__device__ __forceinline__ void run_tile_routing_ticket(const KernelParams<T>& p,
                                                        unsigned char* smem, std::uint32_t ticket,
                                                        std::uint32_t routing_tickets,
                                                        std::uint32_t tasks_per_mtile, int nd,
                                                        int live, bool& s_flag, Tr& tr) {
  const RouterSplit rs = p.rsplit;
  const int live_chunks = max(1, (live + rs.chunk_tokens - 1) / rs.chunk_tokens);
  const int per_chunk = rs.eslices * rs.kslices;
  const int router_tasks = rs.router_tasks();
  // Padded batches: tokens [live, num_tokens) are not routed. Chunks and select tickets past
  // the live tokens are skipped; the first of each always runs, so that the tile table is
  // published even for none.
  if (static_cast<int>(ticket) < router_tasks) {
    const int chunk = static_cast<int>(ticket) / per_chunk;
    if (chunk >= live_chunks) return;
    const int within = static_cast<int>(ticket) % per_chunk;
    router_tile<Down>(p, smem, chunk * rs.chunk_tokens, live, (within / rs.kslices) * Down::BN,
                      within % rs.kslices, static_cast<int>(ticket), tr);
    team_sync();  // every partial of the task is written before it is counted
    if (threadIdx.x == 0) add_release(&p.router_done[chunk], 1);
    return;
  }
  int select = static_cast<int>(ticket) - router_tasks;
  const int live_selects = rs.live_selects(live);
  const bool row_map = select >= rs.selects;
  if (row_map) select -= rs.selects;
  if (select >= live_selects) return;
  const int t0 = select * rs.select_tokens, t_end = min(t0 + rs.select_tokens, live);
  const bool user_routing = p.user_ids != nullptr;
  std::uint64_t start = tr.now();
  if (row_map) {
    // Once every select ticket is counted, the expert counts are final: the ticket scans them
    // itself while the last select ticket builds the tile table, instead of waiting for the
    // table (bench/NOTES.md row 130). A single select ticket skips its count (finish_routing):
    // its row map waits for the table and reads the table's first rows.
    const bool scan = live_selects > 1;
    if (threadIdx.x == 0) {
      bool spun = false;
      s_flag = scan ? wait_at_least(p.ctl, p.ctl.word(kRoutingDone),
                                    static_cast<std::uint32_t>(live_selects), p.timeout_ns,
                                    kSiteSelectsDone, spun)
                    : wait_at_least(p.ctl, p.ctl.word(kTasksTotal), 1, p.timeout_ns,
                                    kSiteTasksTotal, spun);
      if (spun) tr.record(TraceKind::Wait, start, -1, -1);
    }
    team_sync();
    if (!s_flag) return;  // abandoned: the launch has failed
    start = tr.now();
    // Each expert's first row, in shared memory for the scattered lookups.
    ScanSmem& scan_smem = *reinterpret_cast<ScanSmem*>(smem);
    std::uint32_t* row0 = scan_smem.offset;
    if (scan) {
      expert_row_offsets(p, scan_smem);
    } else {
      // Written by another block this launch: through L2.
      for (int e = threadIdx.x; e < p.experts; e += kThreads) row0[e] = __ldcg(p.expert_row0 + e);
    }
    team_sync();
    write_row_map(p, row0, static_cast<std::int64_t>(t0) * p.top_k,
                  static_cast<std::int64_t>(t_end) * p.top_k);
    team_sync();  // the whole map slice is written before it is counted
    if (threadIdx.x == 0) add_release(p.ctl.word(kRowMapDone), 1);
    tr.record(TraceKind::Routing, start, -3, select);
    return;
  }
  if (!user_routing) {
    if (threadIdx.x == 0) {
      // Every router task of the chunks holding the ticket's tokens (one chunk unless a chunk
      // is shorter than a ticket).
      bool ok = true, spun = false;
      const int last = t_end > t0 ? (t_end - 1) / rs.chunk_tokens : t0 / rs.chunk_tokens;
      for (int c = t0 / rs.chunk_tokens; ok && c <= last; ++c) {
        bool s = false;
        ok = wait_at_least(p.ctl, &p.router_done[c], static_cast<std::uint32_t>(per_chunk),
                           p.timeout_ns, kSiteRouterDone, s);
        spun = spun || s;
      }
      s_flag = ok;
      if (spun) tr.record(TraceKind::Wait, start, -2, t0 / rs.chunk_tokens);
    }
    team_sync();
    if (!s_flag) return;  // abandoned: the launch has failed
    start = tr.now();
    sum_router_partials(p, t0, t_end);
    team_sync();  // the block's global writes are visible to the block after this
  }
  for (int t = t0 + (threadIdx.x >> 5); t < t_end; t += kThreads / 32) {
    if (user_routing) {
      take_user_routing(p, t, PairRow::Counted);
    } else {
      select_experts(p, t, PairRow::Counted);
    }
  }
  finish_routing<Cfg>(p, smem, t0, t_end, nd, live, live_selects, select,
                      user_routing ? 0 : live_chunks, routing_tickets, tasks_per_mtile, false,
                      false, s_flag, start, tr);
}

template <class Cfg, class Down, typename T, class Tr>
__device__ __forceinline__ void run_routing_ticket(const KernelParams<T>& p, unsigned char* smem,
                                                   std::uint32_t ticket,
                                                   std::uint32_t routing_tickets,
                                                   std::uint32_t tasks_per_mtile, int nd, int live,
                                                   bool& s_flag, Tr& tr) {
  if constexpr (Cfg::tile_router) {
    run_tile_routing_ticket<Cfg, Down>(p, smem, ticket, routing_tickets, tasks_per_mtile, nd, live,
                                       s_flag, tr);
  } else {
    const RouterSplit rs = p.rsplit;
    const bool user_routing = p.user_ids != nullptr;
    // Chunk-major, so that the first chunk's top-k can start while later chunks' router
    // tasks still run.
    // Padded batches: tokens [live, num_tokens) are not routed. Chunks past the live tokens
    // are skipped; chunk 0 always runs, so that the tile table is published even for none.
    const int live_chunks = max(1, (live + rs.chunk_tokens - 1) / rs.chunk_tokens);
    const int per_chunk = rs.eslices * rs.kslices;
    const int chunk = static_cast<int>(ticket) / per_chunk;
    if (chunk >= live_chunks) return;
    const int t0 = chunk * rs.chunk_tokens;
    std::uint64_t start = tr.now();
    if (!user_routing) {
      static_assert(sizeof(ScanSmem) >= kRouterTokens * kRouterExperts * kThreads / 32 * 4,
                    "the router's reduction fits the dynamic shared memory");
      router_logits(p, reinterpret_cast<float*>(smem), t0, live,
                    (static_cast<int>(ticket) % per_chunk) * kRouterExperts);
      tr.record(TraceKind::Router, start, -1, static_cast<int>(ticket));
      team_sync();  // every partial of the task is written before it is counted
      start = tr.now();
      if (threadIdx.x == 0) {
        // The last of a chunk's router tasks selects that chunk's experts. Each task's logits
        // were all written before its release (the barrier above).
        std::uint32_t* c = &p.router_done[chunk];
        s_flag = fetch_add_acq_rel(c, 1) == static_cast<std::uint32_t>(per_chunk) - 1;
        if (s_flag) store_relaxed(c, 0);
      }
      team_sync();
      if (!s_flag) return;
    }
    const int t_end = min(t0 + rs.chunk_tokens, live);
    // One live token: its pairs are the m-tiles (bench/NOTES.md, row 101). Up to one pair a
    // thread: the table's builder counts them (row 181).
    const bool own_mtiles = live == 1;
    const PairRow row = own_mtiles                           ? PairRow::OwnMTile
                        : table_counts_pairs(live, p.top_k) ? PairRow::ByTable
                                                            : PairRow::Counted;
    for (int t = t0 + (threadIdx.x >> 5); t < t_end; t += kThreads / 32) {
      if (user_routing) {
        take_user_routing(p, t, row);
      } else {
        select_experts(p, t, row);
      }
    }
    if (own_mtiles && p.one_token_gateup && !user_routing && threadIdx.x < 32) {
      // The token's experts (pair_expert, by the lanes of warp 0) are what its gate/up tiles
      // wait for (moe_kernel.cuh): released now, ahead of the table's writes and barriers. The
      // word stays set until the launch ends, unlike the chunk's count.
      __syncwarp();
      if (threadIdx.x == 0 && p.fault != kFaultDropRoutingSignal) {
        store_release(p.ctl.word(kRoutingDone), 1u);
      }
    }
    finish_routing<Cfg>(p, smem, t0, t_end, nd, live, live_chunks, chunk, 0, routing_tickets,
                        tasks_per_mtile, own_mtiles, table_free_launch<Cfg>(p, live), s_flag,
                        start, tr);
  }
}

}  // namespace flashmoe::detail
