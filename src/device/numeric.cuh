// Element conversions and activations used by the device code.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashmoe/config.hpp"

namespace flashmoe::detail {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32(float v) {
  return __float2half_rn(v);
}

// Two floats packed as two 16-bit values (the first at the lower address).
template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  const T a = from_f32<T>(lo), b = from_f32<T>(hi);
  const std::uint16_t ua = *reinterpret_cast<const std::uint16_t*>(&a);
  const std::uint16_t ub = *reinterpret_cast<const std::uint16_t*>(&b);
  return static_cast<std::uint32_t>(ua) | (static_cast<std::uint32_t>(ub) << 16);
}

// 16 bytes = 8 elements, converted to float.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&out)[8]) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_f32(e[i]);
}

// SiLU with the hardware exponential and an approximate division (DeepGEMM's epilogue does the
// same): an error of some ulp of float (growing with |g|: about 20 near |g| = 80), far below
// the 16-bit rounding of h, in about 7 instructions against about 45 for expf and an IEEE
// division (bench/NOTES.md, row 111). Below g = -87 the approximate division gives -0 where the
// exact value is under 1e-36 in magnitude.
__device__ __forceinline__ float silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

__device__ __forceinline__ float activate(float g, int activation) {
  switch (activation) {
    case static_cast<int>(Activation::GeluGated):
      return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
    case static_cast<int>(Activation::GeluTanhGated): {
      const float inner = 0.79788456080286536f * (g + 0.044715f * g * g * g);
      return 0.5f * g * (1.0f + tanhf(inner));
    }
    default:
      return silu(g);
  }
}

}  // namespace flashmoe::detail
