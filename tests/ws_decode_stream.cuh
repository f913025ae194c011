// Issue 21's decode stream, as a prototype beside the engine's parts (sm_90a; elsewhere the
// kernel is empty): the chosen experts' gate/up and down weights streamed by one launch, a
// producer warp per block issuing every box through the copy engine onto a 20-stage ring, and
// one consumer warpgroup multiplying with the weights as the MMA's 64 rows and the expert's
// (at most 16) token rows as its columns (swap-AB: decode tiles have few rows, so the weight
// rows fill the MMA's height instead of padding). Tickets: every gate/up tile (32 h columns of
// one expert: its 32 gate and 32 up rows), then every down tile (64 columns of H). A down tile
// requests its weight boxes before its expert's h is complete (they do not depend on it) and
// its h boxes once all that expert's gate/up tiles have published, so a block's stream of
// weight bytes does not stop at the phase change. Its measurement sets what the decode engine
// can reach (bench_ws_mainloop, DecodeStream rows); routing and the combine are not part of it.
// No deadlock: a block claims tickets in increasing order and gate/up tiles wait for nothing,
// so every down tile's wait ends once the blocks holding its expert's gate/up tickets run them.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device/pipeline.cuh"
#include "device/sync.cuh"
#include "device/wgmma.cuh"
#include "device/ws_scheduler.cuh"

namespace flashmoe_test {

inline constexpr int kDsThreads = 160;  // warpgroup 0 consumes, warp 4 produces
inline constexpr int kDsStages = 20;
inline constexpr int kDsTokens = 16;    // token rows of an expert (B's rows), zeros past its own
inline constexpr int kDsGateCols = 32;  // h columns of a gate/up tile
inline constexpr int kDsDownCols = 64;  // y columns of a down tile
inline constexpr int kDsJobDepth = 4;

struct DsSmem {
  static constexpr std::uint32_t kRowBytes = 128;  // 64 K columns of 16-bit values
  static constexpr std::uint32_t kA = 64 * kRowBytes, kB = kDsTokens * kRowBytes;
  static constexpr std::uint32_t kStage = (kA + kB + 1023u) / 1024u * 1024u;  // swizzle atoms
  static constexpr std::uint32_t kBytes = kDsStages * kStage + 1024;          // + alignment slack
};

// Maps (128-byte swizzle, boxes of 64 K columns): x_map [selected * kDsTokens, H] by kDsTokens
// rows, w13_map [E * 2I, H] by 32 rows (each expert's I gate rows, then its I up rows), w2_map
// [E * H, I] by 64 rows, h_map [selected * kDsTokens, I] by kDsTokens rows.
struct DecodeStreamMaps {
  CUtensorMap x, w13, w2, h;
};

struct DecodeStreamArgs {
  const int* experts;  // [selected] expert of each selected slot
  int selected, hidden, inter;
  __nv_bfloat16* h;      // [selected * kDsTokens, I]
  float* out;            // [selected * kDsTokens, H]: h W2^T, per slot and token row
  std::uint32_t* words;  // [0]: the ticket counter, [1 + s]: slot s's gate/up tiles published;
                         // zero before the launch
  flashmoe::detail::Watchdog wd;
};

struct DsJob {
  int kind;  // 0 gate/up, 1 down, 2 stop
  int slot, tile;
};

struct DsJobRing {
  std::uint64_t full[kDsJobDepth];
  std::uint64_t empty[kDsJobDepth];
  DsJob job[kDsJobDepth];
};

__device__ __forceinline__ DsJob ds_decode_ticket(const DecodeStreamArgs& g, std::uint32_t ticket) {
  const int ng = (g.inter + kDsGateCols - 1) / kDsGateCols;
  const int nd = (g.hidden + kDsDownCols - 1) / kDsDownCols;
  const std::uint32_t gateup = static_cast<std::uint32_t>(g.selected * ng);
  if (ticket < gateup) return {0, static_cast<int>(ticket) / ng, static_cast<int>(ticket) % ng};
  ticket -= gateup;
  if (ticket < static_cast<std::uint32_t>(g.selected * nd)) {
    return {1, static_cast<int>(ticket) / nd, static_cast<int>(ticket) % nd};
  }
  return {2, 0, 0};
}

__global__ void __launch_bounds__(kDsThreads, 1)
    ws_decode_stream_kernel(const __grid_constant__ DecodeStreamMaps maps,
                            const DecodeStreamArgs g) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace flashmoe::detail;
  using Pipe = Pipeline<kDsStages>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  __shared__ Pipe pipe;
  __shared__ DsJobRing jobs;
  __shared__ float s_gateup[64][kDsTokens + 1];  // a gate/up tile's products, for the pairing
  const int lane = threadIdx.x % 32;
  const int ng = (g.inter + kDsGateCols - 1) / kDsGateCols;
  const Watchdog ring_wd{g.wd.ctl, 2 * g.wd.timeout_ns};
  if (threadIdx.x == 0) {
    pipe.init(0, 4);
    for (int d = 0; d < kDsJobDepth; ++d) {
      mbar_init(smem_u32(&jobs.full[d]), 1);
      mbar_init(smem_u32(&jobs.empty[d]), 4);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (threadIdx.x >= 128) {
    if (threadIdx.x != 128) return;
    // The producer. The next ticket's round trip runs while the current one's stages stream.
    PipeState<kDsStages> st;
    PipeState<kDsJobDepth> js;
    std::uint32_t ticket = fetch_add_relaxed(g.words, 1);
    for (;;) {
      const DsJob job = ds_decode_ticket(g, ticket);
      if (!pipe.wait_barrier(smem_u32(&jobs.empty[js.index]), js.phase ^ 1u, ring_wd,
                             kSiteJobRing)) {
        return;
      }
      jobs.job[js.index] = job;
      mbar_arrive(smem_u32(&jobs.full[js.index]));
      js.advance();
      if (job.kind == 2) return;
      ticket = fetch_add_relaxed(g.words, 1);
      const int expert = g.experts[job.slot];
      const int token_row = job.slot * kDsTokens;
      if (job.kind == 0) {
        const int gate_row = expert * 2 * g.inter + job.tile * kDsGateCols;
        for (int kt = 0; kt < (g.hidden + 63) / 64; ++kt) {
          if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
          const std::uint32_t a = base + st.index * DsSmem::kStage, bar = pipe.full_barrier(st);
          pipe.producer_expect(st, DsSmem::kA + DsSmem::kB);
          tma_load_2d(a, &maps.w13, bar, kt * 64, gate_row);
          tma_load_2d(a + 32 * DsSmem::kRowBytes, &maps.w13, bar, kt * 64, gate_row + g.inter);
          tma_load_2d(a + DsSmem::kA, &maps.x, bar, kt * 64, token_row);
          st.advance();
        }
        continue;
      }
      // A down tile: its weight boxes first, as far as the ring reaches; its h boxes once the
      // expert's gate/up tiles have all published.
      const int w2_row = expert * g.hidden + job.tile * kDsDownCols;
      const int ksteps = (g.inter + 63) / 64, ahead = ksteps < kDsStages ? ksteps : kDsStages;
      const PipeState<kDsStages> first = st;
      for (int kt = 0; kt < ahead; ++kt) {
        if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
        pipe.producer_expect(st, DsSmem::kA + DsSmem::kB);
        tma_load_2d(base + st.index * DsSmem::kStage, &maps.w2, pipe.full_barrier(st), kt * 64,
                    w2_row);
        st.advance();
      }
      bool spun = false;
      if (!wait_at_least(g.wd.ctl, g.words + 1 + job.slot, static_cast<std::uint32_t>(ng),
                         g.wd.timeout_ns, kSiteMTileDone, spun)) {
        pipe.poison();
        return;
      }
      fence_proxy_async_global();  // the copy engine reads what the acquire made visible
      PipeState<kDsStages> q = first;
      for (int kt = 0; kt < ahead; ++kt) {
        tma_load_2d(base + q.index * DsSmem::kStage + DsSmem::kA, &maps.h, pipe.full_barrier(q),
                    kt * 64, token_row);
        q.advance();
      }
      for (int kt = ahead; kt < ksteps; ++kt) {
        if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
        const std::uint32_t a = base + st.index * DsSmem::kStage, bar = pipe.full_barrier(st);
        pipe.producer_expect(st, DsSmem::kA + DsSmem::kB);
        tma_load_2d(a, &maps.w2, bar, kt * 64, w2_row);
        tma_load_2d(a + DsSmem::kA, &maps.h, bar, kt * 64, token_row);
        st.advance();
      }
    }
  }

  // The consumer warpgroup.
  PipeState<kDsStages> st;
  PipeState<kDsJobDepth> js;
  for (;;) {
    if (!pipe.wait_barrier(smem_u32(&jobs.full[js.index]), js.phase, ring_wd, kSiteJobRing)) {
      return;
    }
    const DsJob job = jobs.job[js.index];
    __syncwarp();
    if (lane == 0) mbar_arrive(smem_u32(&jobs.empty[js.index]));
    js.advance();
    if (job.kind == 2) return;
    const int ksteps = job.kind == 0 ? (g.hidden + 63) / 64 : (g.inter + 63) / 64;
    float acc[kDsTokens / 2];
#pragma unroll
    for (int j = 0; j < kDsTokens / 2; ++j) acc[j] = 0.0f;
    for (int kt = 0; kt < ksteps; ++kt) {
      if (!pipe.consumer_wait(st, g.wd, kSiteWeightCopy)) return;
      const std::uint32_t a = base + st.index * DsSmem::kStage;
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        WgmmaM64K16<kDsTokens, __nv_bfloat16>::run(acc, smem_desc_sw128(a + ks * 32),
                                                   smem_desc_sw128(a + DsSmem::kA + ks * 32), true);
      }
      wgmma_commit();
      wgmma_wait<0>();
      if (lane == 0) pipe.consumer_release(st);
      st.advance();
    }
    const std::int64_t row0 = static_cast<std::int64_t>(job.slot) * kDsTokens;
    if (job.kind == 1) {
#pragma unroll
      for (int j = 0; j < kDsTokens / 2; ++j) {
        const int col = job.tile * kDsDownCols + wgmma_acc_row(j);
        if (col < g.hidden) g.out[(row0 + wgmma_acc_col(j)) * g.hidden + col] = acc[j];
      }
      continue;
    }
    // Gate rows are the MMA's rows 0-31, up rows 32-63: pair them through shared memory.
#pragma unroll
    for (int j = 0; j < kDsTokens / 2; ++j) s_gateup[wgmma_acc_row(j)][wgmma_acc_col(j)] = acc[j];
    asm volatile("bar.sync 1, 128;\n" ::: "memory");
    for (int i = threadIdx.x; i < kDsGateCols * kDsTokens; i += 128) {
      const int c = i % kDsGateCols, t = i / kDsGateCols;
      const int col = job.tile * kDsGateCols + c;
      const float gate = s_gateup[c][t], up = s_gateup[kDsGateCols + c][t];
      if (col < g.inter) {
        g.h[(row0 + t) * g.inter + col] = __float2bfloat16(gate / (1.0f + __expf(-gate)) * up);
      }
    }
    fence_proxy_async_global();  // h is read by other blocks' copy engines
    asm volatile("bar.sync 1, 128;\n" ::: "memory");
    if (threadIdx.x == 0) add_release(g.words + 1 + job.slot, 1);
  }
#else
  (void)maps, (void)g;
#endif
}

inline cudaError_t launch_ws_decode_stream(const DecodeStreamMaps& maps, const DecodeStreamArgs& g,
                                           int grid, cudaStream_t stream) {
  if (cudaError_t e =
          cudaFuncSetAttribute(ws_decode_stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(DsSmem::kBytes));
      e != cudaSuccess) {
    return e;
  }
  ws_decode_stream_kernel<<<grid, kDsThreads, DsSmem::kBytes, stream>>>(maps, g);
  return cudaGetLastError();
}

}  // namespace flashmoe_test
