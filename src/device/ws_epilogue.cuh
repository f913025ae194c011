// Collective epilogues of the warp-specialised prefill engine, run by the 256 consumer threads:
// the gather of an m-tile's token rows into the expert-sorted copy of x (and of their routing
// weights into row order), the gate/up tile's act(gate) * up into h, and the down tile's
// routing weight into the per-pair rows (ypart), its count per token slice and the fixed-order
// combine of the tokens it completes. What a job publishes is released only when the whole team
// finished it without a failed wait.
#pragma once

#include <cstdint>

#include "combine.cuh"
#include "numeric.cuh"
#include "params.cuh"
#include "sync.cuh"
#include "wgmma.cuh"
#include "ws_scheduler.cuh"
#include "ws_shape.cuh"

namespace flashmoe::detail {

template <class W, typename T>
struct WsEpilogue {
  static constexpr int kThreads = W::kConsumerThreads;

  __device__ static int warpgroup() { return threadIdx.x >> 7; }
  // Whether both warpgroups hold the job's rows and split its columns: the 64-row shape, and a
  // half tile of the 128-row one (WsShape::half_tile).
  __device__ static bool split_columns(const WsJob& job) {
    return W::kGroups == 2 || W::half_tile(job.rows);
  }
  // The m-tile row of this thread's accumulator j.
  __device__ static int acc_row(int j, bool split) {
    return wgmma_acc_row(j) + (split ? 0 : 64 * warpgroup());
  }

  // Thread 0: the m-tile's count, released after the team's writes (ordered by the barrier
  // before it, and for the copy engine's reads by each writer's proxy fence).
  __device__ static void publish_mtile(const KernelParams<T>& p, const WsJob& job) {
    if (threadIdx.x == 0) fetch_add_acq_rel(&p.mtile_done[job.slot], 1);
  }

  // x_sorted[row0 + r] = x[token of sorted row row0 + r] for the m-tile's rows and the job's
  // share of their 16-byte chunks (part job.ntile of p.gather_parts), and, by part 0,
  // sorted_weight[row0 + r] = the row's routing weight: two rows a warp at a time, 16 bytes a
  // lane, every load of both rows issued before their stores (64 KB in flight a block: a gather
  // is a chain of L2 round trips, bench/NOTES.md row 112). x may alias y (an in-place forward):
  // it is read through L2, and no y row of these tokens is written before the m-tile's down
  // tiles, which wait for this.
  __device__ static bool gather(const WsKernelParams<T>& p, const WsJob& job) {
    constexpr int kRows = 2, kBatch = 8, kWarps = kThreads / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunks = p.hidden / 8;  // H % 8 == 0
    const int parts = static_cast<int>(p.gather_parts), part = job.ntile;
    const int first = chunks * part / parts, end = chunks * (part + 1) / parts;
    const int rows = static_cast<int>(job.rows);
    for (int r0 = warp * kRows; r0 < rows; r0 += kWarps * kRows) {
      const uint4* src[kRows];
      uint4* dst[kRows];
      float weight[kRows];  // stored after the rows, so that no store waits before their loads
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const std::int64_t row = job.row0 + min(r0 + i, rows - 1);  // a repeat when past the end
        const int pair = __ldcg(p.sorted_pair + row);
        const int token = pair / p.top_k;
        weight[i] = lane == 0 && part == 0 ? __ldcg(p.pair_weight + pair) : 0.0f;
        src[i] = reinterpret_cast<const uint4*>(p.x + static_cast<std::int64_t>(token) * p.hidden);
        dst[i] = reinterpret_cast<uint4*>(p.x_sorted + row * p.hidden);
      }
      for (int c0 = first; c0 < end; c0 += kBatch * 32) {
        uint4 v[kRows][kBatch];
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            const int c = c0 + b * 32 + lane;
            if (c < end) v[i][b] = __ldcg(src[i] + c);
          }
        }
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            const int c = c0 + b * 32 + lane;
            if (c < end && r0 + i < rows) dst[i][c] = v[i][b];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        if (part == 0 && lane == 0 && r0 + i < rows) {
          p.sorted_weight[job.row0 + r0 + i] = weight[i];
        }
      }
    }
    fence_proxy_async_global();
    return true;
  }

  // h[rows of the m-tile, n0 : n0 + kGateUpCols] = act(x Wg^T) * (x Wu^T): accumulator j is a
  // gate column, j + kAcc / 2 the up column of the same output column. SiLU, the activation of
  // most served models, gets a loop of its own without the per-element switch.
  __device__ static void gateup(const KernelParams<T>& p, const WsJob& job,
                                const float (&acc)[W::kAcc]) {
    if (p.activation == static_cast<int>(Activation::SiluGated)) {
      store_h(p, job, acc, [](float g) { return silu(g); });
    } else {
      const int activation = p.activation;
      store_h(p, job, acc, [activation](float g) { return activate(g, activation); });
    }
    fence_proxy_async_global();
  }

  // One of the thread's two accumulator rows (r8 = 0: r, 1: r + 8) into `dst` (that row's
  // element c0 of the output; written only when `live`) in 16-byte chunks (quad_transpose): a set
  // of four n8 blocks is 32 columns, and `pack(j)` packs accumulators j and j + 1. Columns stop at
  // `cols` (this warpgroup's) and at `limit` - c0 (the tensor's edge), both warpgroup-uniform.
  template <int kSets, class Pack>
  __device__ static void store_row(int r8, T* dst, bool live, int cols, int c0, int limit,
                                   Pack pack) {
    const int chunk = 8 * (threadIdx.x & 3);
#pragma unroll
    for (int s = 0; s < kSets; ++s) {
      if (32 * s >= cols || c0 + 32 * s >= limit) break;
      std::uint32_t v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = pack(16 * s + 4 * k + 2 * r8);
      quad_transpose(v);
      const int col = 32 * s + chunk;
      if (live && col < cols && c0 + col < limit) {
        *reinterpret_cast<uint4*>(dst + col) = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
  }

  template <class Act>
  __device__ static void store_h(const KernelParams<T>& p, const WsJob& job,
                                 const float (&acc)[W::kAcc], Act act) {
    constexpr int kHalf = W::kAcc / 2;
    const int I = p.inter;
    const bool split = split_columns(job);
    // Columns of this warpgroup: all kGateUpCols, or its share of them (kHalf / 2 of the
    // accumulators in a half tile).
    const int cols = split ? W::kGateUpCols / 2 : W::kGateUpCols;
    const int c0 = static_cast<int>(job.ntile) * W::kGateUpCols + (split ? warpgroup() * cols : 0);
#pragma unroll
    for (int r8 = 0; r8 < 2; ++r8) {
      const int row = acc_row(2 * r8, split);
      const bool live = row < static_cast<int>(job.rows);
      T* dst = p.h + (job.row0 + static_cast<std::int64_t>(live ? row : 0)) * I + c0;
      store_row<kHalf / 16>(r8, dst, live, cols, c0, I, [&](int j) {
        return pack2<T>(act(acc[j]) * acc[j + kHalf], act(acc[j + 1]) * acc[j + 1 + kHalf]);
      });
    }
  }

  // The pair and routing weight of this thread's two accumulator rows (r and r + 8), loaded
  // when the job starts so that they arrive during the mainloop: both by row (the gathers wrote
  // the weights in row order), so that no load waits for another before the K loop.
  struct DownRows {
    std::int32_t pair[2];
    float weight[2];
  };
  __device__ static DownRows down_rows(const WsKernelParams<T>& p, const WsJob& job) {
    DownRows d;
    const bool split = split_columns(job);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = acc_row(2 * i, split);  // rows of accumulators 0 and 2
      const bool live = row < static_cast<int>(job.rows);
      d.pair[i] = live ? __ldcg(p.sorted_pair + job.row0 + row) : -1;
      d.weight[i] = live ? __ldcg(p.sorted_weight + job.row0 + row) : 0.0f;
    }
    return d;
  }

  // ypart[kslice, pair, n0 : n0 + BN] = w_pair * (h W2^T) for the m-tile's rows, in the
  // activation type (as the grouped-GEMM paths of serving engines keep their per-pair rows):
  // half the bytes of fp32 rows, written here and read back by the combine.
  __device__ static void down_store(const KernelParams<T>& p, const WsJob& job,
                                    const float (&acc)[W::kAcc], const DownRows& d) {
    const int H = p.hidden;
    const std::int64_t pairs = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
    T* plane = p.ypart + job.kslice * pairs * H;
    const bool split = split_columns(job);
    const int cols = split ? W::BN / 2 : W::BN;  // this warpgroup's
    const int c0 = static_cast<int>(job.ntile) * W::BN + (split ? warpgroup() * cols : 0);
#pragma unroll
    for (int r8 = 0; r8 < 2; ++r8) {
      const bool live = d.pair[r8] >= 0;
      const float w = d.weight[r8];
      T* dst = plane + static_cast<std::int64_t>(live ? d.pair[r8] : 0) * H + c0;
      store_row<W::kAcc / 16>(r8, dst, live, cols, c0, H,
                              [&](int j) { return pack2<T>(acc[j] * w, acc[j + 1] * w); });
    }
  }

  // After the team's barrier: counts each row of the tile once (lanes 0 and 1 of each quad, the
  // rows r and r + 8 of their accumulators; one warpgroup when both hold the same rows), lists
  // the tokens whose last part this was, and combines them.
  __device__ static void down_combine(const KernelParams<T>& p, const WsJob& job, const DownRows& d,
                                      std::int32_t* tokens, int* count) {
    const int lane = threadIdx.x & 31;
    const std::uint32_t parts = static_cast<std::uint32_t>(p.top_k * p.dsplit.kslices);
    if ((!split_columns(job) || warpgroup() == 0) && (lane & 3) < 2) {
      const std::int32_t pair = d.pair[lane & 1];
      if (pair >= 0) {
        const int token = pair / p.top_k;
        std::uint32_t* c = &p.combine_done[token * p.combine_stride + job.ntile];
        if (fetch_add_acq_rel(c, 1) == parts - 1) {
          store_relaxed(c, 0);                  // nobody else touches it again this launch
          tokens[atomicAdd(count, 1)] = token;  // list order is irrelevant
        }
      }
    }
    team_sync();
    const int n = *count;
    const int c0 = static_cast<int>(job.ntile) * W::BN;
    // Four items of 8 columns a thread, four parts each in flight: 16 loads of 16 bytes. The
    // 64-row shape takes two items: four spilled its registers (bench/NOTES.md row 107).
    constexpr int kItems = W::kGroups == 1 ? 4 : 2;
    if (n > 0) {
      combine_tokens<kItems, 4>(p, tokens, n, c0, min(W::BN, p.hidden - c0), threadIdx.x, kThreads);
    }
  }
};

}  // namespace flashmoe::detail
