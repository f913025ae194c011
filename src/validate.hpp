// Host-side argument checks shared by Layer::create, forward and the C API.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashmoe/config.hpp"
#include "flashmoe/status.hpp"

namespace flashmoe::detail {

inline constexpr int kMaxHidden = 1 << 16;
inline constexpr int kMaxIntermediate = 1 << 17;
inline constexpr int kMaxExperts = 1024;
inline constexpr int kMaxTopK = 32;
inline constexpr int kMaxTokens = 1 << 20;
inline constexpr int kVectorElems = 8;  // 16 bytes of a 16-bit dtype

[[nodiscard]] const char* dtype_name(DType dtype) noexcept;

// CudaError naming the failed call and the CUDA error.
[[nodiscard]] Status cuda_status(cudaError_t err, const char* what);

// Sizes, enums and routing parameters; touches no device.
[[nodiscard]] Status validate_config(const Config& config);

// Pointer is non-null, `align`-byte aligned and device memory of `device` (or managed).
[[nodiscard]] Status check_device_pointer(const void* ptr, const char* name, int device,
                                          std::size_t align);

// Every weight the config needs: present, aligned, on `device`, of the config's dtype.
[[nodiscard]] Status validate_weights(const Config& config, const Weights& weights, int device);

// NotSupported for valid configurations that the GPU kernel does not run yet.
[[nodiscard]] Status check_gpu_support(const Config& config);

}  // namespace flashmoe::detail
