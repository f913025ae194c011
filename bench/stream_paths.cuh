// The copy paths of a decode launch's weight stream, timed alone (bench_ws_mainloop's
// StreamPath rows; issue 21): one launch reads the chosen experts' bytes once (gate/up rows over
// H, then down rows over I, in tiles of R rows that blocks take from a queue) through one path
// into the SM, and computes nothing but the XOR of every 16-byte word, which the benchmark
// checks against a plain reference kernel's (a path that skipped or repeated bytes fails). No
// MMA, epilogue or dependency: what is left is the path's own rate for a stream of this length.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device/tma.cuh"

namespace flashmoe_bench {

// Tma2d: the decode kernels' path, thread 0 requesting 64-column boxes of R rows (128-byte
// swizzle) onto an mbarrier per stage; Tma2dEvictFirst the same under their evict-first L2
// policy. CpAsync: every thread copies 16-byte pieces. Bulk1dRows: each tile row's stage piece
// (BK contiguous elements) as one bulk copy, issued by the lanes of warp 0, onto an mbarrier
// per stage. A tile's R rows are whole rows, so the tile is one contiguous range: Bulk1dLinear
// copies it a stage (R x BK elements, R x BK / row length whole rows) at a time, one bulk copy
// each, and Ldg reads it front to back with no shared memory, each thread keeping kLdgInFlight
// 16-byte loads in flight.
enum class StreamPath { Tma2d, Tma2dEvictFirst, CpAsync, Bulk1dRows, Bulk1dLinear, Ldg };

inline constexpr int kStreamThreads = 256;
inline constexpr int kLdgInFlight = 8;

struct StreamPathArgs {
  const __nv_bfloat16* w13;  // [E, 2I, H]
  const __nv_bfloat16* w2;   // [E, H, I]
  const int* experts;        // [selected] this launch's experts
  int selected, hidden, inter;
  std::uint32_t* queue;  // this launch's tile counter, zero before it
  std::uint32_t* xor4;   // this launch's XOR of every 16-byte word read, zero before it
};

struct StreamTile {
  const __nv_bfloat16* base;  // first element of the tile's first row
  const CUtensorMap* map;
  int map_row;  // the tile's first row in the tensor map
  int kdim;     // row length (elements)
};

// Tiles: per expert 2I / R gate/up tiles, then per expert H / R down tiles.
template <int R>
__device__ inline int stream_tiles(const StreamPathArgs& a) {
  return a.selected * (2 * a.inter / R + a.hidden / R);
}

template <int R>
__device__ inline StreamTile stream_tile(const StreamPathArgs& a, const CUtensorMap* w13_map,
                                         const CUtensorMap* w2_map, int tile) {
  const int gateup = a.selected * (2 * a.inter / R);
  const std::int64_t H = a.hidden, I = a.inter;
  if (tile < gateup) {
    const int per = 2 * a.inter / R, e = a.experts[tile / per], r0 = (tile % per) * R;
    const int row = e * 2 * a.inter + r0;
    return {a.w13 + row * H, w13_map, row, a.hidden};
  }
  tile -= gateup;
  const int per = a.hidden / R, e = a.experts[tile / per], r0 = (tile % per) * R;
  const int row = e * a.hidden + r0;
  return {a.w2 + row * I, w2_map, row, a.inter};
}

__device__ __forceinline__ void xor_into(uint4& acc, const uint4 v) {
  acc.x ^= v.x;
  acc.y ^= v.y;
  acc.z ^= v.z;
  acc.w ^= v.w;
}

__device__ __forceinline__ uint4 ldg_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void bulk_load_1d(std::uint32_t dst, const void* src,
                                             std::uint32_t bytes, std::uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
#endif
}

// One block streams tiles until the queue is empty, then adds its XOR to the launch's.
template <StreamPath P, int R, int BK, int STAGES>
__global__ void __launch_bounds__(kStreamThreads)
    stream_path_kernel(const __grid_constant__ CUtensorMap w13_map,
                       const __grid_constant__ CUtensorMap w2_map, const StreamPathArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // the benchmark runs on sm_90 only
  using namespace flashmoe::detail;
  constexpr int kStageBytes = R * BK * 2;
  constexpr int kStageWords = kStageBytes / 16;
  static_assert(kStageWords % kStreamThreads == 0, "whole words a thread");
  static_assert(BK % kTmaBoxCols == 0, "whole boxes");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ std::uint64_t full[STAGES];
  __shared__ int s_tile;
  __shared__ uint4 s_xor[kStreamThreads / 32];
  const int tid = threadIdx.x;
  unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
  const std::uint32_t sbase = smem_u32(smem);
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) mbar_init(smem_u32(&full[s]), 1);
    fence_mbarrier_init();
  }
  std::uint32_t phase = 0;
  uint4 acc = make_uint4(0, 0, 0, 0);
  const int tiles = stream_tiles<R>(a);
  [[maybe_unused]] std::uint64_t policy = 0;
  if constexpr (P == StreamPath::Tma2dEvictFirst) policy = l2_evict_first_policy();

  for (;;) {
    __syncthreads();  // the previous tile's stages are consumed; s_tile is free
    if (tid == 0) s_tile = static_cast<int>(atomicAdd(a.queue, 1u));
    __syncthreads();
    const int tile = s_tile;
    if (tile >= tiles) break;
    const StreamTile t = stream_tile<R>(a, &w13_map, &w2_map, tile);
    const int ktiles = t.kdim / BK;

    if constexpr (P == StreamPath::Ldg) {
      const int words = R * t.kdim / 8;
      const uint4* src = reinterpret_cast<const uint4*>(t.base);
      for (int i0 = tid; i0 < words; i0 += kStreamThreads * kLdgInFlight) {
        uint4 v[kLdgInFlight];
#pragma unroll
        for (int j = 0; j < kLdgInFlight; ++j) {
          const int i = i0 + j * kStreamThreads;
          v[j] = i < words ? ldg_stream(src + i) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < kLdgInFlight; ++j) xor_into(acc, v[j]);
      }
    } else if constexpr (P == StreamPath::CpAsync) {
      auto load = [&](int stage, int kt) {
        for (int i = tid; i < kStageWords; i += kStreamThreads) {
          const int row = i / (BK / 8), chunk = i % (BK / 8);
          const __nv_bfloat16* src =
              t.base + static_cast<std::int64_t>(row) * t.kdim + kt * BK + chunk * 8;
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                           sbase + stage * kStageBytes + i * 16),
                       "l"(src));
        }
      };
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load(s, s);
        asm volatile("cp.async.commit_group;\n");
      }
      for (int kt = 0; kt < ktiles; ++kt) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));
        __syncthreads();  // stage kt landed for all; stage kt - 1 is consumed by all
        if (kt + STAGES - 1 < ktiles) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
        asm volatile("cp.async.commit_group;\n");
        const uint4* words = reinterpret_cast<const uint4*>(smem + (kt % STAGES) * kStageBytes);
        for (int i = tid; i < kStageWords; i += kStreamThreads) xor_into(acc, words[i]);
      }
      asm volatile("cp.async.wait_group 0;\n");
    } else {
      // The copy-engine paths: stage s completes on full[s].
      auto issue = [&](int stage, int kt) {
        const std::uint32_t bar = smem_u32(&full[stage]);
        const std::uint32_t dst = sbase + stage * kStageBytes;
        if constexpr (P == StreamPath::Bulk1dLinear) {
          mbar_expect_tx(bar, kStageBytes);
          bulk_load_1d(dst,
                       reinterpret_cast<const unsigned char*>(t.base) +
                           static_cast<std::int64_t>(kt) * kStageBytes,
                       kStageBytes, bar);
        } else if constexpr (P == StreamPath::Bulk1dRows) {
          const int lane = tid & 31;
          if (lane == 0) mbar_expect_tx(bar, kStageBytes);
          __syncwarp();
          for (int row = lane; row < R; row += 32) {
            bulk_load_1d(dst + row * BK * 2,
                         t.base + static_cast<std::int64_t>(row) * t.kdim + kt * BK, BK * 2, bar);
          }
        } else {
          mbar_expect_tx(bar, kStageBytes);
          for (int h = 0; h < BK / kTmaBoxCols; ++h) {
            const int col = kt * BK + h * kTmaBoxCols;
            if constexpr (P == StreamPath::Tma2dEvictFirst) {
              tma_load_2d(dst + h * R * 128, t.map, bar, col, t.map_row, policy);
            } else {
              tma_load_2d(dst + h * R * 128, t.map, bar, col, t.map_row);
            }
          }
        }
      };
      const bool issuer = P == StreamPath::Bulk1dRows ? tid < 32 : tid == 0;
      if (issuer) {
        for (int s = 0; s < STAGES && s < ktiles; ++s) issue(s, s);
      }
      for (int kt = 0; kt < ktiles; ++kt) {
        const int stage = kt % STAGES;
        // A copy that never lands (a box that does not match the expected bytes) ends the
        // process after about two seconds instead of hanging the call.
        const long long spin0 = clock64();
        while (!mbar_try_wait(smem_u32(&full[stage]), (phase >> stage) & 1u)) {
          if (clock64() - spin0 > (1ll << 32)) __trap();
        }
        phase ^= 1u << stage;
        const uint4* words = reinterpret_cast<const uint4*>(smem + stage * kStageBytes);
        for (int i = tid; i < kStageWords; i += kStreamThreads) xor_into(acc, words[i]);
        __syncthreads();  // every thread is done with the stage before it is refilled
        if (issuer && kt + STAGES < ktiles) issue(stage, kt + STAGES);
      }
    }
  }

  // The block's XOR: warps by shuffles, then warp 0 over the warps, one atomic per word.
  for (int off = 16; off > 0; off >>= 1) {
    acc.x ^= __shfl_xor_sync(0xffffffffu, acc.x, off);
    acc.y ^= __shfl_xor_sync(0xffffffffu, acc.y, off);
    acc.z ^= __shfl_xor_sync(0xffffffffu, acc.z, off);
    acc.w ^= __shfl_xor_sync(0xffffffffu, acc.w, off);
  }
  if ((tid & 31) == 0) s_xor[tid >> 5] = acc;
  __syncthreads();
  if (tid == 0) {
    uint4 b = make_uint4(0, 0, 0, 0);
    for (int w = 0; w < kStreamThreads / 32; ++w) xor_into(b, s_xor[w]);
    atomicXor(a.xor4 + 0, b.x);
    atomicXor(a.xor4 + 1, b.y);
    atomicXor(a.xor4 + 2, b.z);
    atomicXor(a.xor4 + 3, b.w);
  }
#endif
}

// The reference XOR of one launch's bytes: a grid-stride loop over the selected experts'
// weights, written independently of the paths above.
__global__ void stream_reference_xor(const StreamPathArgs a) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  const std::int64_t H = a.hidden, I = a.inter;
  const std::int64_t gu_words = 2 * I * H / 8, dn_words = H * I / 8;
  const std::int64_t total = a.selected * (gu_words + dn_words);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const uint4* src;
    if (i < a.selected * gu_words) {
      src = reinterpret_cast<const uint4*>(a.w13 + a.experts[i / gu_words] * 2 * I * H) +
            i % gu_words;
    } else {
      const std::int64_t j = i - a.selected * gu_words;
      src = reinterpret_cast<const uint4*>(a.w2 + a.experts[j / dn_words] * H * I) + j % dn_words;
    }
    xor_into(acc, *src);
  }
  atomicXor(a.xor4 + 0, acc.x);
  atomicXor(a.xor4 + 1, acc.y);
  atomicXor(a.xor4 + 2, acc.z);
  atomicXor(a.xor4 + 3, acc.w);
}

template <StreamPath P, int R, int BK, int STAGES>
struct StreamPathKernel {
  static constexpr int kSmemBytes = P == StreamPath::Ldg ? 0 : STAGES * R * BK * 2 + 1024;

  // Sets the kernel's shared memory once; returns the blocks one SM holds (0 on an error).
  static int blocks_per_sm() {
    auto kernel = stream_path_kernel<P, R, BK, STAGES>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes) !=
        cudaSuccess) {
      return 0;
    }
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kStreamThreads,
                                                      kSmemBytes) != cudaSuccess) {
      return 0;
    }
    return blocks;
  }

  static cudaError_t launch(const CUtensorMap& w13_map, const CUtensorMap& w2_map,
                            const StreamPathArgs& a, int grid, cudaStream_t stream) {
    stream_path_kernel<P, R, BK, STAGES>
        <<<grid, kStreamThreads, kSmemBytes, stream>>>(w13_map, w2_map, a);
    return cudaGetLastError();
  }
};

}  // namespace flashmoe_bench
