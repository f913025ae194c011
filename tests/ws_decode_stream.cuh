// Issue 21's decode stream, as a prototype beside the engine's parts (sm_90a; elsewhere the
// kernel is empty): the chosen experts' gate/up and down weights streamed by one launch, a
// producer warp per block issuing every box through the copy engine onto a 20-stage ring, and
// one consumer warpgroup multiplying with the weights as the MMA's 64 rows and the expert's
// (at most 16) token rows as its columns (swap-AB: decode tiles have few rows, so the weight
// rows fill the MMA's height instead of padding). Tickets: every gate/up tile (32 h columns of
// one expert: its 32 gate and 32 up rows; paired variants 64), then every down tile (64 columns
// of H; paired variants 128). A down tile requests its weight boxes before its expert's h is
// complete (they do not depend on it) and its h boxes once all that expert's gate/up tiles have
// published, so a block's stream of weight bytes does not stop at the phase change. Its
// measurement sets what the decode engine can reach (bench_ws_mainloop, DecodeStream rows);
// routing and the combine are not part of it.
// No deadlock: a block claims tickets in increasing order and gate/up tiles wait for nothing,
// so every down tile's wait ends once the blocks holding its expert's gate/up tickets run them.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device/numeric.cuh"
#include "device/pipeline.cuh"
#include "device/sync.cuh"
#include "device/wgmma.cuh"
#include "device/ws_scheduler.cuh"

namespace flashmoe_test {

inline constexpr int kDsTokens = 16;    // token rows of a slot (B's rows) unless a variant says
inline constexpr int kDsGateCols = 32;  // rows of a w13 box (h columns of a gate/up tile)
inline constexpr int kDsDownCols = 64;  // rows of a w2 box (y columns of a down tile)
inline constexpr int kDsJobDepth = 4;
inline constexpr std::uint32_t kDsRowBytes = 128;  // one swizzle atom's row: 64 K columns

// The consumer side, the variable of the measurement (bench_ws_mainloop's DecodeStream rows).
// Consumers: warpgroups taking alternate jobs (each skips the other's stages in the ring).
// InFlight: MMA batches left running when a warpgroup moves to its next stage (0 or 1).
// KAtoms: 64-column swizzle atoms of K per stage (a stage is 10 KB per atom). Mma false: the
// consumers only wait for and release each stage (the producer's own rate). Store false: no
// epilogue, h and out unwritten but one value a job that keeps the MMAs (only for timing; with
// Mma false and Store true the consumers run the epilogue on zero products, so that the two
// parts of the consumers' cost time apart).
// Pair: 128 weight rows a tile, two m64 MMAs a K step into two accumulators (a gate/up tile's 64
// gate rows and its 64 up rows, so that each thread holds the gate and up value of the same h
// element and forms h in registers; a down tile's 128 y columns), written from registers.
// Tokens: token rows of a slot (the MMA's N: 16, 32 or 48; zeros past the expert's own).
// OutBf16: out written as bf16 (the library's ypart type: half the bytes) into out's first half.
// BlocksPerSm: 2 halves the ring (100 KB), so that two blocks share an SM and one's epilogue
// runs while the other's consumers multiply (the launch's grid is then two blocks an SM).
// Skip (timing only, results wrong, but for kDsPublisher): parts of the epilogue left out or
// changed, a mask of kDsSkip* below.
inline constexpr int kDsSkipFence = 1;  // the proxy fence after h's stores
inline constexpr int kDsSkipOut = 2;    // out's stores
inline constexpr int kDsSkipH = 4;      // h's stores
inline constexpr int kDsDelay = 8;      // no epilogue; the consumers spin 1000 cycles a job
inline constexpr int kDsContiguous = 16;  // a tile's h or out as one block (rows of its width)
inline constexpr int kDsDiscardOut = 32;  // a down tile's out lines dropped from L2 unwritten
inline constexpr int kDsRelaxedPublish = 64;  // h's count added relaxed: no wait for the stores
// Not timing only: h's count released by a warp of its own (the publisher, after the producer)
// instead of consumer thread 0, so that the release's wait for the stores' acknowledgements
// holds no consumer; the consumers hand it the slot through a small ring.
inline constexpr int kDsPublisher = 128;
inline constexpr int kDsPubDepth = 8;
template <int Consumers = 1, int InFlight = 0, int KAtoms = 1, bool Mma = true, bool Store = Mma,
          bool Pair = false, int Tokens = kDsTokens, bool OutBf16 = false, int Skip = 0,
          int BlocksPerSm = 1>
struct DsVariant {
  static_assert(Consumers == 1 || Consumers == 2, "one or two consumer warpgroups");
  static_assert(InFlight == 0 || InFlight == 1, "at most one MMA batch in flight");
  static_assert(!Pair || Consumers == 1, "paired tiles are written from one warpgroup's registers");
  static_assert(BlocksPerSm == 1 || BlocksPerSm == 2, "one or two blocks an SM");
  static constexpr int kBlocksPerSm = BlocksPerSm;
  static constexpr int kConsumers = Consumers;
  // The warp after the consumers produces; the publisher (kDsPublisher) comes after it.
  static constexpr int kThreads = 128 * Consumers + 32 + ((Skip & kDsPublisher) != 0 ? 32 : 0);
  static constexpr int kInFlight = InFlight;
  static constexpr bool kMma = Mma, kStore = Store, kPair = Pair, kOutBf16 = OutBf16;
  static constexpr int kSkip = Skip;
  static_assert(Tokens == 16 || Tokens == 32 || Tokens == 48, "an MMA width of the stream");
  static constexpr int kTokens = Tokens;
  static constexpr int kKCols = 64 * KAtoms;  // K columns of a stage
  static constexpr int kAcc = Pair ? 2 : 1;   // m64 accumulators
  static constexpr int kARows = 64 * kAcc;    // weight rows of a tile
  static constexpr int kGateCols = kARows / 2, kDownCols = kARows;  // h / y columns of a tile
  static constexpr std::uint32_t kAAtom = kARows * kDsRowBytes, kBAtom = Tokens * kDsRowBytes;
  static constexpr std::uint32_t kA = KAtoms * kAAtom, kB = KAtoms * kBAtom;
  static constexpr std::uint32_t kStage = (kA + kB + 1023u) / 1024u * 1024u;  // swizzle atoms
  static constexpr int kStages = 200 * 1024 / BlocksPerSm / static_cast<int>(kStage);  // ring
  static constexpr std::uint32_t kBytes = kStages * kStage + 1024;            // + alignment slack
};

// Maps (128-byte swizzle, boxes of 64 K columns; N = the variant's kTokens): x_map
// [selected * N, H] by N rows, w13_map [E * 2I, H] by 32 rows (each expert's I gate rows, then
// its I up rows), w2_map [E * H, I] by 64 rows, h_map [selected * N, I] by N rows.
struct DecodeStreamMaps {
  CUtensorMap x, w13, w2, h;
};

struct DecodeStreamArgs {
  const int* experts;  // [selected] expert of each selected slot
  int selected, hidden, inter;
  __nv_bfloat16* h;      // [selected * N, I]
  float* out;            // [selected * N, H]: h W2^T, per slot and token row (bf16 variants:
                         // [selected * N, H] bf16 from the same address)
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

template <class V>
__device__ __forceinline__ DsJob ds_decode_ticket(const DecodeStreamArgs& g, int selected,
                                                  std::uint32_t ticket) {
  const int ng = (g.inter + V::kGateCols - 1) / V::kGateCols;
  const int nd = (g.hidden + V::kDownCols - 1) / V::kDownCols;
  const std::uint32_t gateup = static_cast<std::uint32_t>(selected * ng);
  if (ticket < gateup) return {0, static_cast<int>(ticket) / ng, static_cast<int>(ticket) % ng};
  ticket -= gateup;
  if (ticket < static_cast<std::uint32_t>(selected * nd)) {
    return {1, static_cast<int>(ticket) / nd, static_cast<int>(ticket) % nd};
  }
  return {2, 0, 0};
}

template <class V>
__device__ __forceinline__ int ds_ksteps(const DecodeStreamArgs& g, const DsJob& job) {
  return ((job.kind == 0 ? g.hidden : g.inter) + V::kKCols - 1) / V::kKCols;
}

// One operand's boxes of K step kt (one per swizzle atom, `atom` bytes apart).
template <class V>
__device__ __forceinline__ void ds_load(std::uint32_t dst, std::uint32_t atom,
                                        const CUtensorMap* map, std::uint32_t bar, int kt,
                                        int row) {
  constexpr int kAtoms = V::kKCols / 64;
#pragma unroll
  for (int c = 0; c < kAtoms; ++c) {
    flashmoe::detail::tma_load_2d(dst + c * atom, map, bar, (kt * kAtoms + c) * 64, row);
  }
}

template <class V>
__device__ __forceinline__ void ds_store_out(const DecodeStreamArgs& g, std::int64_t at,
                                             float v) {
  if constexpr ((V::kSkip & kDsSkipOut) != 0) {
    (void)g, (void)at, (void)v;
  } else if constexpr (V::kOutBf16) {
    reinterpret_cast<__nv_bfloat16*>(g.out)[at] = __float2bfloat16(v);
  } else {
    g.out[at] = v;
  }
}

// What the whole-layer kernel (ws_decode_layer.cuh) adds to the stream: the slots come from its
// routing in shared memory, every slot's B is the same token rows (all T <= 16 tokens of x), and
// the down tile that completes a column slice of every slot sums the tokens' parts into y.
struct DsLayerHook {
  const int* slot_expert;  // [selected] (shared memory)
  const int* slot_of;      // [E]: slot of an expert (shared memory)
  const int (*ids)[16];    // [T][16] routing (shared memory)
  const float (*weights)[16];
  int tokens, top_k;
  __nv_bfloat16* y;           // [T, H]
  std::uint32_t* slice_done;  // [H / 64]: down tiles finished per column slice, zero at launch
};

// The stream, run by every thread of the block after its setup; `selected` slots of experts
// `slot_expert`; with a hook (kLayer) it is a layer's expert phase.
template <class V, bool kLayer>
__device__ void ds_stream(const DecodeStreamMaps& maps, const DecodeStreamArgs& g,
                          const int* slot_expert, int selected, const DsLayerHook& hook) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace flashmoe::detail;
  constexpr int kStages = V::kStages, kConsumers = V::kConsumers;
  constexpr int kAtoms = V::kKCols / 64, InFlight = V::kInFlight;
  constexpr bool Mma = V::kMma, Store = V::kStore;
  constexpr int kTokens = V::kTokens;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  __shared__ Pipeline<kStages> pipe;
  __shared__ DsJobRing jobs;
  __shared__ float s_part[kConsumers][64][kTokens + 1];  // each warpgroup's product of a job
  // The consumers' own barrier (every consumer warp arrives): an mbarrier rather than a named
  // one, so that its wait is bounded and ends when the ring is poisoned; a warpgroup whose
  // stage wait failed leaves, and a named barrier would hold the other one forever.
  __shared__ std::uint64_t team_bar;
  __shared__ int s_combine;
  // kDsPublisher: slots whose h the publisher releases (-1: stop), full when handed over.
  __shared__ std::uint64_t pub_full[kDsPubDepth], pub_empty[kDsPubDepth];
  __shared__ int pub_slot[kDsPubDepth];
  constexpr bool kPublisher = (V::kSkip & kDsPublisher) != 0;
  const int lane = threadIdx.x % 32, wg = static_cast<int>(threadIdx.x / 128);
  const int ng = (g.inter + V::kGateCols - 1) / V::kGateCols;
  const Watchdog ring_wd{g.wd.ctl, 2 * g.wd.timeout_ns};
  if (threadIdx.x == 0) {
    pipe.init(0, 4);  // a stage is one warpgroup's
    for (int d = 0; d < kDsJobDepth; ++d) {
      mbar_init(smem_u32(&jobs.full[d]), 1);
      mbar_init(smem_u32(&jobs.empty[d]), 4 * kConsumers);  // every consumer warp reads a job
    }
    mbar_init(smem_u32(&team_bar), 4 * kConsumers);
    for (int d = 0; d < kDsPubDepth; ++d) {
      mbar_init(smem_u32(&pub_full[d]), 1);
      mbar_init(smem_u32(&pub_empty[d]), 1);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == kConsumers) {
    if (kPublisher && threadIdx.x >= 128 * kConsumers + 32) {
      if (lane != 0) return;
      // The publisher: each handed slot's count released (cumulative over the consumers' h
      // stores, which the hand-over's barrier ordered before).
      PipeState<kDsPubDepth> ps;
      for (;;) {
        if (!pipe.wait_barrier(smem_u32(&pub_full[ps.index]), ps.phase, ring_wd, kSiteJobRing)) {
          return;
        }
        const int slot = pub_slot[ps.index];
        mbar_arrive(smem_u32(&pub_empty[ps.index]));
        ps.advance();
        if (slot < 0) return;
        add_release(g.words + 1 + slot, 1);
      }
    }
    if (lane != 0) return;
    // The producer. The next ticket's round trip runs while the current one's stages stream.
    PipeState<kStages> st;
    PipeState<kDsJobDepth> js;
    std::uint32_t ticket = fetch_add_relaxed(g.words, 1);
    for (;;) {
      const DsJob job = ds_decode_ticket<V>(g, selected, ticket);
      if (!pipe.wait_barrier(smem_u32(&jobs.empty[js.index]), js.phase ^ 1u, ring_wd,
                             kSiteJobRing)) {
        return;
      }
      jobs.job[js.index] = job;
      mbar_arrive(smem_u32(&jobs.full[js.index]));
      js.advance();
      if (job.kind == 2) return;
      ticket = fetch_add_relaxed(g.words, 1);
      const int expert = slot_expert[job.slot];
      const int h_row = job.slot * kTokens, token_row = kLayer ? 0 : h_row;
      const int ksteps = ds_ksteps<V>(g, job);
      if (job.kind == 0) {
        const int gate_row = expert * 2 * g.inter + job.tile * V::kGateCols;
        for (int kt = 0; kt < ksteps; ++kt) {
          if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
          const std::uint32_t a = base + st.index * V::kStage, bar = pipe.full_barrier(st);
          pipe.producer_expect(st, V::kA + V::kB);
          // The gate rows fill the tile's first half, the up rows its second, box by box.
#pragma unroll
          for (int r = 0; r < V::kGateCols; r += kDsGateCols) {
            ds_load<V>(a + r * kDsRowBytes, V::kAAtom, &maps.w13, bar, kt, gate_row + r);
            ds_load<V>(a + (V::kGateCols + r) * kDsRowBytes, V::kAAtom, &maps.w13, bar, kt,
                       gate_row + g.inter + r);
          }
          ds_load<V>(a + V::kA, V::kBAtom, &maps.x, bar, kt, token_row);
          st.advance();
        }
        continue;
      }
      // A down tile: its weight boxes first, as far as the ring reaches; its h boxes once the
      // expert's gate/up tiles have all published.
      const int w2_row = expert * g.hidden + job.tile * V::kDownCols;
      auto load_w2 = [&](std::uint32_t a, std::uint32_t bar, int kt) {
#pragma unroll
        for (int r = 0; r < V::kDownCols; r += kDsDownCols) {
          ds_load<V>(a + r * kDsRowBytes, V::kAAtom, &maps.w2, bar, kt, w2_row + r);
        }
      };
      const int ahead = ksteps < kStages ? ksteps : kStages;
      const PipeState<kStages> first = st;
      for (int kt = 0; kt < ahead; ++kt) {
        if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
        pipe.producer_expect(st, V::kA + V::kB);
        load_w2(base + st.index * V::kStage, pipe.full_barrier(st), kt);
        st.advance();
      }
      bool spun = false;
      if (!wait_at_least(g.wd.ctl, g.words + 1 + job.slot, static_cast<std::uint32_t>(ng),
                         g.wd.timeout_ns, kSiteMTileDone, spun)) {
        pipe.poison();
        return;
      }
      fence_proxy_async_global();  // the copy engine reads what the acquire made visible
      PipeState<kStages> q = first;
      for (int kt = 0; kt < ahead; ++kt) {
        ds_load<V>(base + q.index * V::kStage + V::kA, V::kBAtom, &maps.h, pipe.full_barrier(q), kt,
                   h_row);
        q.advance();
      }
      for (int kt = ahead; kt < ksteps; ++kt) {
        if (!pipe.producer_acquire(st, g.wd, kSiteWeightCopy)) return;
        const std::uint32_t a = base + st.index * V::kStage, bar = pipe.full_barrier(st);
        pipe.producer_expect(st, V::kA + V::kB);
        load_w2(a, bar, kt);
        ds_load<V>(a + V::kA, V::kBAtom, &maps.h, bar, kt, h_row);
        st.advance();
      }
    }
  }

  // The consumer warpgroups. With two, warpgroup w takes the block's stages w, w + 2, ... (the
  // ring's depth is even, so the last use of each of its stages was its own, and a parity wait
  // cannot pass on an older phase), each its partial product of every job, summed in a fixed
  // order in the epilogue.
  static_assert(kConsumers == 1 || kStages % 2 == 0, "stages alternate between two warpgroups");
  static_assert(!kLayer || Store, "a layer's combine reads out");
  static_assert(!kLayer || !V::kOutBf16, "a layer's combine reads out as fp32");
  static_assert(!kLayer || V::kSkip == 0, "a layer needs its whole epilogue");
  constexpr bool kStoreH = (V::kSkip & kDsSkipH) == 0, kFenceH = (V::kSkip & kDsSkipFence) == 0;
  constexpr bool kContiguous = (V::kSkip & kDsContiguous) != 0;
  static_assert(!kContiguous || !V::kPair, "contiguous tiles: the exchanged epilogue only");
  constexpr bool kDiscardOut = (V::kSkip & kDsDiscardOut) != 0;
  static_assert(!kDiscardOut || (!V::kPair && !kContiguous && !V::kOutBf16 && kTokens == 16),
                "discarded out: fp32 rows of the exchanged epilogue");
  static_assert(!kLayer || !V::kPair, "a layer's combine sums 64-column slices");
  static_assert(!kLayer || kTokens == kDsTokens, "a layer's slots hold its T <= 16 tokens");
  constexpr int kTeam = 128 * kConsumers;
  const int tid = static_cast<int>(threadIdx.x);
  PipeState<kStages> st, prev;
  PipeState<kDsJobDepth> js;
  PipeState<kDsPubDepth> pub;  // thread 0's hand-overs to the publisher
  auto hand_over = [&](int slot) {
    if (!pipe.wait_barrier(smem_u32(&pub_empty[pub.index]), pub.phase ^ 1u, ring_wd,
                           kSiteJobRing)) {
      return false;
    }
    pub_slot[pub.index] = slot;
    mbar_arrive(smem_u32(&pub_full[pub.index]));
    pub.advance();
    return true;
  };
  std::uint32_t stage_count = 0, team_phase = 0;
  // All consumer warps meet; false once the ring is poisoned (a failed wait somewhere).
  auto team_sync = [&]() {
    __syncwarp();
    if (lane == 0) mbar_arrive(smem_u32(&team_bar));
    const bool ok = pipe.wait_barrier(smem_u32(&team_bar), team_phase, ring_wd, kSiteJobRing);
    team_phase ^= 1u;
    return ok;
  };
  for (;;) {
    if (!pipe.wait_barrier(smem_u32(&jobs.full[js.index]), js.phase, ring_wd, kSiteJobRing)) {
      return;
    }
    const DsJob job = jobs.job[js.index];
    __syncwarp();
    if (lane == 0) mbar_arrive(smem_u32(&jobs.empty[js.index]));
    js.advance();
    if (job.kind == 2) {
      if (kPublisher && tid == 0) hand_over(-1);
      return;
    }
    const int ksteps = ds_ksteps<V>(g, job);
    float acc[V::kAcc][kTokens / 2];
#pragma unroll
    for (int m = 0; m < V::kAcc; ++m) {
#pragma unroll
      for (int j = 0; j < kTokens / 2; ++j) acc[m][j] = 0.0f;
    }
    bool held = false;  // prev: a stage of this warpgroup whose MMAs may still run
    bool ok = true;
    for (int kt = 0; kt < ksteps; ++kt) {
      const bool mine = kConsumers == 1 || static_cast<int>(stage_count++ % 2) == wg;
      if (!mine) {
        st.advance();
        continue;
      }
      if (!pipe.consumer_wait(st, g.wd, kSiteWeightCopy)) {
        ok = false;  // leave after the loop, once no MMA of this warpgroup runs
        break;
      }
      if constexpr (Mma) {
        const std::uint32_t a = base + st.index * V::kStage;
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < kAtoms; ++c) {
#pragma unroll
          for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
            for (int m = 0; m < V::kAcc; ++m) {
              WgmmaM64K16<kTokens, __nv_bfloat16>::run(
                  acc[m], smem_desc_sw128(a + c * V::kAAtom + m * 64 * kDsRowBytes + ks * 32),
                  smem_desc_sw128(a + V::kA + c * V::kBAtom + ks * 32), true);
            }
          }
        }
        wgmma_commit();
        wgmma_wait<InFlight>();
      }
      if (InFlight == 0 || !Mma) {
        if (lane == 0) pipe.consumer_release(st);
      } else {
        if (held && lane == 0) pipe.consumer_release(prev);  // its MMAs are done
        prev = st;
        held = true;
      }
      st.advance();
    }
    if constexpr (InFlight > 0 && Mma) {
      wgmma_wait<0>();  // unconditional: a warpgroup-wide wait under a branch serialises the MMAs
      if (held && lane == 0) pipe.consumer_release(prev);
    }
    if (!ok) return;
    const std::int64_t row0 = static_cast<std::int64_t>(job.slot) * kTokens;
    if constexpr (V::kPair && Store) {
      // Paired tiles: every element from the registers that hold it (row r of accumulator m is
      // weight row 64 m + r of the tile; a gate/up tile's gate and up rows are m = 0 and 1).
#pragma unroll
      for (int j = 0; j < kTokens / 2; ++j) {
        const int r = wgmma_acc_row(j), t = wgmma_acc_col(j);
        if (job.kind == 1) {
#pragma unroll
          for (int m = 0; m < V::kAcc; ++m) {
            const int col = job.tile * V::kDownCols + 64 * m + r;
            if (col < g.hidden) ds_store_out<V>(g, (row0 + t) * g.hidden + col, acc[m][j]);
          }
        } else {
          const int col = job.tile * V::kGateCols + r;
          const float gate = acc[0][j], up = acc[1][j];
          if (kStoreH && col < g.inter) {
            g.h[(row0 + t) * g.inter + col] = __float2bfloat16(silu(gate) * up);
          }
        }
      }
      // h is read by other blocks' copy engines.
      if (kFenceH && job.kind == 0) fence_proxy_async_global();
    }
    if constexpr ((V::kSkip & kDsDelay) != 0) {
      // A stall as long as an epilogue, with no memory traffic: whether the consumers' time
      // outside the ring costs the stream by itself.
      const long long until = clock64() + 1000;
      while (clock64() < until) {
      }
    }
    if constexpr (Mma && !Store) {
      // One value a job stored, so that the compiler keeps the MMAs whose products go unused.
      if (tid % 128 == 0) g.out[row0 * g.hidden + job.tile] = acc[V::kAcc - 1][0];
    }
    // Epilogue: the warpgroups' partial products through shared memory, summed in warpgroup
    // order. Gate rows are the MMA's rows 0-31, up rows 32-63.
    if constexpr (!V::kPair && Store) {
#pragma unroll
      for (int j = 0; j < kTokens / 2; ++j) {
        s_part[wg][wgmma_acc_row(j)][wgmma_acc_col(j)] = acc[0][j];
      }
      if (!team_sync()) return;
      if (job.kind == 1) {
        for (int i = tid; i < 64 * kTokens; i += kTeam) {
          const int r = i % 64, t = i / 64, col = job.tile * kDsDownCols + r;
          float v = s_part[0][r][t];
          if (kConsumers == 2) v += s_part[kConsumers - 1][r][t];
          if (col < g.hidden && (!kLayer || t < hook.tokens)) {
            ds_store_out<V>(g,
                            kContiguous ? row0 * g.hidden + (job.tile * kTokens + t) * 64 + r
                                        : (row0 + t) * g.hidden + col,
                            v);
          }
        }
      } else {
        for (int i = tid; i < kDsGateCols * kTokens; i += kTeam) {
          const int c = i % kDsGateCols, t = i / kDsGateCols, col = job.tile * kDsGateCols + c;
          float gate = s_part[0][c][t], up = s_part[0][kDsGateCols + c][t];
          if (kConsumers == 2) {
            gate += s_part[kConsumers - 1][c][t];
            up += s_part[kConsumers - 1][kDsGateCols + c][t];
          }
          // (A layer's token rows past T: never read back but as columns of their own.)
          if (kStoreH && col < g.inter && (!kLayer || t < hook.tokens)) {
            g.h[kContiguous ? row0 * g.inter + (job.tile * kTokens + t) * kDsGateCols + c
                            : (row0 + t) * g.inter + col] = __float2bfloat16(silu(gate) * up);
          }
        }
        if (kFenceH) fence_proxy_async_global();  // h is read by other blocks' copy engines
      }
    }
    // The discard below must find every thread's stores in L2, not overtake them.
    if constexpr (kDiscardOut) {
      if (job.kind == 1) __threadfence();
    }
    // The partial products are free again, and h is written, before it is published.
    if (!team_sync()) return;
    if constexpr (kDiscardOut) {
      // Whether out's write-backs to DRAM are the stores' cost: its 32 lines (16 rows of 256
      // bytes) dropped once the whole tile is written (bench rows only; H % 32 == 0).
      if (job.kind == 1 && tid < 32) {
        const int col = job.tile * kDsDownCols + (tid % 2) * 32;
        if (col < g.hidden) discard_l2_line(g.out + (row0 + tid / 2) * g.hidden + col);
      }
    }
    if (job.kind == 0 && tid == 0) {
      if constexpr ((V::kSkip & kDsRelaxedPublish) != 0) {
        fetch_add_relaxed(g.words + 1 + job.slot, 1);
      } else if constexpr (kPublisher) {
        // A failed hand-over poisons the ring: every consumer then leaves at its next wait,
        // together (thread 0 alone leaving would break the warpgroup's next MMAs).
        hand_over(job.slot);
      } else {
        add_release(g.words + 1 + job.slot, 1);
      }
    }
    if constexpr (kLayer) {
      if (job.kind == 1) {
        // The down tile that completes its column slice for every slot sums each token's parts
        // into y, in the token's top-k order.
        if (tid == 0) {
          s_combine = fetch_add_acq_rel(hook.slice_done + job.tile, 1) + 1 ==
                      static_cast<std::uint32_t>(selected);
        }
        if (!team_sync()) return;
        if (s_combine) {
          for (int i = tid; i < hook.tokens * kDsDownCols; i += kTeam) {
            const int t = i / kDsDownCols, col = job.tile * kDsDownCols + i % kDsDownCols;
            if (col >= g.hidden) continue;
            float sum = 0.0f;
            for (int k = 0; k < hook.top_k; ++k) {
              const std::int64_t row =
                  static_cast<std::int64_t>(hook.slot_of[hook.ids[t][k]]) * kTokens + t;
              sum += hook.weights[t][k] * __ldcg(g.out + row * g.hidden + col);
            }
            hook.y[static_cast<std::int64_t>(t) * g.hidden + col] = __float2bfloat16(sum);
          }
        }
      }
    }
  }
#else
  (void)maps, (void)g, (void)slot_expert, (void)selected, (void)hook;
#endif
}

template <class V>
__global__ void __launch_bounds__(V::kThreads, V::kBlocksPerSm)
    ws_decode_stream_kernel(const __grid_constant__ DecodeStreamMaps maps,
                            const DecodeStreamArgs g) {
  ds_stream<V, false>(maps, g, g.experts, g.selected, DsLayerHook{});
}

// Blocks of variant V one SM holds (0 on an error): a launch of V::kBlocksPerSm an SM needs
// that many.
template <class V = DsVariant<>>
int ws_decode_stream_blocks_per_sm() {
  auto kernel = ws_decode_stream_kernel<V>;
  int blocks = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(V::kBytes)) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, V::kThreads, V::kBytes) !=
          cudaSuccess) {
    return 0;
  }
  return blocks;
}

template <class V = DsVariant<>>
cudaError_t launch_ws_decode_stream(const DecodeStreamMaps& maps, const DecodeStreamArgs& g,
                                    int grid, cudaStream_t stream) {
  auto kernel = ws_decode_stream_kernel<V>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(V::kBytes));
      e != cudaSuccess) {
    return e;
  }
  kernel<<<grid, V::kThreads, V::kBytes, stream>>>(maps, g);
  return cudaGetLastError();
}

}  // namespace flashmoe_test
