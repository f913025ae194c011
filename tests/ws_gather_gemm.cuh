// A persistent gathered GEMM on the warp-specialised parts (device/pipeline.cuh, the wide wgmma
// of device/wgmma.cuh), for their test and for timing the ways of loading the token rows
// before the prefill engine commits to one (issue 20). sm_90a only; elsewhere the kernel is
// empty.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device/cluster.cuh"
#include "device/numeric.cuh"
#include "device/pipeline.cuh"
#include "device/tile_mma.cuh"
#include "device/wgmma.cuh"

namespace flashmoe_test {

inline constexpr int kWsBM = 128, kWsBK = 64, kWsThreads = 384;
inline constexpr std::uint32_t kWsRowBytes = kWsBK * 2;

// How the A rows of a stage arrive: one copy-engine box per gathered row (issued by warp 8's
// lanes), 16-byte cp.async by the 128 producer threads (one row each, arriving on the full
// barrier), 16-byte cp.async by warp 8 alone with 8 lanes a row (each instruction four whole
// 128-byte rows: the coalesced form the engine's producer warp could issue without gathers),
// or one 128-row box of rows already in m-tile order (an expert-sorted copy of x).
enum class AGather { RowBoxes, CpAsync, CpAsyncWarp, Contiguous };

// What the consumers do besides waiting for and releasing the stages, to split a row's time
// between the mainloop and the epilogue (bench_ws_mainloop): multiply and store C (the test's
// form), multiply and store nothing (C is written only where an accumulator equals 1e30, which
// random data never gives, so the MMAs still count), or neither (the copy supply's ceiling).
// Gated with contiguous A only, the engine's gate/up epilogue into a bf16 h: stored from the
// registers, 16 bytes a lane as the engine does (StoreBf16), or written into a shared-memory
// buffer of the warpgroup in the copy engine's 128-byte swizzle and stored by two bulk tensor
// copies, which run while the warpgroup multiplies its next tile (StoreTma): whether an
// epilogue that overlaps the MMAs would pay (bench/NOTES.md, session 22).
enum class WsGemmWork { MmaStore, MmaOnly, NoMma, StoreBf16, StoreTma };

template <int BN, int Stages, WsGemmWork Work = WsGemmWork::MmaStore>
struct WsGemmSmem {
  static constexpr std::uint32_t kA = kWsBM * kWsRowBytes, kB = BN * kWsRowBytes, kStage = kA + kB;
  // StoreTma: a warpgroup's 64 rows x BN / 2 columns of bf16, as 64-column boxes of 8 KB.
  static constexpr std::uint32_t kBoxBytes = 64 * kWsRowBytes;
  static constexpr std::uint32_t kStaging = Work == WsGemmWork::StoreTma ? BN / 128 * kBoxBytes : 0;
  static constexpr std::uint32_t kBytes = Stages * kStage + 2 * kStaging + 1024;  // + alignment
};

struct WsGemmArgs {
  const int* rows;                // [mtiles * 128] gathered x rows (< 0: zeros); not Contiguous
  const __nv_bfloat16* x;         // [x_rows, k] (CpAsync, CpAsyncWarp)
  int x_rows, mtiles, ntiles, k;  // Contiguous: x_rows of the sorted copy
  float* c;                       // [mtiles * 128, n_total]
  int n_total;                    // columns of C (gated: W has 2 n_total rows, gate then up)
  flashmoe::detail::Watchdog wd;
  __nv_bfloat16* h;  // [mtiles * 128, n_total]: StoreBf16 (StoreTma writes it through h_map)
  // Copies of W one after another (the experts): m-tile mt multiplies copy mt % w_copies, so
  // that with many the weights stream from DRAM as the engine's do (1: one W, L2-resident).
  int w_copies;
};

// StoreTma's bulk tensor stores: shared memory -> global through a tensor map, tracked per
// thread in bulk groups (the .read wait: the source may be overwritten; the plain one: written).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, std::uint32_t src, int col,
                                             int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
          reinterpret_cast<std::uint64_t>(map)),
      "r"(src), "r"(col), "r"(row)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
// Named barriers 2 and 3 (immediate ids: a register id makes ptxas reserve all 16).
__device__ __forceinline__ void warpgroup_sync(int wg) {
  if (wg == 0) {
    asm volatile("bar.sync 2, 128;\n" ::: "memory");
  } else {
    asm volatile("bar.sync 3, 128;\n" ::: "memory");
  }
}

// acc += A (64 rows at shared address a) x B (BN rows at b)^T over one stage's 64 columns, as
// one committed batch of warpgroup MMAs.
template <int BN>
__device__ __forceinline__ void mma_stage(float (&acc)[BN / 2], std::uint32_t a, std::uint32_t b) {
  using namespace flashmoe::detail;
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < kWsBK / 16; ++ks) {
    WgmmaM64K16<BN, __nv_bfloat16>::run(acc, smem_desc_sw128(a + ks * 32),
                                        smem_desc_sw128(b + ks * 32), true);
  }
  wgmma_commit();
}

// C[m-tile rows, n0 : n0 + BN] = x[rows] W[n0 : n0 + BN]^T for each (m-tile, n-tile), tiles
// dealt round-robin to a persistent grid. Warpgroups 0 and 1 multiply 64 rows each (the
// engine's layout: routing keeps threads 0-255); warpgroup 2 produces. InFlight: MMA batches a
// consumer leaves running when it moves to the next stage (0: it waits for each stage's MMAs
// before releasing it; 1: it releases the previous stage once the current one is issued).
// Gated: the gate/up tile of the engine. The stage's B rows are BN / 2 gate rows and the BN / 2
// up rows of the same columns (two boxes), so each thread holds gate and up of its columns
// (accumulators j and j + BN / 4), and C = SiLU(x Wg^T) * (x Wu^T) has BN / 2 columns per tile.
template <int BN, int Stages, AGather G, int InFlight = 0, bool Gated = false,
          WsGemmWork Work = WsGemmWork::MmaStore>
__global__ void __launch_bounds__(kWsThreads, 1)
    ws_gather_gemm_kernel(const __grid_constant__ CUtensorMap x_map,
                          const __grid_constant__ CUtensorMap w_map, const WsGemmArgs g,
                          const __grid_constant__ CUtensorMap h_map) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace flashmoe::detail;
  using Smem = WsGemmSmem<BN, Stages, Work>;
  constexpr bool kStoreH = Work == WsGemmWork::StoreBf16 || Work == WsGemmWork::StoreTma;
  static_assert(!kStoreH || (Gated && G == AGather::Contiguous && InFlight == 0),
                "the engine's gate/up epilogue forms");
  constexpr bool kCp = G == AGather::CpAsync, kCpWarp = G == AGather::CpAsyncWarp;
  constexpr bool kGenericA = kCp || kCpWarp;  // A written through the generic proxy
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  __shared__ Pipeline<Stages> pipe;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wg = warp / 4;
  if (threadIdx.x == 0) pipe.init(kCp ? 128 : kCpWarp ? 32 : 0, 8);
  __syncthreads();
  const int tiles = g.mtiles * g.ntiles, ktiles = (g.k + kWsBK - 1) / kWsBK;

  if (wg == 2) {
    // The cp.async gathers need address registers in the producer threads.
    if constexpr (kGenericA) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    } else {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    }
    if (!kCp && warp != 8) return;
    __shared__ int tile_rows[kWsBM];                   // CpAsyncWarp: the m-tile's x rows
    [[maybe_unused]] const int r = threadIdx.x - 256;  // CpAsync: this thread's m-tile row
    PipeState<Stages> st;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int mt = tile / g.ntiles, nt = tile % g.ntiles;
      const int w0 = mt % max(g.w_copies, 1) * (Gated ? 2 : 1) * g.n_total;
      [[maybe_unused]] int row[kWsBM / 32];
      [[maybe_unused]] const __nv_bfloat16* src = nullptr;
      if constexpr (G == AGather::RowBoxes) {
#pragma unroll
        for (int i = 0; i < kWsBM / 32; ++i) {
          const int q = g.rows[mt * kWsBM + i * 32 + lane];
          row[i] = q < 0 ? g.x_rows : q;  // past the tensor: the copy engine fills zeros
        }
      } else if constexpr (kCp) {
        const int q = g.rows[mt * kWsBM + r];
        src = q < 0 ? nullptr : g.x + static_cast<std::int64_t>(q) * g.k;
      } else if constexpr (kCpWarp) {
        __syncwarp();  // the previous tile's copies have read their rows
        for (int i = lane; i < kWsBM; i += 32) tile_rows[i] = g.rows[mt * kWsBM + i];
        __syncwarp();
      }
      for (int kt = 0; kt < ktiles; ++kt) {
        if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
        const std::uint32_t a = base + st.index * Smem::kStage, bar = pipe.full_barrier(st);
        if (threadIdx.x == 256) {
          pipe.producer_expect(st, kGenericA ? Smem::kB : Smem::kStage);
          if constexpr (Gated) {
            tma_load_2d(a + Smem::kA, &w_map, bar, kt * kWsBK, w0 + nt * (BN / 2));
            tma_load_2d(a + Smem::kA + BN / 2 * kWsRowBytes, &w_map, bar, kt * kWsBK,
                        w0 + g.n_total + nt * (BN / 2));
          } else {
            tma_load_2d(a + Smem::kA, &w_map, bar, kt * kWsBK, w0 + nt * BN);
          }
          if constexpr (G == AGather::Contiguous) {
            tma_load_2d(a, &x_map, bar, kt * kWsBK, mt * kWsBM);
          }
        }
        if constexpr (G == AGather::RowBoxes) {
          __syncwarp();
#pragma unroll
          for (int i = 0; i < kWsBM / 32; ++i) {
            tma_load_2d(a + (i * 32 + lane) * kWsRowBytes, &x_map, bar, kt * kWsBK, row[i]);
          }
        } else if constexpr (kCp) {
#pragma unroll
          for (int ch = 0; ch < 8; ++ch) {
            const int col = kt * kWsBK + ch * 8;
            const bool valid = src != nullptr && col < g.k;
            cp_async_16(a + r * kWsRowBytes + ((ch ^ (r & 7)) << 4), valid ? src + col : g.x,
                        valid ? 16 : 0);
          }
          cp_async_mbar_arrive(bar);
        } else if constexpr (kCpWarp) {
          const int ch = lane % 8, col = kt * kWsBK + ch * 8;
#pragma unroll 4
          for (int i = 0; i < kWsBM / 4; ++i) {
            const int rr = i * 4 + lane / 8, q = tile_rows[rr];
            const bool valid = q >= 0 && col < g.k;
            cp_async_16(a + rr * kWsRowBytes + ((ch ^ (rr & 7)) << 4),
                        valid ? g.x + static_cast<std::int64_t>(q) * g.k + col : g.x,
                        valid ? 16 : 0);
          }
          cp_async_mbar_arrive(bar);
        }
        st.advance();
      }
    }
    // No copy of this thread outlives it (the consumers wait for every stage anyway).
    if constexpr (kGenericA) cp_async_wait<0>();
    return;
  }

  if constexpr (kGenericA) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  }
  static_assert(InFlight == 0 || InFlight == 1, "at most one MMA batch in flight");
  const int half = wg;  // rows [64 half, 64 half + 64) of each m-tile
  // StoreTma: this warpgroup's staging buffer, and its thread that issues the stores (no
  // store may still read the buffer, or be in flight, when the block leaves).
  [[maybe_unused]] const std::uint32_t staging =
      base + Stages * Smem::kStage + half * Smem::kStaging;
  [[maybe_unused]] const bool store_leader = (threadIdx.x & 127) == 0;
  auto leave = [&] {
    if constexpr (Work == WsGemmWork::StoreTma) {
      if (store_leader) bulk_wait();
    }
  };
  PipeState<Stages> st, prev;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int mt = tile / g.ntiles, nt = tile % g.ntiles;
    float acc[BN / 2];
#pragma unroll
    for (int j = 0; j < BN / 2; ++j) acc[j] = 0.0f;
    for (int kt = 0; kt < ktiles; ++kt) {
      if (!pipe.consumer_wait(st, g.wd, kSiteWeightCopy)) {
        leave();
        return;
      }
      // cp.async wrote A through the generic proxy; the MMA reads it through the async one.
      if constexpr (kGenericA) fence_proxy_async_smem();
      if constexpr (Work != WsGemmWork::NoMma) {
        mma_stage<BN>(acc, base + st.index * Smem::kStage + half * 64 * kWsRowBytes,
                      base + st.index * Smem::kStage + Smem::kA);
      }
      wgmma_wait<InFlight>();
      if (InFlight == 0) {
        if (lane == 0) pipe.consumer_release(st);
      } else if (kt > 0 && lane == 0) {
        pipe.consumer_release(prev);  // its MMAs are done: at most the current batch runs
      }
      prev = st;
      st.advance();
    }
    if (InFlight > 0) {
      wgmma_wait<0>();
      if (lane == 0) pipe.consumer_release(prev);
    }
    if constexpr (Work == WsGemmWork::NoMma) {
      continue;
    } else if constexpr (Work == WsGemmWork::MmaOnly) {
      bool hit = false;
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) hit = hit || acc[j] == 1.0e30f;
      if (hit) g.c[mt * kWsBM + half * 64] = 1.0f;
    } else if constexpr (Work == WsGemmWork::StoreBf16) {
      // As the engine's store_row: per row (r and r + 8) and set of four n8 blocks, the quad's
      // values transposed so that each lane stores one block's 16 bytes.
      const int c0 = nt * (BN / 2), chunk = 8 * (threadIdx.x & 3);
#pragma unroll
      for (int r8 = 0; r8 < 2; ++r8) {
        const int row = mt * kWsBM + half * 64 + wgmma_acc_row(2 * r8);
        __nv_bfloat16* dst = g.h + static_cast<std::int64_t>(row) * g.n_total + c0;
#pragma unroll
        for (int s = 0; s < BN / 64; ++s) {
          std::uint32_t v[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int j = 16 * s + 4 * k + 2 * r8;
            v[k] = pack2<__nv_bfloat16>(silu(acc[j]) * acc[j + BN / 4],
                                        silu(acc[j + 1]) * acc[j + 1 + BN / 4]);
          }
          quad_transpose(v);
          const int col = 32 * s + chunk;
          if (c0 + col < g.n_total) {
            *reinterpret_cast<uint4*>(dst + col) = make_uint4(v[0], v[1], v[2], v[3]);
          }
        }
      }
    } else if constexpr (Work == WsGemmWork::StoreTma) {
      // The buffer is free once the warpgroup's previous stores have read it; the values go
      // in at the 128-byte swizzle of the h map's 64 x 64 boxes (16-byte chunk c of row r at
      // chunk c ^ (r % 8)), then one thread stores both boxes and the warpgroup moves on.
      if (store_leader) bulk_wait_read();
      warpgroup_sync(half);
#pragma unroll
      for (int j = 0; j < BN / 4; j += 2) {
        const int row = wgmma_acc_row(j), col = wgmma_acc_col(j), c = col & 63;
        const std::uint32_t at = staging + (col >> 6) * Smem::kBoxBytes + row * kWsRowBytes +
                                 ((((c >> 3) ^ (row & 7)) << 4) | ((c & 7) * 2));
        const std::uint32_t v = pack2<__nv_bfloat16>(silu(acc[j]) * acc[j + BN / 4],
                                                     silu(acc[j + 1]) * acc[j + 1 + BN / 4]);
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(at), "r"(v) : "memory");
      }
      fence_proxy_async_smem();  // the generic writes before the copy engine's reads
      warpgroup_sync(half);
      if (store_leader) {
#pragma unroll
        for (int b = 0; b < BN / 128; ++b) {
          tma_store_2d(&h_map, staging + b * Smem::kBoxBytes, nt * (BN / 2) + 64 * b,
                       mt * kWsBM + half * 64);
        }
        bulk_commit();
      }
    } else if constexpr (Gated) {
      // Gate columns past n_total read up rows (discarded here); up rows past 2 n_total read zeros.
#pragma unroll
      for (int j = 0; j < BN / 4; ++j) {
        const int row = mt * kWsBM + half * 64 + wgmma_acc_row(j);
        const int col = nt * (BN / 2) + wgmma_acc_col(j);
        const float gate = acc[j], up = acc[j + BN / 4];
        if (col < g.n_total) {
          g.c[static_cast<std::int64_t>(row) * g.n_total + col] =
              gate / (1.0f + __expf(-gate)) * up;
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) {
        const int row = mt * kWsBM + half * 64 + wgmma_acc_row(j);
        const int col = nt * BN + wgmma_acc_col(j);
        if (col < g.n_total) g.c[static_cast<std::int64_t>(row) * g.n_total + col] = acc[j];
      }
    }
  }
  leave();
#else
  (void)x_map, (void)w_map, (void)g, (void)h_map;
#endif
}

// The Contiguous GEMM on clusters of two blocks (issue 20's gate/up rate: a 128 x 256 tile
// reads 48 KB a stage from L2, 9 TB/s for the chip at the dense MMA rate). The blocks of a
// cluster take m-tiles 2p and 2p + 1 of one n-tile: each producer requests its own A box and
// half of the stage's weight rows (Gated: the gate box in block 0, the up box in block 1), and
// the copy engine writes that half into both blocks' stages, so a block reads 32 KB a stage
// from L2. A stage is refilled only once both blocks' consumers released it: a consumer warp
// arrives on its own block's empty barrier and on the other block's (16 arrivals a phase).
// Both blocks walk the same tiles (an odd last m-tile's partner multiplies zeros and stores
// nothing) and meet at a cluster barrier before leaving.
// (InFlight 1 compiles, but ptxas serialises its MMAs on the failed-wait path: measure InFlight 0.)
template <int BN, int Stages, int InFlight = 0, bool Gated = false>
__global__ void __launch_bounds__(kWsThreads, 1)
    ws_multicast_gemm_kernel(const __grid_constant__ CUtensorMap x_map,
                             const __grid_constant__ CUtensorMap w_map, const WsGemmArgs g) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace flashmoe::detail;
  using Smem = WsGemmSmem<BN, Stages>;
  constexpr std::uint32_t kHalfB = BN / 2 * kWsRowBytes;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The same offset in both blocks (the same kernel and layout): multicast writes there.
  const std::uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  __shared__ Pipeline<Stages> pipe;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wg = warp / 4;
  const std::uint32_t rank = cluster_ctarank(), peer = rank ^ 1u;
  if (threadIdx.x == 0) pipe.init(0, 16);
  cluster_sync();  // both blocks' barriers are initialised before any copy or remote arrival
  const int pairs = (g.mtiles + 1) / 2 * g.ntiles, ktiles = (g.k + kWsBK - 1) / kWsBK;
  const int cluster = static_cast<int>(blockIdx.x / 2), clusters = static_cast<int>(gridDim.x / 2);

  if (wg == 2) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x == 256) {
      PipeState<Stages> st;
      bool ok = true;
      for (int pair = cluster; pair < pairs && ok; pair += clusters) {
        const int mt = pair / g.ntiles * 2 + static_cast<int>(rank), nt = pair % g.ntiles;
        const int wrow = Gated ? static_cast<int>(rank) * g.n_total + nt * (BN / 2)
                               : nt * BN + static_cast<int>(rank) * (BN / 2);
        for (int kt = 0; kt < ktiles; ++kt) {
          if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) {
            ok = false;
            break;
          }
          const std::uint32_t a = base + st.index * Smem::kStage, bar = pipe.full_barrier(st);
          pipe.producer_expect(st, Smem::kStage);  // own A, both halves of B
          tma_load_2d(a, &x_map, bar, kt * kWsBK, mt * kWsBM);
          tma_load_2d_multicast(a + Smem::kA + rank * kHalfB, &w_map, bar, kt * kWsBK, wrow, 0x3);
          st.advance();
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    static_assert(InFlight == 0 || InFlight == 1, "at most one MMA batch in flight");
    PipeState<Stages> st, prev;
    auto release = [&](const PipeState<Stages>& s) {
      if (lane == 0) {
        pipe.consumer_release(s);
        mbar_arrive_cluster(smem_u32(&pipe.empty[s.index]), peer);
      }
    };
    bool ok = true;
    for (int pair = cluster; pair < pairs && ok; pair += clusters) {
      const int mt = pair / g.ntiles * 2 + static_cast<int>(rank), nt = pair % g.ntiles;
      float acc[BN / 2];
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) acc[j] = 0.0f;
      for (int kt = 0; kt < ktiles; ++kt) {
        if (!pipe.consumer_wait(st, g.wd, kSiteWeightCopy)) {
          ok = false;
          break;
        }
        mma_stage<BN>(acc, base + st.index * Smem::kStage + wg * 64 * kWsRowBytes,
                      base + st.index * Smem::kStage + Smem::kA);
        wgmma_wait<InFlight>();
        if (InFlight == 0) {
          release(st);
        } else if (kt > 0) {
          release(prev);
        }
        prev = st;
        st.advance();
      }
      if (!ok) break;
      if (InFlight > 0) {
        wgmma_wait<0>();
        release(prev);
      }
      if (mt >= g.mtiles) continue;
      constexpr int kCols = Gated ? BN / 2 : BN;
#pragma unroll
      for (int j = 0; j < (Gated ? BN / 4 : BN / 2); ++j) {
        const int row = mt * kWsBM + wg * 64 + wgmma_acc_row(j);
        const int col = nt * kCols + wgmma_acc_col(j);
        if (col < g.n_total) {
          float v = acc[j];
          if constexpr (Gated) v = v / (1.0f + __expf(-v)) * acc[j + BN / 4];
          g.c[static_cast<std::int64_t>(row) * g.n_total + col] = v;
        }
      }
    }
    if (!ok) wgmma_wait<0>();
  }
  // After a failed wait the other block may still copy into this one: the cluster barrier
  // below waits for it only while it is running, and the watchdog ends every wait.
  __syncwarp();
  cluster_sync();
#else
  (void)x_map, (void)w_map, (void)g;
#endif
}

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// A row-major bf16 [rows, cols] matrix in boxes of 64 columns by box_rows rows, 128-byte
// swizzled, zeros outside.
inline bool encode_bf16_map(CUtensorMap& map, const void* base, int rows, int cols, int box_rows) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                       &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    return false;
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {kWsBK, static_cast<cuuint32_t>(box_rows)}, elem[2] = {1, 1};
  return reinterpret_cast<EncodeTiledFn>(f)(
             &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
             elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Launches the kernel on `stream` (its shared-memory size set once per instantiation).
// h_map (StoreTma): h as [rows, n_total] in 64 x 64 boxes, 128-byte swizzle (encode_bf16_map).
template <int BN, int Stages, AGather G, int InFlight = 0, bool Gated = false,
          WsGemmWork Work = WsGemmWork::MmaStore>
cudaError_t launch_ws_gather_gemm(const CUtensorMap& x_map, const CUtensorMap& w_map,
                                  const WsGemmArgs& g, int grid, cudaStream_t stream,
                                  const CUtensorMap* h_map = nullptr) {
  using Smem = WsGemmSmem<BN, Stages, Work>;
  auto kernel = ws_gather_gemm_kernel<BN, Stages, G, InFlight, Gated, Work>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(Smem::kBytes));
      e != cudaSuccess) {
    return e;
  }
  kernel<<<grid, kWsThreads, Smem::kBytes, stream>>>(x_map, w_map, g,
                                                     h_map != nullptr ? *h_map : x_map);
  return cudaGetLastError();
}

// Launches the cluster kernel on `stream` with as many clusters as can be resident at once (at
// most grid / 2); `clusters` gets that number (0 when the launch failed).
template <int BN, int Stages, int InFlight = 0, bool Gated = false>
cudaError_t launch_ws_multicast_gemm(const CUtensorMap& x_map, const CUtensorMap& w_map,
                                     const WsGemmArgs& g, int grid, cudaStream_t stream,
                                     int& clusters) {
  using Smem = WsGemmSmem<BN, Stages>;
  auto kernel = ws_multicast_gemm_kernel<BN, Stages, InFlight, Gated>;
  clusters = 0;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(Smem::kBytes));
      e != cudaSuccess) {
    return e;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid / 2 * 2));
  config.blockDim = dim3(kWsThreads);
  config.dynamicSmemBytes = Smem::kBytes;
  config.stream = stream;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 2;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  int resident = 0;
  if (cudaError_t e = cudaOccupancyMaxActiveClusters(&resident, kernel, &config);
      e != cudaSuccess) {
    return e;
  }
  clusters = std::min(grid / 2, resident);
  if (clusters < 1) return cudaErrorInvalidConfiguration;
  config.gridDim = dim3(static_cast<unsigned>(2 * clusters));
  return cudaLaunchKernelEx(&config, kernel, x_map, w_map, g);
}

}  // namespace flashmoe_test
