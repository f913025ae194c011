// Hopper's warpgroup MMA (wgmma, sm_90a only): 64 x N x 16 products with both operands read
// from shared memory through matrix descriptors; N = 32 for today's prefill tiles, 64-256 for
// the warp-specialised tiles. Other targets compile the mma.sync path and never call these
// (kDeviceHasWgmma).
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

// The descriptor of the operand `bytes` further on (a multiple of 16): the address field is the
// low 14 bits, in 16-byte units, so the sum is exact while the address stays inside the 256 KB
// of shared memory a block can have. (A 32-bit add on the low word alone made ptxas serialise
// the engine's wgmma, C7511; bench/NOTES.md, row 106.)
__device__ __forceinline__ std::uint64_t smem_desc_add(std::uint64_t desc, std::uint32_t bytes) {
  return desc + (bytes >> 4);
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

// The wide forms for the warp-specialised tiles: d[N / 2] (+)= A (64 x 16) * B (N x 16)^T for
// the warpgroup, both operands in shared memory (descriptors); `accumulate` false overwrites d.
// Thread layout of d: wgmma_acc_row / wgmma_acc_col below.
template <int N, typename T>
struct WgmmaM64K16 {
  static_assert(N == 16 || N == 32 || N == 48 || N == 64 || N == 128 || N == 256,
                "the widths the tiles use");
  __device__ static void run(float (&d)[N / 2], std::uint64_t a, std::uint64_t b, bool accumulate) {
    (void)d, (void)a, (void)b, (void)accumulate;  // sm_90a only: the specialisations below
  }
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One m64nNk16 instruction of input type TYPE: REGS names the N / 2 accumulator operands
// (%0 ...), and A, B and SCALE the operand numbers of the descriptors and the accumulate flag.
#define FLASHMOE_WGMMA_WIDE(N, TYPE, REGS, A, B, SCALE, ...)                              \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %" #SCALE                              \
               ", 0;\n"                                                                   \
               " wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " {" REGS \
               "}, %" #A ", %" #B ", p, 1, 1, 0, 0;\n}\n"                                 \
               : __VA_ARGS__                                                              \
               : "l"(a), "l"(b), "r"(static_cast<int>(accumulate))                        \
               : "memory")
#define FLASHMOE_WGMMA_RUN(N, REGS, A, B, SCALE, ...)               \
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {                 \
    FLASHMOE_WGMMA_WIDE(N, "bf16", REGS, A, B, SCALE, __VA_ARGS__); \
  } else {                                                          \
    FLASHMOE_WGMMA_WIDE(N, "f16", REGS, A, B, SCALE, __VA_ARGS__);  \
  }
// N = 16: a decode tile's token rows as B, its weight rows as A (issue 21's swap-AB prototype).
template <typename T>
struct WgmmaM64K16<16, T> {
  __device__ static void run(float (&d)[8], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(16, "%0, %1, %2, %3, %4, %5, %6, %7", 8, 9, 10, "+f"(d[0]), "+f"(d[1]),
                       "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]))
  }
};
// N = 32 and 48: swap-AB tiles of 32 and 48 token rows (the decode stream's wider slots).
template <typename T>
struct WgmmaM64K16<32, T> {
  __device__ static void run(float (&d)[16], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(32,
                       "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15", 16,
                       17, 18, "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),
                       "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
                       "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]))
  }
};
template <typename T>
struct WgmmaM64K16<48, T> {
  __device__ static void run(float (&d)[24], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(48,
                       "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "
                       "%17, %18, %19, %20, %21, %22, %23",
                       24, 25, 26, "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),
                       "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
                       "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
                       "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
                       "+f"(d[23]))
  }
};
template <typename T>
struct WgmmaM64K16<64, T> {
  __device__ static void run(float (&d)[32], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(64,
                       "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "
                       "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31",
                       32, 33, 34, "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),
                       "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
                       "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
                       "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
                       "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
                       "+f"(d[29]), "+f"(d[30]), "+f"(d[31]))
  }
};
template <typename T>
struct WgmmaM64K16<128, T> {
  __device__ static void run(float (&d)[64], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(
        128,
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
        "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
        "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
        "%56, %57, %58, %59, %60, %61, %62, %63",
        64, 65, 66, "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]),
        "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]),
        "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
        "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
        "+f"(d[62]), "+f"(d[63]))
  }
};
template <typename T>
struct WgmmaM64K16<256, T> {
  __device__ static void run(float (&d)[128], std::uint64_t a, std::uint64_t b, bool accumulate) {
    FLASHMOE_WGMMA_RUN(
        256,
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
        "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
        "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
        "%56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, "
        "%74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, "
        "%92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "
        "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, "
        "%123, %124, %125, %126, %127",
        128, 129, 130, "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]),
        "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]),
        "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
        "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
        "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]),
        "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]),
        "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]),
        "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),
        "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),
        "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]),
        "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]),
        "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]),
        "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]),
        "+f"(d[127]))
  }
};
#undef FLASHMOE_WGMMA_RUN
#undef FLASHMOE_WGMMA_WIDE
#endif

// Row and column of accumulator j (of N / 2) of this thread in its warpgroup's 64 x N tile:
// n8 block j / 4; within it rows 16 (warp % 4) + lane / 4 (+ 8 for j % 4 >= 2) and columns
// 2 (lane % 4) + j % 2.
__device__ __forceinline__ int wgmma_acc_row(int j) {
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
  return 16 * warp + (lane >> 2) + ((j & 2) ? 8 : 0);
}
__device__ __forceinline__ int wgmma_acc_col(int j) {
  return 8 * (j >> 2) + 2 * (threadIdx.x & 3) + (j & 1);
}

// The four lanes of a quad hold one row's n8 blocks two columns each (v[k]: block b0 + k, columns
// 2 (lane % 4), + 1, packed). Transposed across the quad, lane q holds block b0 + q whole
// (v[k]: its columns 2k, 2k + 1): one 16-byte store per lane instead of four of 4 bytes, and a
// warp writes 64 contiguous bytes of each of its 8 rows (full sectors). Two butterfly steps.
__device__ __forceinline__ void quad_transpose(std::uint32_t (&v)[4]) {
  const unsigned lane = threadIdx.x & 31;
  const bool hi2 = (lane & 2) != 0, hi1 = (lane & 1) != 0;
  std::uint32_t a = __shfl_xor_sync(0xffffffffu, hi2 ? v[0] : v[2], 2);
  std::uint32_t b = __shfl_xor_sync(0xffffffffu, hi2 ? v[1] : v[3], 2);
  if (hi2) {
    v[0] = a, v[1] = b;
  } else {
    v[2] = a, v[3] = b;
  }
  a = __shfl_xor_sync(0xffffffffu, hi1 ? v[0] : v[1], 1);
  b = __shfl_xor_sync(0xffffffffu, hi1 ? v[2] : v[3], 1);
  if (hi1) {
    v[0] = a, v[2] = b;
  } else {
    v[1] = a, v[3] = b;
  }
}

#undef FLASHMOE_WGMMA_ASM

}  // namespace flashmoe::detail
