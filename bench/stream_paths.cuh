// The copy paths of a decode launch's weight stream, timed alone (bench_ws_mainloop's
// StreamPath rows; issue 21): one launch reads the chosen experts' bytes once (gate/up rows over
// H, then down rows over I, in tiles of R rows and at most kTileCols columns that blocks take
// from a queue) through one path into the SM, and computes nothing but the XOR of every 16-byte
// word, which the benchmark checks against a plain reference kernel's (a path that skipped
// bytes, or read some twice, fails). No MMA, epilogue or dependency: what is left is the path's
// own rate for a stream of this length.
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
// (BK contiguous elements) as one bulk copy, issued by the lanes of warp 0. Bulk1dLinear: a
// tile's rows are contiguous where the tile spans whole rows, so a stage is the next R x BK
// elements of the tile in row order, one bulk copy (where a tile is a column chunk of longer
// rows, one copy a row chunk). These four stream without a break from tile to tile: thread 0
// walks the block's steps a few ahead of their requests and claims the next tile when the walk
// reaches it. Ldg: no shared memory, each thread keeps kLdgInFlight 16-byte loads in flight over
// the tile's words. LdgBalanced: the same loads, but no tiles and no queue: every block reads an
// equal share of the launch's words, so that all blocks end together (no last-tile tail).
enum class StreamPath {
  Tma2d,
  Tma2dEvictFirst,
  CpAsync,
  Bulk1dRows,
  Bulk1dLinear,
  Ldg,
  LdgBalanced
};

inline constexpr int kStreamThreads = 256;
inline constexpr int kLdgInFlight = 8;
// Longest column chunk of a tile (elements): Mixtral's 14336-column down rows in 7 chunks, so
// that its 64-row down tiles are 256 KB like every other tile, not 1.8 MB.
inline constexpr int kTileCols = 2048;

struct StreamPathArgs {
  const __nv_bfloat16* w13;  // [E, 2I, H]
  const __nv_bfloat16* w2;   // [E, H, I]
  const int* experts;        // [selected] this launch's experts
  int selected, hidden, inter;
  std::uint32_t* queue;  // this launch's tile counter, zero before it
  std::uint32_t* xor4;   // this launch's XOR of every 16-byte word read, zero before it
  std::uint32_t* words;  // this launch's count of 16-byte words read, zero before it (the XOR
                         // cannot tell a word read three times from once)
};

// Columns of a tile of rows of `kdim` elements: all of them up to kTileCols, else kTileCols
// (the host checks that kdim is then a multiple of it).
__host__ __device__ inline int tile_cols(int kdim) { return kdim <= kTileCols ? kdim : kTileCols; }

struct StreamTile {
  const __nv_bfloat16* base;  // the tile's first element
  int map;                    // 0: w13's tensor map, 1: w2's
  int map_row, map_col;       // the tile's first element in the tensor map
  int kdim;                   // row length of the matrix (the row stride)
  int cols;                   // columns of the tile
};

// Tiles: per expert 2I / R x the chunks of H gate/up tiles, then per expert H / R x the chunks
// of I down tiles.
template <int R>
__device__ inline int stream_tiles(const StreamPathArgs& a) {
  const int gateup = 2 * a.inter / R * (a.hidden / tile_cols(a.hidden));
  const int down = a.hidden / R * (a.inter / tile_cols(a.inter));
  return a.selected * (gateup + down);
}

template <int R>
__device__ inline StreamTile stream_tile(const StreamPathArgs& a, int tile) {
  const int gu_chunks = a.hidden / tile_cols(a.hidden), gu_per = 2 * a.inter / R * gu_chunks;
  const std::int64_t H = a.hidden, I = a.inter;
  if (tile < a.selected * gu_per) {
    const int e = a.experts[tile / gu_per], t = tile % gu_per;
    const int row = e * 2 * a.inter + t / gu_chunks * R, col = t % gu_chunks * tile_cols(a.hidden);
    return {a.w13 + row * H + col, 0, row, col, a.hidden, tile_cols(a.hidden)};
  }
  tile -= a.selected * gu_per;
  const int dn_chunks = a.inter / tile_cols(a.inter), dn_per = a.hidden / R * dn_chunks;
  const int e = a.experts[tile / dn_per], t = tile % dn_per;
  const int row = e * a.hidden + t / dn_chunks * R, col = t % dn_chunks * tile_cols(a.inter);
  return {a.w2 + row * I + col, 1, row, col, a.inter, tile_cols(a.inter)};
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

__device__ __forceinline__ void mbar_arrive_plain(std::uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// One pipeline step of the stream: a stage of R rows x BK columns of one tile, or the end.
struct StreamStep {
  StreamTile tile;
  int kt;  // the step's K tile within the tile
  bool end;
};

// Thread 0's walk over the block's steps: the current tile and the step within it. The next
// tile is claimed when the walk reaches it, which is kAhead + 1 steps before the block finishes
// its current tile (the claim's round trip is hidden by the stages in flight), so tiles still go
// to whichever blocks free up first.
template <int R, int BK>
struct StreamCursor {
  int tiles, tile, kt;
  StreamTile cur;

  __device__ void claim(const StreamPathArgs& a) {
    tile = static_cast<int>(atomicAdd(a.queue, 1u));
    kt = 0;
    if (tile < tiles) cur = stream_tile<R>(a, tile);
  }
  __device__ void start(const StreamPathArgs& a) {
    tiles = stream_tiles<R>(a);
    claim(a);
  }
  __device__ StreamStep step(const StreamPathArgs& a) {
    if (tile >= tiles) return {{}, 0, true};
    const StreamStep s{cur, kt, false};
    if (++kt == cur.cols / BK) claim(a);
    return s;
  }
};

// The XOR and the word count of the block's threads into the launch's.
__device__ inline void add_block_xor(uint4 acc, std::uint32_t count, const StreamPathArgs& a) {
  __shared__ uint4 s_xor[kStreamThreads / 32];
  __shared__ std::uint32_t s_count[kStreamThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    acc.x ^= __shfl_xor_sync(0xffffffffu, acc.x, off);
    acc.y ^= __shfl_xor_sync(0xffffffffu, acc.y, off);
    acc.z ^= __shfl_xor_sync(0xffffffffu, acc.z, off);
    acc.w ^= __shfl_xor_sync(0xffffffffu, acc.w, off);
    count += __shfl_xor_sync(0xffffffffu, count, off);
  }
  if ((threadIdx.x & 31) == 0) {
    s_xor[threadIdx.x >> 5] = acc;
    s_count[threadIdx.x >> 5] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    uint4 b = make_uint4(0, 0, 0, 0);
    std::uint32_t n = 0;
    for (int w = 0; w < kStreamThreads / 32; ++w) {
      xor_into(b, s_xor[w]);
      n += s_count[w];
    }
    atomicXor(a.xor4 + 0, b.x);
    atomicXor(a.xor4 + 1, b.y);
    atomicXor(a.xor4 + 2, b.z);
    atomicXor(a.xor4 + 3, b.w);
    atomicAdd(a.words, n);
  }
}

// Ldg: a block reads its tiles' words front to back (rows of a column chunk one after another),
// claiming the next tile when it is done (other blocks on the SM cover the round trip).
template <int R>
__device__ void stream_ldg(const StreamPathArgs& a, uint4& acc, std::uint32_t& count) {
  __shared__ int s_tile;
  const int tid = threadIdx.x, tiles = stream_tiles<R>(a);
  for (;;) {
    __syncthreads();  // every thread has read the previous s_tile
    if (tid == 0) s_tile = static_cast<int>(atomicAdd(a.queue, 1u));
    __syncthreads();
    const int tile = s_tile;
    if (tile >= tiles) break;
    const StreamTile t = stream_tile<R>(a, tile);
    const int row_words = t.cols / 8, words = R * row_words;
    for (int i0 = tid; i0 < words; i0 += kStreamThreads * kLdgInFlight) {
      uint4 v[kLdgInFlight];
#pragma unroll
      for (int j = 0; j < kLdgInFlight; ++j) {
        const int i = i0 + j * kStreamThreads;
        // Whole-row tiles are one range; a column chunk is kTileCols / 8 words a row.
        const std::int64_t off =
            t.cols == t.kdim
                ? static_cast<std::int64_t>(i) * 8
                : static_cast<std::int64_t>(i / (kTileCols / 8)) * t.kdim + i % (kTileCols / 8) * 8;
        v[j] = i < words ? ldg_stream(t.base + off) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < kLdgInFlight; ++j) xor_into(acc, v[j]);
      count += min(kLdgInFlight, (words - i0 + kStreamThreads - 1) / kStreamThreads);
    }
  }
}

// Word i of the launch's bytes in the order of stream_reference_xor: every selected expert's w13,
// then every selected expert's w2.
__device__ __forceinline__ const uint4* launch_word(const StreamPathArgs& a, std::int64_t i) {
  const std::int64_t H = a.hidden, I = a.inter, gu_words = 2 * I * H / 8, dn_words = H * I / 8;
  if (i < a.selected * gu_words) {
    return reinterpret_cast<const uint4*>(a.w13 + a.experts[i / gu_words] * 2 * I * H) +
           i % gu_words;
  }
  i -= a.selected * gu_words;
  return reinterpret_cast<const uint4*>(a.w2 + a.experts[i / dn_words] * H * I) + i % dn_words;
}

// LdgBalanced: block b reads words [total b / G, total (b + 1) / G).
__device__ void stream_ldg_balanced(const StreamPathArgs& a, uint4& acc, std::uint32_t& count) {
  const std::int64_t H = a.hidden, I = a.inter;
  const std::int64_t total = a.selected * (2 * I * H / 8 + H * I / 8);
  const std::int64_t begin = total * blockIdx.x / gridDim.x;
  const std::int64_t end = total * (blockIdx.x + 1) / gridDim.x;
  for (std::int64_t i0 = begin + threadIdx.x; i0 < end; i0 += kStreamThreads * kLdgInFlight) {
    uint4 v[kLdgInFlight];
#pragma unroll
    for (int j = 0; j < kLdgInFlight; ++j) {
      const std::int64_t i = i0 + j * kStreamThreads;
      v[j] = i < end ? ldg_stream(launch_word(a, i)) : make_uint4(0, 0, 0, 0);
      count += i < end ? 1u : 0u;
    }
#pragma unroll
    for (int j = 0; j < kLdgInFlight; ++j) xor_into(acc, v[j]);
  }
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
  // Steps described ahead of their requests: thread 0 writes step g's at iteration g - kAhead - 1
  // (after that iteration's barrier), every thread reads it at iteration g at the latest.
  constexpr int kAhead = P == StreamPath::CpAsync ? STAGES - 1 : STAGES;
  constexpr int kRing = 2 * STAGES + 2;
  static_assert(kStageWords % kStreamThreads == 0, "whole words a thread");
  static_assert(BK % kTmaBoxCols == 0 && kTileCols % BK == 0, "whole boxes and steps");
  uint4 acc = make_uint4(0, 0, 0, 0);
  std::uint32_t count = 0;
  if constexpr (P == StreamPath::Ldg) {
    stream_ldg<R>(a, acc, count);
  } else if constexpr (P == StreamPath::LdgBalanced) {
    stream_ldg_balanced(a, acc, count);
  } else {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ std::uint64_t full[STAGES];
    __shared__ StreamStep s_step[kRing];
    const int tid = threadIdx.x;
    unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
    const std::uint32_t sbase = smem_u32(smem);
    [[maybe_unused]] std::uint64_t policy = 0;
    if constexpr (P == StreamPath::Tma2dEvictFirst) policy = l2_evict_first_policy();
    StreamCursor<R, BK> cursor;  // thread 0's
    if (tid == 0) {
      for (int s = 0; s < STAGES; ++s) mbar_init(smem_u32(&full[s]), 1);
      fence_mbarrier_init();
      cursor.start(a);
      for (int g = 0; g <= kAhead; ++g) s_step[g % kRing] = cursor.step(a);
    }
    __syncthreads();

    // Step g into stage g % STAGES (the end: an arrival without bytes, for the copy engine's
    // paths; nothing for cp.async, whose threads all read the end themselves).
    auto request = [&](int g) {
      const StreamStep& st = s_step[g % kRing];
      const int stage = g % STAGES;
      const std::uint32_t dst = sbase + stage * kStageBytes;
      const std::uint32_t bar = smem_u32(&full[stage]);
      const StreamTile& t = st.tile;
      const __nv_bfloat16* piece = t.base + st.kt * BK;  // row 0's piece of the step
      if constexpr (P == StreamPath::CpAsync) {
        if (st.end) return;
        for (int i = tid; i < kStageWords; i += kStreamThreads) {
          const __nv_bfloat16* src =
              piece + static_cast<std::int64_t>(i / (BK / 8)) * t.kdim + i % (BK / 8) * 8;
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst + i * 16), "l"(src)
                       : "memory");
        }
      } else if constexpr (P == StreamPath::Bulk1dRows) {
        const int lane = tid & 31;
        if (st.end) {
          if (lane == 0) mbar_arrive_plain(bar);
          return;
        }
        if (lane == 0) mbar_expect_tx(bar, kStageBytes);
        __syncwarp();
        for (int row = lane; row < R; row += 32) {
          bulk_load_1d(dst + row * BK * 2, piece + static_cast<std::int64_t>(row) * t.kdim, BK * 2,
                       bar);
        }
      } else if constexpr (P == StreamPath::Bulk1dLinear) {
        if (st.end) {
          mbar_arrive_plain(bar);
          return;
        }
        mbar_expect_tx(bar, kStageBytes);
        if (t.cols == t.kdim) {  // whole rows: the step is the tile's next R x BK elements
          bulk_load_1d(dst, t.base + static_cast<std::int64_t>(st.kt) * R * BK, kStageBytes, bar);
        } else {  // a column chunk: the step is its next R x BK / kTileCols row chunks
          constexpr int kRowsPerStep = R * BK / kTileCols;
          static_assert(R * BK % kTileCols == 0, "whole row chunks a step");
          for (int r = 0; r < kRowsPerStep; ++r) {
            bulk_load_1d(dst + r * kTileCols * 2,
                         t.base + static_cast<std::int64_t>(st.kt * kRowsPerStep + r) * t.kdim,
                         kTileCols * 2, bar);
          }
        }
      } else {
        if (st.end) {
          mbar_arrive_plain(bar);
          return;
        }
        mbar_expect_tx(bar, kStageBytes);
        const CUtensorMap* map = t.map == 0 ? &w13_map : &w2_map;
        for (int h = 0; h < BK / kTmaBoxCols; ++h) {
          const int col = t.map_col + st.kt * BK + h * kTmaBoxCols;
          if constexpr (P == StreamPath::Tma2dEvictFirst) {
            tma_load_2d(dst + h * R * 128, map, bar, col, t.map_row, policy);
          } else {
            tma_load_2d(dst + h * R * 128, map, bar, col, t.map_row);
          }
        }
      }
    };

    constexpr bool kAllIssue = P == StreamPath::CpAsync;
    const bool issuer = kAllIssue || (P == StreamPath::Bulk1dRows ? tid < 32 : tid == 0);
    std::uint32_t phase = 0;
    if (issuer) {
      for (int g = 0; g < kAhead; ++g) {
        request(g);
        if constexpr (kAllIssue) asm volatile("cp.async.commit_group;\n" ::: "memory");
      }
    }
    for (int g = 0;; ++g) {
      const int stage = g % STAGES;
      if constexpr (kAllIssue) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2) : "memory");
        __syncthreads();  // step g landed for all; step g - 1's stage is consumed by all
        if (s_step[g % kRing].end) break;
        request(g + kAhead);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
      } else {
        // A copy that never lands (a box that does not match the expected bytes) traps after
        // about two seconds instead of hanging the call; the process's later rows then fail.
        const long long spin0 = clock64();
        while (!mbar_try_wait(smem_u32(&full[stage]), (phase >> stage) & 1u)) {
          if (clock64() - spin0 > (1ll << 32)) __trap();
        }
        phase ^= 1u << stage;
        if (s_step[g % kRing].end) break;
      }
      const uint4* words = reinterpret_cast<const uint4*>(smem + stage * kStageBytes);
      for (int i = tid; i < kStageWords; i += kStreamThreads) xor_into(acc, words[i]);
      count += kStageWords / kStreamThreads;
      if constexpr (!kAllIssue) {
        __syncthreads();  // every thread is done with the stage before it is refilled
        if (issuer) request(g + kAhead);
      }
      if (tid == 0) s_step[(g + kAhead + 1) % kRing] = cursor.step(a);
    }
    if constexpr (kAllIssue) asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();  // s_xor in add_block_xor follows the last reads of the stages
  }
  add_block_xor(acc, count, a);
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
  static constexpr int kSmemBytes =
      P == StreamPath::Ldg || P == StreamPath::LdgBalanced ? 0 : STAGES * R * BK * 2 + 1024;

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
