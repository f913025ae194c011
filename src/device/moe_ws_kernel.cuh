// The warp-specialised persistent MoE kernel for prefill on sm_90a: 384 threads, one block per
// SM. Ticket order, a topological order of the task graph:
//   [0, R)                 routing, exactly as the prefill kernel's (moe_kernel.cuh), on
//                          threads 0-255 (the producer warpgroup waits at the block barrier)
//   [R, R + M*P)           gathers: m-tile m's token rows copied into x_sorted, P jobs an m-tile
//                          (each a share of the columns; P = p.gather_parts)
//   [.., total)            M*NG gate/up tiles (each waits for its m-tile's P gathers) and
//                          M*ND*KS down tiles (each waits for its m-tile's gathers and NG
//                          gate/up tiles), the combine done by the last tile to finish a token
//                          slice;
//                          interleaved with a lead (ws_ticket_order.hpp) that keeps every down
//                          tile after what it waits for.
// At its first ticket past routing a block splits: warp 8 becomes the producer (it claims the
// tickets from then on, waits for each job's inputs, streams the stages), warpgroups 0-1 the
// consumers (MMAs, epilogues), with setmaxnreg moving registers to them. A job waits only on
// jobs with smaller tickets, and a producer has issued every stage of its current job before
// it waits for the next one's inputs, so the smallest unfinished ticket always progresses:
// no deadlock whatever number of blocks is resident.
#pragma once

#include <cstdint>

#include "moe_kernel.cuh"
#include "params.cuh"
#include "pipeline.cuh"
#include "routing_ticket.cuh"
#include "sync.cuh"
#include "task_queue.cuh"
#include "trace.cuh"
#include "ws_epilogue.cuh"
#include "ws_mainloop.cuh"
#include "ws_scheduler.cuh"
#include "ws_shape.cuh"

namespace flashmoe::detail {

// The prefill kernel's router tile shape, which the warp-specialised kernel's routing reuses.
using WsRouterTile = PrefillConfig::Down0;
inline constexpr int kWsJobDepth = 2;

template <class W, typename T>
struct WsRoles {
  using Main = WsMainloop<W, T>;
  using Epi = WsEpilogue<W, T>;
  using Pipe = typename Main::Pipe;
  using Jobs = JobRing<kWsJobDepth>;

  // The job ring's waits: one role waiting for the other, which is itself waiting (the producer
  // for a job's inputs, the consumers for a stage) or busy. Twice the period, so that a hang is
  // reported at the wait that caused it, whichever role started waiting first.
  __device__ static Watchdog job_ring_watchdog(const WsKernelParams<T>& p) {
    return {p.ctl, 2 * p.timeout_ns};
  }

  // The producer thread, from the block's first ticket past routing until a stop job is sent.
  __device__ static void produce(const WsKernelParams<T>& p, const WsGrid& g, Pipe& pipe,
                                 Jobs& jobs, std::uint32_t ring, std::uint32_t ticket) {
    const Watchdog wd{p.ctl, p.timeout_ns}, ring_wd = job_ring_watchdog(p);
    typename Main::State st;
    typename Main::Issued issued;
    PipeState<kWsJobDepth> js;
    for (;;) {
      WsJob job = decode_job<W::BM>(p, g, ticket);
      if (const std::uint32_t need = job_dependency(job, p.gather_parts, g.ng); need != 0) {
        bool spun = false;  // the producer is not the tracing thread
        if (wait_at_least(p.ctl, &p.mtile_done[job.slot], need, p.timeout_ns, kSiteMTileDone,
                          spun)) {
          fence_proxy_async_global();  // the copy engine reads what the acquire made visible
        } else {
          job.kind = kJobStop;  // abandoned: the launch has failed
        }
      }
      if (!pipe.wait_barrier(smem_u32(&jobs.empty[js.index]), js.phase ^ 1u, ring_wd,
                             kSiteJobRing)) {
        break;
      }
      jobs.job[js.index] = job;
      mbar_arrive(smem_u32(&jobs.full[js.index]));
      js.advance();
      if (job.kind == kJobStop) break;
      // The next ticket's round trip runs while this job's stages stream.
      const std::uint32_t next =
          p.ctl.aborted() ? kNoTicket : fetch_add_relaxed(p.ctl.word(kQueueHead), 1);
      if (job.kind != kJobGather && !Main::produce(p, pipe, st, issued, ring, job, wd)) break;
      ticket = next;
    }
    Main::drain(pipe, issued, wd);
  }

  // The 256 consumer threads, until the stop job or a failure.
  template <class Tr>
  __device__ static void consume(const WsKernelParams<T>& p, const WsGrid& g, Pipe& pipe,
                                 Jobs& jobs, std::uint32_t ring, Tr& tr) {
    __shared__ std::int32_t s_tokens[W::BM];
    __shared__ int s_count;
    const Watchdog wd{p.ctl, p.timeout_ns}, ring_wd = job_ring_watchdog(p);
    typename Main::State st;
    PipeState<kWsJobDepth> js;
    if (threadIdx.x == 0) s_count = 0;
    for (;;) {
      const bool got =
          pipe.wait_barrier(smem_u32(&jobs.full[js.index]), js.phase, ring_wd, kSiteJobRing);
      WsJob job{kJobStop, 0, 0, 0, 0, 0, 0};
      if (got) job = jobs.job[js.index];
      // Every thread has its copy of the job before any warp frees the slot.
      if (!team_all(got)) return;
      if ((threadIdx.x & 31) == 0) mbar_arrive(smem_u32(&jobs.empty[js.index]));
      js.advance();
      if (job.kind == kJobStop) return;

      const std::uint64_t t0 = tr.now();
      if (job.kind == kJobGather) {
        Epi::gather(p, job);
        if (!team_all(!pipe.is_poisoned())) return;
        Epi::publish_mtile(p, job);
        tr.record(TraceKind::Gather, t0, static_cast<int>(job.expert), static_cast<int>(job.slot));
        continue;
      }
      float acc[W::kAcc];
      if (job.kind == kJobGateUp) {
        const bool ok = Main::consume(acc, p, job, pipe, st, ring, wd);
        Epi::gateup(p, job, acc);
        if (!team_all(ok && !pipe.is_poisoned())) return;
        // Test fault: one gate/up tile never signals, so its down tiles wait for the watchdog.
        if (!(p.fault == kFaultDropMTileSignal && job.slot == 0 && job.ntile == 0)) {
          Epi::publish_mtile(p, job);
        }
        tr.record(TraceKind::GateUp, t0, static_cast<int>(job.expert),
                  static_cast<int>(job.slot) * g.ng + job.ntile);
        continue;
      }
      const typename Epi::DownRows rows = Epi::down_rows(p, job);
      const bool ok = Main::consume(acc, p, job, pipe, st, ring, wd);
      Epi::down_store(p, job, acc, rows);
      if (!team_all(ok && !pipe.is_poisoned())) return;
      tr.record(TraceKind::Down, t0, static_cast<int>(job.expert),
                (static_cast<int>(job.slot) * g.nd + job.ntile) * g.kslices + job.kslice);
      const std::uint64_t t1 = tr.now();
      Epi::down_combine(p, job, rows, s_tokens, &s_count);
      const bool combined = s_count > 0;
      team_sync();                        // the token list is free again
      if (threadIdx.x == 0) s_count = 0;  // ordered before the next job's counts by its barrier
      if (combined) tr.record(TraceKind::Combine, t1, static_cast<int>(job.expert), job.ntile);
    }
  }
};

template <class W, typename T, bool kTraced>
__global__ void __launch_bounds__(W::kThreads, 1)
    moe_ws_kernel(const __grid_constant__ WsKernelParams<T> p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Roles = WsRoles<W, T>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((kSmemAlign - smem_u32(smem_raw) % kSmemAlign) % kSmemAlign);
  __shared__ typename Roles::Pipe pipe;
  __shared__ typename Roles::Jobs jobs;
  __shared__ std::uint32_t s_ticket, s_total, s_mtiles;
  __shared__ int s_live;
  __shared__ bool s_flag;
  __shared__ std::uint32_t s_claim;  // ScratchClaim

  wait_for_prior_grids();
  const RouterSplit rs = p.rsplit;
  const std::uint32_t routing_tickets = static_cast<std::uint32_t>(rs.tasks());
  const int ng = (p.inter + W::kGateUpCols - 1) / W::kGateUpCols;
  const int nd = (p.hidden + W::BN - 1) / W::BN;
  // Per m-tile: its gathers, NG gate/up tiles, ND x KS down tiles (the tile table publishes
  // routing + m-tiles x this as the ticket total).
  const std::uint32_t tasks_per_mtile =
      p.gather_parts + static_cast<std::uint32_t>(ng + nd * p.dsplit.kslices);
  if (threadIdx.x == 0) {
    s_total = 0;
    s_live = live_token_count(p);
    s_claim = kClaimPending;
  }
  if (threadIdx.x == W::kConsumerThreads) {
    pipe.init(0, W::kConsumerThreads / 32);
    jobs.init(W::kConsumerThreads / 32);
    fence_mbarrier_init();
  }
  Tracer<kTraced> tr(p.trace);

  std::uint32_t first_tile = kNoTicket;
  for (;;) {
    // Everyone is done with the previous ticket's shared state, and its ordinary writes are
    // ordered before the copy engine's next writes to the same bytes.
    fence_proxy_async_smem();
    __syncthreads();
    if (threadIdx.x == 0) {
      // The first tile also waits for the row map (routing_ticket.cuh).
      s_ticket = claim_ticket<true>(p, routing_tickets, tasks_per_mtile,
                                    {s_claim, s_total, s_mtiles}, tr, rs.live_selects(s_live));
    }
    __syncthreads();
    const std::uint32_t ticket = s_ticket;
    if (ticket == kNoTicket) break;
    if (ticket < routing_tickets) {
      if (threadIdx.x < W::kConsumerThreads) {
        run_routing_ticket<W, WsRouterTile>(p, smem, ticket, routing_tickets, tasks_per_mtile, nd,
                                            s_live, s_flag, tr);
      }
      continue;
    }
    first_tile = ticket;  // past routing: s_total is set (the stop job when beyond it)
    break;
  }

  if (first_tile != kNoTicket) {
    // The roles, for the rest of the launch. The stages start 1024-byte aligned (the 128-byte
    // swizzle's atom).
    const WsGrid g{routing_tickets, s_mtiles, s_total, ng, nd, p.dsplit.kslices};
    const std::uint32_t ring = smem_u32(smem);
    if (threadIdx.x >= W::kConsumerThreads) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
      if (threadIdx.x / 32 == W::kConsumerThreads / 32) {
        if (threadIdx.x == W::kConsumerThreads) {
          Roles::produce(p, g, pipe, jobs, ring, first_tile);
        }
        __syncwarp();  // the warp meets the block barrier below converged
      }
    } else {
      asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
      Roles::consume(p, g, pipe, jobs, ring, tr);
    }
  }
  allow_dependent_grids();
  if (s_claim == kClaimRefused) return;
  tr.finish();
  finish_launch<W::kThreads, true>(p, rs.chunks, s_flag);
#else
  (void)p;
#endif
}

// Whether this build's device code for the current device has the engine (sm_90a): read by the
// host at Layer::create (cudaMemcpyFromSymbol), so that a build for plain sm_90 keeps the
// prefill kernel.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ const int kWsEngineCompiled = 1;
#else
__device__ const int kWsEngineCompiled = 0;
#endif

// Whether the kernels loaded for the current device wait for prior grids (sync.cuh): code built
// for an older architecture (say the sm_80 PTX, compiled at load on a newer GPU) has no wait, so
// it must not get a programmatic launch.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ const int kGridDependencyCompiled = 1;
#else
__device__ const int kGridDependencyCompiled = 0;
#endif

}  // namespace flashmoe::detail
