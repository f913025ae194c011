// FlashMoE: the CPU reference. Slow, short and float64 throughout: the ground truth of the
// tests and the fallback of the demo on machines without a GPU.
#pragma once

#include <cstdint>

#include "flashmoe/config.hpp"
#include "flashmoe/status.hpp"

namespace flashmoe::reference {

// Host-side conversions between float and the 16-bit storage types (round to nearest even).
[[nodiscard]] float to_float(std::uint16_t bits, DType dtype) noexcept;
[[nodiscard]] std::uint16_t from_float(float value, DType dtype) noexcept;

// Routing of T tokens: ids and weights [T, K], computed in float64 (weights then rounded to
// float). Within a token the ids are ordered by descending choice score, ties to lower id.
[[nodiscard]] Status route(const Config& config, const Weights& host_weights, const void* x,
                           std::int64_t num_tokens, std::int32_t* ids, float* weights);

// The whole layer on host arrays: same layouts and options as flashmoe::forward, but every
// pointer (weights, x, y and the routing arrays in options) is a host pointer. y is written
// in config.dtype; when y_f64 is non-null the unrounded result [T, H] is written there too.
[[nodiscard]] Status forward(const Config& config, const Weights& host_weights, const void* x,
                             void* y, std::int64_t num_tokens, const ForwardOptions& options = {},
                             double* y_f64 = nullptr);

}  // namespace flashmoe::reference
