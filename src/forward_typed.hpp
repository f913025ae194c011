// The typed half of the host layer (forward_typed.cuh), as forward.cu calls it: one
// instantiation per element type, each in its own translation unit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "flashmoe/layer.hpp"
#include "layer_impl.hpp"

namespace flashmoe::detail {

// One launch's options: the forward's, with the routing arrays moved to the launch's chunk of
// rows, and where that chunk starts (for the device token count).
struct LaunchOptions : ForwardOptions {
  int live_offset = 0;
};

template <typename T>
struct TypedForward {
  // Occupancy, shared-memory limits and weight maps of every kernel of the type.
  [[nodiscard]] static Status prepare(Layer::Impl& impl);
  // The weight maps of every kernel for `weights`, into `impl` only if all could be encoded.
  [[nodiscard]] static Status encode_maps(Layer::Impl& impl, const Weights& weights);
  // One launch of `rows` tokens on a decode or a prefill kernel.
  [[nodiscard]] static Status launch(Layer::Impl& impl, const void* x, void* y, std::int64_t rows,
                                     cudaStream_t stream, const LaunchOptions& o, bool decode);
};

extern template struct TypedForward<__nv_bfloat16>;  // forward_bf16.cu
extern template struct TypedForward<__half>;         // forward_fp16.cu

}  // namespace flashmoe::detail
