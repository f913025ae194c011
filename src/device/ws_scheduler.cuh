// Tile scheduler of the warp-specialised prefill engine: the producer thread claims tickets
// from the launch's queue, turns each into a job (an m-tile's gather into the expert-sorted copy
// of x, a gate/up tile or a down tile), waits for what the job reads, and hands it to the
// consumer warpgroups through a small ring of job slots in shared memory. It claims the next
// ticket while the current job's stages stream, so the consumers never wait for a ticket's round
// trip. Ticket order (moe_ws_kernel.cuh): routing, then per launch M gathers, then M x NG gate/up
// and M x ND x KS down tiles in the order of ws_ticket_order.hpp; a job waits only on jobs with
// smaller tickets.
#pragma once

#include <cstdint>

#include "params.cuh"
#include "pipeline.cuh"
#include "sync.cuh"
#include "tile_table.cuh"
#include "ws_ticket_order.hpp"

namespace flashmoe::detail {

enum WsJobKind : std::uint32_t { kJobGather, kJobGateUp, kJobDown, kJobStop };

struct WsJob {
  std::uint32_t kind, slot, expert, row0, rows;
  std::int32_t ntile, kslice;
};

// Producer -> consumers: `full` completes on the producer's arrival after it wrote the slot;
// `empty` on one arrival per consumer warp once the warp read it.
template <int Depth>
struct JobRing {
  std::uint64_t full[Depth];
  std::uint64_t empty[Depth];
  WsJob job[Depth];

  __device__ void init(std::uint32_t consumer_warps) {
    for (int s = 0; s < Depth; ++s) {
      mbar_init(smem_u32(&full[s]), 1);
      mbar_init(smem_u32(&empty[s]), consumer_warps);
    }
  }
};

// What every job of a launch needs to find its m-tile and its tiles.
struct WsGrid {
  std::uint32_t routing_tickets, mtiles, total;
  int ng, nd, kslices;  // gate/up column tiles, down column tiles, K slices of a down tile
};

// Ticket -> job. `ticket` is past routing; at or past g.total (or kNoTicket) is the stop job.
template <int BM, typename T>
__device__ WsJob decode_job(const WsKernelParams<T>& p, const WsGrid& g, std::uint32_t ticket) {
  WsJob job{kJobStop, 0, 0, 0, 0, 0, 0};
  if (ticket >= g.total) return job;
  std::uint32_t task = ticket - g.routing_tickets;
  int ntile = 0;
  MTile mt;
  // The gather parts come from the parameters, not WsGrid, which the consumers keep live (one
  // more register there serialises the 128-row engine's wgmma: ptxas C7511).
  const std::uint32_t gathers = g.mtiles * p.gather_parts;
  if (task < gathers) {
    job.kind = kJobGather;  // ntile: the part
    mt = locate_tile<BM>(p, task, static_cast<int>(p.gather_parts), ntile);
  } else {
    const int ndk = g.nd * g.kslices;
    const WsTileSlot at = ws_tile_at(task - gathers, g.mtiles, static_cast<std::uint32_t>(g.ng),
                                     static_cast<std::uint32_t>(ndk), p.down_lead);
    if (at.gateup) {
      job.kind = kJobGateUp;
      mt = locate_tile<BM>(p, at.index, g.ng, ntile);
    } else {
      job.kind = kJobDown;
      mt = locate_tile<BM>(p, at.index, ndk, ntile);
      job.kslice = ntile % g.kslices;
      ntile /= g.kslices;
    }
  }
  job.slot = mt.slot;
  job.expert = mt.expert;
  job.row0 = mt.row0;
  job.rows = mt.rows;
  job.ntile = ntile;
  return job;
}

// The m-tile's count a job waits for: its gathers (gate/up: P), then its NG gate/up tiles too
// (down: P + NG). mtile_done counts both.
__device__ __forceinline__ std::uint32_t job_dependency(const WsJob& job, std::uint32_t parts,
                                                        int ng) {
  return job.kind == kJobGateUp ? parts
         : job.kind == kJobDown ? parts + static_cast<std::uint32_t>(ng)
                                : 0u;
}

// The 256 consumer threads agree: true when `v` holds in all of them. Also a barrier of the
// team (named barrier 1), with its memory ordering.
__device__ __forceinline__ bool team_all(bool v) {
  std::uint32_t r;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.and.pred q, 1, 256, p;\n"
      " selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(r)
      : "r"(static_cast<std::uint32_t>(v))
      : "memory");
  return r != 0;
}

// Generic-proxy writes of this thread to global memory (the sorted copy of x, h) are ordered
// before later copy-engine reads of them, and an acquire before this fence orders the copy
// engine's reads after it.
__device__ __forceinline__ void fence_proxy_async_global() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
#endif
}

}  // namespace flashmoe::detail
