// Weight tiles through the bulk tensor copy engine (TMA, sm_90): one thread issues a stage's
// weight boxes, which complete on that stage's mbarrier. Token and h rows are gathered row by
// row, so they stay on cp.async. Older architectures compile the cp.async path only.
#pragma once

#include <cuda.h>  // CUtensorMap (a plain struct; nothing from the driver library is linked)

#include <cstdint>

namespace flashmoe::detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
inline constexpr bool kDeviceHasTma = true;
#else
inline constexpr bool kDeviceHasTma = false;
#endif

// Columns of one weight box: 64 elements = 128 bytes, the widest row the 128-byte swizzle takes.
inline constexpr int kTmaBoxCols = 64;

// The pipeline barriers of a block, one per shared-memory stage, set up once per launch.
// `phase` holds the parity each barrier completes next (bit s for stage s), handed from tile
// to tile through shared memory so that no register stays live across the persistent loop.
inline constexpr int kMaxPipeStages = 8;  // ThinDecodeConfig's narrow down tile
struct PipeBarriers {
  std::uint64_t full[kMaxPipeStages];
  std::uint32_t phase;
  std::uint32_t stalled;  // a weight copy ran past the watchdog: the block abandons its tile
};

__device__ __forceinline__ PipeBarriers& pipe_barriers() {
  __shared__ PipeBarriers pb;
  return pb;
}

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Where the weight boxes of one tile start: rows of the 2-D tensor map (a gated tile has a
// gate box and an up box), and the first K column (a down tile's K slice).
struct WeightBoxes {
  const CUtensorMap* map;
  int row[2];
  int col0;
};

// The bodies are sm_90 only; elsewhere they are empty and never called (kDeviceHasTma).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FLASHMOE_TMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FLASHMOE_TMA_ASM(...) \
  do {                        \
  } while (false)
#endif

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t arrivals) {
  FLASHMOE_TMA_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals));
}
// After a thread initialised barriers: the copy engine must see them initialised.
__device__ __forceinline__ void fence_mbarrier_init() {
  FLASHMOE_TMA_ASM("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void pipe_barriers_init() {
  PipeBarriers& pb = pipe_barriers();
  for (int s = 0; s < kMaxPipeStages; ++s) mbar_init(smem_u32(&pb.full[s]), 1);
  pb.phase = 0;
  pb.stalled = 0;
  fence_mbarrier_init();
}

__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  FLASHMOE_TMA_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                   : "memory");
}

__device__ __forceinline__ bool mbar_try_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 1;
  FLASHMOE_TMA_ASM(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// One box of a 2-D tensor map into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(std::uint32_t dst, const CUtensorMap* map,
                                            std::uint32_t bar, int col, int row) {
  FLASHMOE_TMA_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(col), "r"(row)
      : "memory");
}

// An L2 policy under which the lines a load brings in are the first to be evicted.
__device__ __forceinline__ std::uint64_t l2_evict_first_policy() {
  std::uint64_t policy = 0;
  FLASHMOE_TMA_ASM("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// tma_load_2d under an L2 policy (l2_evict_first_policy).
__device__ __forceinline__ void tma_load_2d(std::uint32_t dst, const CUtensorMap* map,
                                            std::uint32_t bar, int col, int row,
                                            std::uint64_t policy) {
  FLASHMOE_TMA_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(col), "r"(row), "l"(policy)
      : "memory");
}

// Ordinary shared-memory writes of this thread (earlier tiles, reductions, the tile table)
// are ordered before later copy-engine writes to the same bytes.
__device__ __forceinline__ void fence_proxy_async_smem() {
  FLASHMOE_TMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#undef FLASHMOE_TMA_ASM

}  // namespace flashmoe::detail
