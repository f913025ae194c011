// Hopper's warpgroup MMA (wgmma, sm_90a only): 64 x 32 x 16 products with both operands read
// from shared memory through matrix descriptors. Other targets compile the mma.sync path and
// never call these (kDeviceHasWgmma).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace flashmoe::detail {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
inline constexpr bool kDeviceHasWgmma = true;
#define FLASHMOE_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
inline constexpr bool kDeviceHasWgmma = false;
#define FLASHMOE_WGMMA_ASM(...) \
  do {                          \
  } while (false)
#endif

// Descriptor of a K-major operand in the 128-byte swizzle: rows of 128 bytes (64 16-bit
// elements of K), 8-row groups 1024 bytes apart. `addr` (shared) may step through the atom's K
// in 32-byte (16-element) steps; the atom itself must be 1024-byte aligned.
__device__ __forceinline__ std::uint64_t smem_desc_sw128(std::uint32_t addr) {
  std::uint64_t d = (addr & 0x3FFFFu) >> 4;  // start address, 16-byte units
  d |= std::uint64_t{1} << 16;               // leading offset: unused by swizzled K-major
  d |= std::uint64_t{1024 >> 4} << 32;       // stride offset: 8 rows x 128 bytes
  d |= std::uint64_t{1} << 62;               // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() {
  FLASHMOE_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
  FLASHMOE_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most N committed MMA groups of this warpgroup are still running.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  FLASHMOE_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d += A (64 x 16) * B (32 x 16)^T for the warpgroup; d0..d3 are this thread's n8 blocks in
// the mma.sync m16n8 accumulator order (rows 16 (warp % 4) + lane / 4 and + 8).
template <typename T>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d0)[4], float (&d1)[4], float (&d2)[4],
                                                float (&d3)[4], std::uint64_t a, std::uint64_t b) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // The instruction for input type TYPE ("bf16" or "f16"); scale-d is 1: d accumulates.
#define FLASHMOE_WGMMA_M64N32K16(TYPE)                                                             \
  asm volatile(                                                                                    \
      "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"                                                 \
      " wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                                 \
      " "                                                                                          \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, "   \
      "1, 0, 0;\n}\n"                                                                              \
      : "+f"(d0[0]), "+f"(d0[1]), "+f"(d0[2]), "+f"(d0[3]), "+f"(d1[0]), "+f"(d1[1]), "+f"(d1[2]), \
        "+f"(d1[3]), "+f"(d2[0]), "+f"(d2[1]), "+f"(d2[2]), "+f"(d2[3]), "+f"(d3[0]), "+f"(d3[1]), \
        "+f"(d3[2]), "+f"(d3[3])                                                                   \
      : "l"(a), "l"(b)                                                                             \
      : "memory")
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    FLASHMOE_WGMMA_M64N32K16("bf16");
  } else {
    FLASHMOE_WGMMA_M64N32K16("f16");
  }
#undef FLASHMOE_WGMMA_M64N32K16
#else
  (void)d0, (void)d1, (void)d2, (void)d3, (void)a, (void)b;
#endif
}

#undef FLASHMOE_WGMMA_ASM

}  // namespace flashmoe::detail
