// Collective mainloop of the warp-specialised prefill engine: the producer thread streams a
// job's stages (the A boxes of the m-tile's rows and the weight boxes, 64 columns of K each)
// into the ring; the consumer warpgroups multiply each stage on the warpgroup MMA and release
// it. What depends on how the weights are stored is the Format policy (DenseWeights: bf16/fp16);
// what the tile does with its product is the epilogue's (ws_epilogue.cuh).
#pragma once

#include <cstdint>

#include "params.cuh"
#include "pipeline.cuh"
#include "tma.cuh"
#include "wgmma.cuh"
#include "ws_scheduler.cuh"
#include "ws_shape.cuh"

namespace flashmoe::detail {

// The weight format of the mainloop: how the producer requests a stage's weight boxes and how a
// consumer warpgroup multiplies a stage. Dense bf16/fp16 weights here; fp8 e4m3 with
// per-channel or 128 x 128 block scales (the fp8 wgmma, scales applied per stage or in the
// epilogue) and 4-bit weights dequantised in registers would be other formats with the same
// members.
template <class W, typename T>
struct DenseWeights {
  // The gate and up boxes of a gate/up stage: per warpgroup group g, kGateBoxRows gate rows from
  // w13 row `wrow` and the up rows of the same columns (`inter` rows further), side by side.
  __device__ static void issue_gateup(std::uint32_t b, const CUtensorMap* map, std::uint32_t bar,
                                      int col, int wrow, int inter) {
#pragma unroll
    for (int g = 0; g < W::kGroups; ++g) {
      const std::uint32_t gate = b + g * W::WN * W::kRowBytes;
      tma_load_2d(gate, map, bar, col, wrow + g * W::kGateBoxRows);
      tma_load_2d(gate + W::kGateBoxRows * W::kRowBytes, map, bar, col,
                  wrow + inter + g * W::kGateBoxRows);
    }
  }
  // The BN w2 rows of a down stage.
  __device__ static void issue_down(std::uint32_t b, const CUtensorMap* map, std::uint32_t bar,
                                    int col, int wrow) {
    tma_load_2d(b, map, bar, col, wrow);
  }
  // acc += A (64 rows, descriptor `a`) x B (WN rows, descriptor `b`)^T over the stage's BK
  // columns, committed as one batch of warpgroup MMAs (the caller waits for it). The k16 steps
  // are 32 bytes apart in each operand's rows.
  __device__ static void mma(float (&acc)[W::kAcc], std::uint64_t a, std::uint64_t b) {
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < W::BK / 16; ++ks) {
      WgmmaM64K16<W::WN, T>::run(acc, smem_desc_add(a, ks * 32), smem_desc_add(b, ks * 32), true);
    }
    wgmma_commit();
  }
  // The same for a half tile of a 128-row shape (W::half_tile): warpgroup g multiplies the
  // tile's 64 rows by its share of the stage's weight rows. Gate/up: its 64 gate columns
  // [64 g, 64 g + 64) and their up rows, into accumulators 0-31 (gate) and kAcc / 2 ... + 31
  // (up), where the epilogue pairs them as in a full tile; down: w2 rows [128 g, 128 g + 128)
  // into accumulators 0-63.
  // (Descriptors as in mma; g is the warpgroup.)
  __device__ static void mma_half(float (&acc)[W::kAcc], std::uint64_t a, std::uint64_t b,
                                  bool gateup, int g) {
    if constexpr (W::BM == 128) {
      float(&lo)[64] = *reinterpret_cast<float(*)[64]>(&acc[0]);
      float(&gate)[32] = *reinterpret_cast<float(*)[32]>(&acc[0]);
      float(&up)[32] = *reinterpret_cast<float(*)[32]>(&acc[W::kAcc / 2]);
      const std::uint64_t gate_b = smem_desc_add(b, g * 64 * W::kRowBytes);
      const std::uint64_t up_b = smem_desc_add(gate_b, W::kGateBoxRows * W::kRowBytes);
      const std::uint64_t down_b = smem_desc_add(b, g * 128 * W::kRowBytes);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < W::BK / 16; ++ks) {
        const std::uint64_t ad = smem_desc_add(a, ks * 32);
        if (gateup) {
          WgmmaM64K16<64, T>::run(gate, ad, smem_desc_add(gate_b, ks * 32), true);
          WgmmaM64K16<64, T>::run(up, ad, smem_desc_add(up_b, ks * 32), true);
        } else {
          WgmmaM64K16<128, T>::run(lo, ad, smem_desc_add(down_b, ks * 32), true);
        }
      }
      wgmma_commit();
    } else {
      (void)acc, (void)a, (void)b, (void)gateup, (void)g;
    }
  }
};

template <class W, typename T, class Format = DenseWeights<W, T>>
struct WsMainloop {
  using Pipe = Pipeline<W::STAGES>;
  using State = PipeState<W::STAGES>;
  static_assert(W::STAGES <= 32, "a bit per stage");

  // The producer's record of the stages holding its copies: bit s of `mask` when the latest use
  // of stage s had copies issued, bit s of `parity` the phase they complete. Drained before the
  // block leaves, so that no copy lands in the shared memory of a block that has gone.
  struct Issued {
    std::uint32_t mask = 0, parity = 0;
  };

  // Stages of K in a job: H for gate/up, the job's K slice of I for down.
  __device__ static int ktiles(const KernelParams<T>& p, const WsJob& job) {
    if (job.kind == kJobGateUp) return (p.hidden + W::BK - 1) / W::BK;
    const int k0 = job.kslice * p.dsplit.klen;
    return (min(p.dsplit.klen, p.inter - k0) + W::BK - 1) / W::BK;
  }

  // The producer thread: every stage of a gate/up or down job. Boxes past a tensor's edge are
  // zero-filled by the copy engine (and still count their bytes). Gate rows past I read up
  // rows, up rows past I the next expert's, down rows past H the next expert's, and A rows past
  // the m-tile other m-tiles' rows: their outputs are dropped by the epilogue. False when the
  // ring is poisoned (nothing more is issued).
  __device__ static bool produce(const WsKernelParams<T>& p, Pipe& pipe, State& st, Issued& issued,
                                 std::uint32_t ring, const WsJob& job, const Watchdog& wd) {
    const bool gateup = job.kind == kJobGateUp;
    const int n = ktiles(p, job);
    const int k0 = gateup ? 0 : job.kslice * p.dsplit.klen;
    const int row0 = static_cast<int>(job.row0);
    const int e = static_cast<int>(job.expert);
    const int wrow =
        gateup ? e * 2 * p.inter + job.ntile * W::kGateUpCols : e * p.hidden + job.ntile * W::BN;
    const int a_boxes = W::a_boxes(job.rows);  // a half tile's A is its 64 rows
    const std::uint32_t stage_bytes = W::B_BYTES + a_boxes * W::kABoxRows * W::kRowBytes;
    // Test fault: the first stage of one down tile is never requested, so that its wait runs
    // into the watchdog.
    const bool stall = p.fault == kFaultStallWeightCopy && !gateup && job.slot == 0 &&
                       job.ntile == 0 && job.kslice == 0;
    for (int kt = 0; kt < n; ++kt) {
      if (!pipe.producer_acquire(st, wd, kSiteWeightCopy) || pipe.is_poisoned()) return false;
      const std::uint32_t a = ring + st.index * W::STAGE_BYTES, b = a + W::A_BYTES;
      const std::uint32_t bar = pipe.full_barrier(st);
      pipe.producer_expect(st, stage_bytes);
      const int col = k0 + kt * W::BK;
      const std::uint32_t bit = 1u << st.index;
      issued.mask &= ~bit;
      if (!(stall && kt == 0)) {
        issued.mask |= bit;
        issued.parity = (issued.parity & ~bit) | (st.phase << st.index);
        const CUtensorMap* a_map = gateup ? &p.xs_map : &p.h_map;
        for (int r = 0; r < a_boxes; ++r) {
          tma_load_2d(a + r * W::kABoxRows * W::kRowBytes, a_map, bar, col,
                      row0 + r * W::kABoxRows);
        }
        if (gateup) {
          Format::issue_gateup(b, &p.w13_map, bar, col, wrow, p.inter);
        } else {
          Format::issue_down(b, &p.w2_map, bar, col, wrow);
        }
      }
      st.advance();
    }
    return true;
  }

  // The producer thread, leaving: waits until every stage it filled has landed (at once when the
  // consumers took them all; after a failure, stages they never waited for), each wait bounded
  // by the watchdog again. A stage left without its copies (the test fault) is not waited for.
  __device__ static void drain(Pipe& pipe, const Issued& issued, const Watchdog& wd) {
    for (int s = 0; s < W::STAGES; ++s) {
      if (((issued.mask >> s) & 1u) == 0) continue;
      const std::uint32_t bar = smem_u32(&pipe.full[s]), parity = (issued.parity >> s) & 1u;
      const std::uint64_t start = global_timer_ns();
      while (!mbar_try_wait(bar, parity) && global_timer_ns() - start <= wd.timeout_ns) {
      }
    }
  }

  // A consumer thread (warpgroup g = threadIdx.x / 128): acc = its part of the job's product.
  // Every thread runs every stage's MMAs whatever happens (the warpgroup MMA needs all 128
  // threads): after a failed wait the rest is garbage and the result false; the caller then
  // publishes nothing.
  __device__ static bool consume(float (&acc)[W::kAcc], const KernelParams<T>& p, const WsJob& job,
                                 Pipe& pipe, State& st, std::uint32_t ring, const Watchdog& wd) {
    // The warpgroup from lane 0's shuffle: warp-uniform, so the first stage's descriptors are
    // built once per job and each stage only adds its offset (bench/NOTES.md, row 106).
    const int wg = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x >> 7), 0);
    const bool leader = (threadIdx.x & 31) == 0;
#pragma unroll
    for (int j = 0; j < W::kAcc; ++j) acc[j] = 0.0f;
    const int n = ktiles(p, job);
    const bool half = W::half_tile(job.rows), gateup = job.kind == kJobGateUp;
    const std::uint32_t a_off = W::kGroups == 1 && !half ? wg * 64 * W::kRowBytes : 0;
    const std::uint32_t b_off = W::A_BYTES + (W::kGroups == 1 ? 0 : wg * W::WN * W::kRowBytes);
    const std::uint64_t a0 = smem_desc_sw128(ring + a_off), b0 = smem_desc_sw128(ring + b_off);
    bool ok = true;
    for (int kt = 0; kt < n; ++kt) {
      if (ok) ok = pipe.consumer_wait(st, wd, kSiteWeightCopy);
      const std::uint32_t s = st.index * W::STAGE_BYTES;
      if (half) {
        Format::mma_half(acc, smem_desc_add(a0, s), smem_desc_add(b0, s), gateup, wg);
      } else {
        Format::mma(acc, smem_desc_add(a0, s), smem_desc_add(b0, s));
      }
      // One batch at a time: a batch left in flight measured no faster (bench/NOTES.md,
      // issue 20), and ptxas then guards the accumulators with waits of its own.
      wgmma_wait<0>();
      if (leader) pipe.consumer_release(st);
      st.advance();
    }
    return ok;
  }
};

}  // namespace flashmoe::detail
