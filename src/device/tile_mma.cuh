// Tensor-core tile executor: C[BM, NB] = A[BM, K] * B[NB, K]^T with both operands K-major,
// rows gathered through per-row pointers (null rows read as zeros), cp.async multi-stage
// pipeline, XOR-swizzled shared memory, ldmatrix + mma.sync m16n8k16 (sm_80 and newer),
// fp32 accumulation. Warps may split K (WARPS_K > 1) so that tiles with few rows still keep
// every warp busy; their partial sums are reduced through shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sync.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace flashmoe::detail {

inline constexpr int kThreads = 256;  // every kernel variant runs 8 warps per block

// B rows of a gated (gate/up) tile are [BN gate rows | BN up rows]; each warp owns matching
// gate and up columns, so SiLU(g) * u is formed in registers.
// BK: K elements per pipeline stage (64 or 128: rows of 128 or 256 bytes in shared memory).
// WGMMA: on sm_90a the stage is multiplied by Hopper's warpgroup MMA (two warpgroups, each all
// 64 rows by half of the columns) instead of ldmatrix + mma.sync; the warp tiling below is then
// the one of its accumulators (warp w: rows 16 (w % 4), columns WN (w / 4)).
template <int BM_, int BN_, bool GATED_, int WARPS_M_, int WARPS_N_, int WARPS_K_, int STAGES_,
          int BK_, bool WGMMA_ = false>
struct TileShape {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_,
                       WARPS_K = WARPS_K_, STAGES = STAGES_, BK = BK_;
  static constexpr int ROW_BYTES = BK * 2;
  static constexpr int CHUNKS = BK / 8;  // 16-byte chunks per row
  static_assert(BK == 64 || BK == 128, "the swizzle permutes 8 chunks of each row");
  static constexpr bool GATED = GATED_;
  static constexpr bool WGMMA = WGMMA_;
  static constexpr int NB = GATED ? 2 * BN : BN;  // B rows per tile
  static constexpr int WM = BM / WARPS_M;         // rows per warp
  static constexpr int MI = WM / 16;              // m16 fragments per warp
  static constexpr int WN = BN / WARPS_N;         // output columns per warp
  static constexpr int NI = WN / 8;               // n8 fragments per warp (per half if gated)
  static constexpr int NF = GATED ? 2 * NI : NI;
  static constexpr int KSTEPS = BK / 16;
  static constexpr int KSTEPS_PER_WARP = KSTEPS / WARPS_K;
  static constexpr int STAGE_BYTES = (BM + NB) * ROW_BYTES;
  static constexpr int RED_BYTES = (WARPS_K - 1) * WARPS_M * WARPS_N * MI * NF * 4 * 32 * 4;
  static constexpr int SMEM_BYTES =
      STAGES * STAGE_BYTES > RED_BYTES ? STAGES* STAGE_BYTES : RED_BYTES;
  static_assert(WARPS_M * WARPS_N * WARPS_K * 32 == kThreads, "8 warps per block");
  static_assert(MI >= 1 && WM % 16 == 0 && NI >= 1 && WN % 8 == 0, "fragment tiling");
  static_assert(KSTEPS % WARPS_K == 0, "k split");
  static_assert(!WGMMA || (BM == 64 && WARPS_M == 4 && WARPS_N == 2 && WARPS_K == 1 && BK == 64 &&
                           WN == 32),
                "warpgroup MMA tiles: m64n32k16 per warpgroup and operand, one 128-byte swizzle "
                "atom of K per stage");

  // First B row of the warp's fragment f.
  __device__ static int b_row(int wn, int f) {
    if (!GATED || f < NI) return wn * WN + f * 8;
    return BN + wn * WN + (f - NI) * 8;
  }
};

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  __device__ static void run(float (&d)[4], const std::uint32_t (&a)[4],
                             const std::uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <>
struct Mma<__half> {
  __device__ static void run(float (&d)[4], const std::uint32_t (&a)[4],
                             const std::uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// 16-byte asynchronous copy through L2 only (.cg): safe for data written earlier in this
// launch by other blocks, once an acquire has ordered it. src_bytes = 0 fills zeros.
__device__ __forceinline__ void cp_async_16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// XOR of the low 3 chunk bits with the row: 8 consecutive rows read by one ldmatrix phase hit
// 8 different bank groups.
template <int ROW_BYTES>
__device__ __forceinline__ std::uint32_t swizzled(std::uint32_t stage_base, int row, int chunk) {
  return stage_base + row * ROW_BYTES + ((chunk ^ (row & 7)) << 4);
}

template <class S, typename T>
struct TileMma {
  using Acc = float[S::MI][S::NF][4];

  __device__ static int warp_k() { return (threadIdx.x >> 5) / (S::WARPS_M * S::WARPS_N); }
  __device__ static int warp_m() {
    if constexpr (S::WGMMA) return (threadIdx.x >> 5) % S::WARPS_M;
    return ((threadIdx.x >> 5) % (S::WARPS_M * S::WARPS_N)) / S::WARPS_N;
  }
  __device__ static int warp_n() {
    if constexpr (S::WGMMA) return (threadIdx.x >> 5) / S::WARPS_M;
    return (threadIdx.x >> 5) % S::WARPS_N;
  }

  // Stages loaded ahead of the one being multiplied. The warpgroup MMA keeps one stage's
  // MMAs in flight while the next is issued, so its stages are refilled one step later.
  static constexpr int kAhead = (S::WGMMA && kDeviceHasWgmma) ? S::STAGES - 2 : S::STAGES - 1;
  static_assert(kAhead >= 1, "at least one stage ahead");

  // Thread 0 (sm_90): the weight boxes of K tile kt into stage `stage`; the tensor map
  // zero-fills the K tail and rows past the weights.
  __device__ static void issue_weights(std::uint32_t smem_base, int stage, int kt,
                                       const WeightBoxes& wb) {
    constexpr int kHalves = S::BK / kTmaBoxCols, kBoxes = S::GATED ? 2 : 1;
    PipeBarriers& pb = pipe_barriers();
    const std::uint32_t bar = smem_u32(&pb.full[stage]);
    const std::uint32_t b_base = smem_base + stage * S::STAGE_BYTES + S::BM * S::ROW_BYTES;
    mbar_expect_tx(bar, S::NB * S::ROW_BYTES);
    // Decode tiles read their weights evict-first: the stream (76 MB at Qwen3 T = 1) then
    // leaves L2 the kernel's code, which every launch's routing fetches again, and the
    // router weights, x, h and ypart (bench/NOTES.md, version 40: T = 1 -6%). Prefill
    // m-tiles of one expert read the same boxes at about the same time, and an evict-first
    // fill is dropped before the others come (+4-8%); an explicit evict-normal policy there
    // measured +2% at Mixtral T = 256, so they load without a hint.
    [[maybe_unused]] const std::uint64_t policy = S::WGMMA ? 0 : l2_evict_first_policy();
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int b = 0; b < kBoxes; ++b) {
        const std::uint32_t dst = b_base + (h * S::NB + b * S::BN) * 128;
        const int col = wb.col0 + kt * S::BK + h * kTmaBoxCols;
        if constexpr (S::WGMMA) {
          tma_load_2d(dst, wb.map, bar, col, wb.row[b]);
        } else {
          tma_load_2d(dst, wb.map, bar, col, wb.row[b], policy);
        }
      }
  }

  // Thread 0, before run<true, true>: the weight boxes of the first kAhead stages, issued as
  // soon as the tile's expert is known, while the block still gathers its A row pointers.
  // `first` > 0 leaves the first stages unissued (a test fault: their waits never complete).
  __device__ static void issue_weights_ahead(unsigned char* smem, const WeightBoxes& wb, int kdim,
                                             int first = 0) {
    if constexpr (kDeviceHasTma) {
      const std::uint32_t smem_base = smem_u32(smem);
      const int ktiles = (kdim + S::BK - 1) / S::BK;
      for (int st = first; st < kAhead && st < ktiles; ++st) issue_weights(smem_base, st, st, wb);
    }
  }

  // a_rows[BM], b_rows[NB] live in shared memory. `fallback` is any valid global address,
  // used as the (unread) source of zero-filled chunks. The B (weight) loads of the first
  // kAhead stages are issued before before_a() runs, the A loads after it: a tile whose A
  // operand is produced by other blocks waits there while its weights already stream in.
  // before_a() is called by every thread and returns false to abandon the tile (run then
  // returns false). After a true return, warps with warp_k() == 0 hold the full sums; after a
  // false one the caller publishes nothing.
  // TMA_B (sm_90): B comes from the tensor map boxes `wb` instead of b_rows, laid out as the
  // copy engine's 128-byte swizzle writes it: per 64-column half, NB rows of 128 bytes. The
  // stage base must then be 1024-byte aligned. A barrier wait past `wd.timeout_ns` fails the
  // launch (DeviceTimeout) instead of hanging, and run returns false.
  // B_AHEAD_ISSUED (TMA only): thread 0 already issued the first kAhead stages' boxes
  // (issue_weights_ahead), so run does not issue them again.
  template <bool TMA_B, bool B_AHEAD_ISSUED = false, class BeforeA>
  __device__ static bool run(Acc& acc, unsigned char* smem, const T* const* a_rows,
                             const T* const* b_rows, const WeightBoxes& wb, const Watchdog& wd,
                             int kdim, const T* fallback, BeforeA&& before_a) {
    constexpr bool tma = TMA_B && kDeviceHasTma;
    static_assert(!TMA_B || S::STAGES <= kMaxPipeStages, "one barrier per stage");
    const int tid = threadIdx.x, lane = tid & 31;
    const int wm = warp_m(), wn = warp_n(), wk = warp_k();
#pragma unroll
    for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
      for (int f = 0; f < S::NF; ++f)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mi][f][i] = 0.0f;

    const std::uint32_t smem_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
    const int ktiles = (kdim + S::BK - 1) / S::BK;
    // Rows [first, last) of the stage: A rows are [0, BM), B rows [BM, BM + NB). Null rows and
    // the K tail are zero-filled. (Skipping the null rows' copies instead measured 3-5% slower
    // on an H200.)
    auto load_rows = [&](int stage, int kt, int first, int last) {
      const std::uint32_t base = smem_base + stage * S::STAGE_BYTES;
      for (int i = first * S::CHUNKS + tid; i < last * S::CHUNKS; i += kThreads) {
        const int row = i / S::CHUNKS, chunk = i % S::CHUNKS;
        const T* src_row = row < S::BM ? a_rows[row] : b_rows[row - S::BM];
        const int k = kt * S::BK + chunk * 8;
        const bool valid = src_row != nullptr && k < kdim;  // kdim % 8 == 0: whole chunks
        cp_async_16(swizzled<S::ROW_BYTES>(base, row, chunk), valid ? src_row + k : fallback,
                    valid ? 16 : 0);
      }
    };

    // TMA: stage s completes on pb.full[s]; `phase` is the parity of each stage's next
    // completion (read after the caller's barrier, written back by thread 0 at the end).
    [[maybe_unused]] PipeBarriers& pb = pipe_barriers();
    [[maybe_unused]] std::uint32_t phase = 0;
    [[maybe_unused]] std::uint64_t timeout_ns = wd.timeout_ns;  // 0 once a wait timed out
    if constexpr (tma) phase = pb.phase;
    auto issue_b = [&](int stage, int kt) {
      if constexpr (tma) issue_weights(smem_base, stage, kt, wb);
    };
    // Every thread waits for stage `stage` (the completion makes the copy visible to it).
    auto wait_b = [&](int stage) {
      if constexpr (tma) {
        const std::uint32_t bar = smem_u32(&pb.full[stage]);
        const std::uint32_t parity = (phase >> stage) & 1u;
        if (!mbar_try_wait(bar, parity)) {
          const std::uint64_t start = global_timer_ns();
          while (!mbar_try_wait(bar, parity)) {
            if (global_timer_ns() - start > timeout_ns) {
              // The launch is abandoned, and so is this tile by the whole block: the flag is
              // read once, after the loop's last barrier, so the K loop pays nothing for it.
              // Until then this thread's later waits return at once (the stage parities no
              // longer match the barriers), and thread 0 issues no more copies: another
              // arrival on a barrier whose phase never completed would be undefined. Every
              // copy issued before this wait began has had a whole watchdog period to land.
              wd.ctl.fail(StatusCode::DeviceTimeout, kSiteWeightCopy);
              pb.stalled = 1;
              timeout_ns = 0;
              break;
            }
          }
        }
        phase ^= 1u << stage;
      }
    };
    auto load_a = [&](int stage, int kt) { load_rows(stage, kt, 0, S::BM); };
    auto load = [&](int stage, int kt) {
      if constexpr (tma) {
        load_rows(stage, kt, 0, S::BM);
        if (tid == 0 && timeout_ns != 0) issue_b(stage, kt);
      } else {
        load_rows(stage, kt, 0, S::BM + S::NB);
      }
    };

    constexpr bool wg = S::WGMMA && kDeviceHasWgmma;
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      if (s < ktiles) {
        if constexpr (tma) {
          if (tid == 0 && !B_AHEAD_ISSUED) issue_b(s, s);
        } else {
          load_rows(s, s, S::BM, S::BM + S::NB);
        }
      }
    }
    if (!before_a()) {
      cp_async_commit();
      cp_async_wait<0>();
      if constexpr (tma) {
        // The issued boxes must land before the stages are reused.
        for (int s = 0; s < kAhead && s < ktiles; ++s) wait_b(s);
        if (tid == 0) pb.phase = phase;
      }
      team_sync();
      return false;
    }
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      if (s < ktiles) load_a(s, s);
      cp_async_commit();  // group 0 also holds every prologue B load; empty groups keep counts
    }
    for (int kt = 0; kt < ktiles; ++kt) {
      cp_async_wait<kAhead - 1>();
      wait_b(kt % S::STAGES);
      // The warpgroup MMA reads shared memory through the async proxy: this thread's cp.async
      // rows must be ordered before it.
      if constexpr (wg) fence_proxy_async_smem();
      // Stage kt landed for all threads, and every warp is done with the stage refilled next:
      // stage kt-1 (mma.sync), or stage kt-2, whose MMAs each warpgroup waited for last step.
      team_sync();
      const int next = kt + kAhead;
      if (next < ktiles) load(next % S::STAGES, next);
      cp_async_commit();

      const std::uint32_t base = smem_base + (kt % S::STAGES) * S::STAGE_BYTES;
      const std::uint32_t b_base = base + S::BM * S::ROW_BYTES;
      if constexpr (wg) {
        wgmma_stage(acc, base, b_base, wn);  // leaves this stage's MMAs in flight
      } else {
        mma_stage<tma>(acc, base, b_base, wm, wn, wk);
      }
    }
    if constexpr (wg) wgmma_wait<0>();
    if constexpr (tma) {
      if (tid == 0) pb.phase = phase;
    }
    cp_async_wait<0>();
    team_sync();  // pipeline smem is now free
    // One decision for the block: a weight copy that ran past the watchdog in any thread
    // abandons the tile, and the caller publishes nothing.
    if constexpr (tma) {
      if (pb.stalled != 0) return false;
    }

    if constexpr (S::WARPS_K > 1) {
      float* red = reinterpret_cast<float*>(smem);
      constexpr int kPerWarp = S::MI * S::NF * 4 * 32;
      const int wmn = wm * S::WARPS_N + wn;
      if (wk > 0) {
        float* mine = red + ((wk - 1) * S::WARPS_M * S::WARPS_N + wmn) * kPerWarp;
#pragma unroll
        for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
          for (int f = 0; f < S::NF; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i)
              mine[((mi * S::NF + f) * 4 + i) * 32 + lane] = acc[mi][f][i];
      }
      team_sync();
      if (wk == 0) {
        // Fixed order over wk: the sum is the same on every run.
        for (int w = 1; w < S::WARPS_K; ++w) {
          const float* theirs = red + ((w - 1) * S::WARPS_M * S::WARPS_N + wmn) * kPerWarp;
#pragma unroll
          for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
            for (int f = 0; f < S::NF; ++f)
#pragma unroll
              for (int i = 0; i < 4; ++i)
                acc[mi][f][i] += theirs[((mi * S::NF + f) * 4 + i) * 32 + lane];
        }
      }
      team_sync();  // reduction buffer is free again
    }
    return true;
  }

  // One stage on ldmatrix + mma.sync: warp (wm, wn, wk) takes its rows, columns and share of K.
  // TMA_LAYOUT: B as the copy engine writes it (64-column halves of NB rows).
  template <bool TMA_LAYOUT>
  __device__ static void mma_stage(Acc& acc, std::uint32_t base, std::uint32_t b_base, int wm,
                                   int wn, int wk) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < S::KSTEPS_PER_WARP; ++j) {
      const int kk = wk * S::KSTEPS_PER_WARP + j;
      std::uint32_t a[S::MI][4];
      std::uint32_t b[S::NF][2];
#pragma unroll
      for (int mi = 0; mi < S::MI; ++mi) {
        const int row = wm * S::WM + mi * 16 + (lane & 15);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[mi][0]), "=r"(a[mi][1]), "=r"(a[mi][2]), "=r"(a[mi][3])
                     : "r"(swizzled<S::ROW_BYTES>(base, row, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int f = 0; f < S::NF; ++f) {
        const int row = S::b_row(wn, f) + (lane & 7);
        const int chunk = kk * 2 + ((lane >> 3) & 1);
        std::uint32_t addr;
        if constexpr (TMA_LAYOUT) {
          // Copy-engine layout: 64-column halves of NB rows, 128-byte swizzle.
          addr = swizzled<128>(b_base + (chunk >> 3) * S::NB * 128, row, chunk & 7);
        } else {
          addr = swizzled<S::ROW_BYTES>(b_base, row, chunk);
        }
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(b[f][0]), "=r"(b[f][1])
                     : "r"(addr));
      }
#pragma unroll
      for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
        for (int f = 0; f < S::NF; ++f) Mma<T>::run(acc[mi][f], a[mi], b[f]);
    }
  }

  // One stage (BK = 64: one 128-byte swizzle atom of K) on the warpgroup MMA: warpgroup g
  // multiplies all 64 A rows by B rows [g WN, (g + 1) WN) (and the matching up rows of a gated
  // tile), and waits for the previous stage's MMAs (this stage's stay in flight). A and B are
  // K-major in the 128-byte swizzle both cp.async (swizzled<128>) and the copy engine write.
  __device__ static void wgmma_stage(Acc& acc, std::uint32_t a_base, std::uint32_t b_base, int wn) {
    if constexpr (S::WGMMA) {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < S::KSTEPS; ++kk) {
        const std::uint64_t a = smem_desc_sw128(a_base + kk * 32);
        wgmma_m64n32k16<T>(acc[0][0], acc[0][1], acc[0][2], acc[0][3], a,
                           smem_desc_sw128(b_base + wn * S::WN * 128 + kk * 32));
        if constexpr (S::GATED) {
          wgmma_m64n32k16<T>(acc[0][4], acc[0][5], acc[0][6], acc[0][7], a,
                             smem_desc_sw128(b_base + (S::BN + wn * S::WN) * 128 + kk * 32));
        }
      }
      wgmma_commit();
      wgmma_wait<1>();
    }
  }

  // Visits every accumulator pair owned by a warp with warp_k() == 0:
  // fn(row, col, f, mi, half) where (row, col) is the tile position of element pair
  // acc[mi][f][2*half .. 2*half+1] (columns col, col+1; col counted within the first BN for
  // gated tiles, and f < NI).
  template <class Fn>
  __device__ static void for_each_pair(Fn&& fn) {
    if (warp_k() != 0) return;
    const int lane = threadIdx.x & 31, wm = warp_m(), wn = warp_n();
#pragma unroll
    for (int mi = 0; mi < S::MI; ++mi)
#pragma unroll
      for (int f = 0; f < S::NI; ++f)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wm * S::WM + mi * 16 + (lane >> 2) + half * 8;
          const int col = wn * S::WN + f * 8 + (lane & 3) * 2;
          fn(row, col, f, mi, half);
        }
  }
};

}  // namespace flashmoe::detail
