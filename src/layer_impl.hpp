// Layer internals shared by layer.cpp (host C++) and forward.cu (launch).
#pragma once

#include <cstddef>

#include "flashmoe/layer.hpp"
#include "workspace.hpp"

namespace flashmoe {

// A kernel variant's launch facts, read once at Layer::create.
struct KernelVariantInfo {
  int blocks_per_sm = 0;
  int smem_bytes = 0;
};

struct Layer::Impl {
  Config config;
  Weights weights;
  LayerOptions options;
  int device = 0;
  int sm_count = 0;
  detail::WorkspaceLayout layout;
  void* workspace = nullptr;
  KernelVariantInfo decode, prefill;  // per dtype of this layer
  int fault = 0;                      // test-only (testing.hpp)

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl();
};

namespace detail {
// Defined in forward.cu: reads occupancy and sets the shared-memory limit of the kernels.
[[nodiscard]] Status prepare_kernels(Layer::Impl& impl);
}  // namespace detail

}  // namespace flashmoe
