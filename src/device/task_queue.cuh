// The launch's task queue, shared by both persistent kernels: thread 0's claim of the block's
// next ticket (with the scratch claim on the block's first one, and the wait for the ticket
// total once past routing), and the end of the launch, where the last block out resets the
// Layer's state for the next forward.
#pragma once

#include <cstdint>

#include "params.cuh"
#include "sync.cuh"
#include "trace.cuh"

namespace flashmoe::detail {

inline constexpr std::uint32_t kNoTicket = 0xffffffffu;
// The ticket total of a table-free launch once its routing is counted: each block derives the
// real one from the pairs (LiveExperts, tile_table.cuh).
inline constexpr std::uint32_t kTotalToDerive = 0xfffffffeu;
// A block's scratch claim: taken with its first ticket (kClaimPending until then).
enum ScratchClaim : std::uint32_t { kClaimPending, kClaimOwned, kClaimRefused };

// What the claim keeps in shared memory (references to the block's words): the claim state, and
// the ticket total and m-tile count of the launch once known (total 0 until then).
struct QueueState {
  std::uint32_t &claim, &total, &mtiles;
};

// Thread 0: the block's next ticket, or kNoTicket when the block is done (the launch is
// abandoned, the block was refused the scratch, or the wait for the tile table ended).
// kRowMaps (prefill kernels): the block's first tile also waits for the `row_maps` row-map
// tickets, whose part of the table every tile reads, directly or through its m-tile's earlier
// tiles. `routing_counts` > 0: a table-free launch, whose first tile waits for that many
// routing tickets' counts instead, and leaves the total to derive (kTotalToDerive).
template <bool kRowMaps = false, typename T, class Tr>
__device__ __forceinline__ std::uint32_t claim_ticket(const KernelParams<T>& p,
                                                      std::uint32_t routing_tickets,
                                                      std::uint32_t tasks_per_mtile, QueueState q,
                                                      Tr& tr, std::uint32_t row_maps = 0,
                                                      std::uint32_t routing_counts = 0) {
  std::uint32_t t = p.ctl.aborted() ? kNoTicket : fetch_add_relaxed(p.ctl.word(kQueueHead), 1);
  if (q.claim == kClaimPending) {
    // The block's first ticket: the scratch claim's round trip runs beside the ticket's.
    // Refused (another launch owns the scratch): the block writes nothing and leaves
    // uncounted. The ticket it took is lost: its own launch is refused anyway, and when
    // both forwards are one Layer's, the owner then ends in DeviceTimeout (layer.hpp).
    q.claim = claim_scratch(p.owner, launch_owner_id()) ? kClaimOwned : kClaimRefused;
    if (q.claim == kClaimRefused) {
      p.ctl.report(StatusCode::WorkspaceBusy, kSiteScratchBusy);
      t = kNoTicket;
    }
  }
  if (t != kNoTicket && t >= routing_tickets && q.total == 0) {
    const std::uint64_t t0 = tr.now();
    bool spun = false;
    std::uint32_t total = 0;
    if (routing_counts > 0) {
      if (wait_at_least(p.ctl, p.ctl.word(kRoutingDone), routing_counts, p.timeout_ns,
                        kSiteRoutingDone, spun)) {
        q.total = kTotalToDerive;
      } else {
        t = kNoTicket;  // abandoned
      }
    } else if (wait_at_least(p.ctl, p.ctl.word(kTasksTotal), 1, p.timeout_ns, kSiteTasksTotal,
                             spun, total)) {
      q.mtiles = (total - routing_tickets) / tasks_per_mtile;
      q.total = total;
    } else {
      t = kNoTicket;  // abandoned
    }
    if constexpr (kRowMaps) {
      bool map_spun = false;
      if (t != kNoTicket && !wait_at_least(p.ctl, p.ctl.word(kRowMapDone), row_maps, p.timeout_ns,
                                           kSiteRowMap, map_spun)) {
        t = kNoTicket;  // abandoned
      }
      spun = spun || map_spun;
    }
    if (spun) tr.record(TraceKind::Wait, t0, -1, -1);
  }
  return t;
}

// Every thread of the block, after its last task: the last block out resets the launch state
// for the next forward. `flag` is a shared word of the block.
// kRowMaps: the prefill kernels' row-map count is reset too.
template <int kBlockThreads, bool kRowMaps, typename T>
__device__ __forceinline__ void finish_launch(const KernelParams<T>& p, int router_chunks,
                                              bool& flag) {
  __syncthreads();
  if (threadIdx.x == 0) {
    flag = fetch_add_acq_rel(p.ctl.word(kExitCount), 1) == gridDim.x - 1;
  }
  __syncthreads();
  if (!flag) return;
  const bool aborted = load_acquire(p.ctl.word(kAbort)) != 0;
  for (int e = threadIdx.x; e < p.experts; e += kBlockThreads) p.expert_count[e] = 0;
  if (aborted) {
    // Counters whose last user never came: clear all of them (error path only). The combine
    // counters are zeroed by the next launch's routing.
    for (int i = threadIdx.x; i < router_chunks; i += kBlockThreads) p.router_done[i] = 0;
  }
  if constexpr (!kRowMaps) {
    // The decode kernels' one-token gate/up counters are counted before routing has run, so
    // nobody can zero them at routing time: the last block out does, for the next launch.
    if (threadIdx.x < kControlStride) store_relaxed(p.ctl.word(kOneTokenDone) + threadIdx.x, 0u);
  }
  __syncthreads();  // the whole block's resets are ordered before the release below
  if (threadIdx.x == 0) {
    for (ControlWord w : {kQueueHead, kRoutingDone, kTasksTotal, kAbort, kExitCount}) {
      store_relaxed(p.ctl.word(w), 0);
    }
    if constexpr (kRowMaps) store_relaxed(p.ctl.word(kRowMapDone), 0);
    release_scratch(p.owner);
  }
}

}  // namespace flashmoe::detail
