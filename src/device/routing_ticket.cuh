// One routing ticket of the persistent kernel (moe_kernel.cuh has the ticket order): a router
// task of a token chunk (CUDA-core logits in the decode kernels, a tensor-core tile over a K
// slice in the prefill kernel), then, by the chunk's last router task (or at once with caller
// routing), the chunk's top-k; the last chunk's block builds the tile table and publishes the
// ticket total. Every thread of the 256-thread block calls it; `flag` is the block's shared
// decision word.
#pragma once

#include <cstdint>

#include "expert_tiles.cuh"
#include "params.cuh"
#include "routing.cuh"
#include "sync.cuh"
#include "trace.cuh"

namespace flashmoe::detail {

template <class Cfg, class Down, typename T>
__device__ __forceinline__ void run_routing_ticket(const KernelParams<T>& p, unsigned char* smem,
                                                   std::uint32_t ticket,
                                                   std::uint32_t routing_tickets,
                                                   std::uint32_t tasks_per_mtile, int nd, int live,
                                                   bool& s_flag, Tracer& tr) {
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
    const int within = static_cast<int>(ticket) % per_chunk;
    if constexpr (Cfg::tile_router) {
      router_tile<Down>(p, smem, t0, live, (within / rs.kslices) * Down::BN, within % rs.kslices,
                        static_cast<int>(ticket), tr);
    } else {
      static_assert(sizeof(ScanSmem) >= kRouterTokens * kRouterExperts * kThreads / 32 * 4,
                    "the router's reduction fits the dynamic shared memory");
      router_logits(p, reinterpret_cast<float*>(smem), t0, live, within * kRouterExperts);
      tr.record(TraceKind::Router, start, -1, static_cast<int>(ticket));
    }
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
  if (Cfg::tile_router && !user_routing) {
    sum_router_partials(p, t0, t_end);
    team_sync();  // the block's global writes are visible to the block after this
  }
  for (int t = t0 + (threadIdx.x >> 5); t < t_end; t += kThreads / 32) {
    if (user_routing) {
      take_user_routing(p, t);
    } else {
      select_experts(p, t);
    }
  }
  // The combine counters of the chunk's tokens start at zero: they live in the scratch,
  // which other Layers' forwards also write. Ordered before every down tile by the
  // routing-done count and the tile table's release.
  for (int i = threadIdx.x; i < (t_end - t0) * nd; i += kThreads) {
    p.combine_done[(t0 + i / nd) * p.combine_stride + i % nd] = 0;
  }
  team_sync();
  if (threadIdx.x == 0) {
    // Decided by thread 0 alone: the abort flag may change while the block reads it.
    // One chunk (T <= 4): this block is the last, and its own writes need no hand-off, so
    // the device-scope round trip is skipped.
    s_flag = (live_chunks == 1 || fetch_add_acq_rel(p.ctl.word(kRoutingDone), 1) ==
                                      static_cast<std::uint32_t>(live_chunks) - 1) &&
             !p.ctl.aborted();
  }
  tr.record(TraceKind::Routing, start, -1, chunk);
  team_sync();
  if (s_flag) {
    start = tr.now();
    build_tile_table<T, Cfg::BM>(p, smem, live, routing_tickets, tasks_per_mtile);
    tr.record(TraceKind::Routing, start, -1, -1);
  }
}

}  // namespace flashmoe::detail
