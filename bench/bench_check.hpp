// Error handling shared by the benchmark's files: a failed CUDA call returns its message as a
// std::string from the enclosing function (empty string: success).
#pragma once

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <string>

#define BENCH_RETURN_IF_CUDA_ERROR(expr)                                                \
  do {                                                                                  \
    const cudaError_t e_ = (expr);                                                      \
    if (e_ != cudaSuccess) return fmt::format("{}: {}", #expr, cudaGetErrorString(e_)); \
  } while (0)
