#include "validate.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cmath>

namespace flashmoe::detail {
namespace {

Status invalid(std::string message) { return {StatusCode::InvalidArgument, std::move(message)}; }

Status check_range(const char* name, long long value, long long lo, long long hi) {
  if (value < lo || value > hi) {
    return invalid(fmt::format("{} = {} must lie in [{}, {}]", name, value, lo, hi));
  }
  return {};
}

Status check_multiple(const char* name, int value, int multiple) {
  if (value % multiple != 0) {
    return invalid(fmt::format("{} = {} must be a multiple of {} (16-byte vector access)", name,
                               value, multiple));
  }
  return {};
}

}  // namespace

Status cuda_status(cudaError_t err, const char* what) {
  return {StatusCode::CudaError,
          fmt::format("{} failed: {} ({})", what, cudaGetErrorName(err), cudaGetErrorString(err))};
}

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::BF16:
      return "bf16";
    case DType::FP16:
      return "fp16";
  }
  return "unknown";
}

Status validate_config(const Config& c) {
  if (c.dtype != DType::BF16 && c.dtype != DType::FP16) {
    return invalid(fmt::format("dtype = {} is not a flashmoe::DType", static_cast<int>(c.dtype)));
  }
  const int act = static_cast<int>(c.activation);
  if (act < 0 || act > static_cast<int>(Activation::GeluTanhGated)) {
    return invalid(fmt::format("activation = {} is not a flashmoe::Activation", act));
  }
  const int scoring = static_cast<int>(c.routing.scoring);
  if (scoring != 0 && scoring != 1) {
    return invalid(fmt::format("routing.scoring = {} is not a flashmoe::Scoring", scoring));
  }
  for (const Status& s : {check_range("hidden", c.hidden, 1, kMaxHidden),
                          check_multiple("hidden", c.hidden, kVectorElems),
                          check_range("intermediate", c.intermediate, 1, kMaxIntermediate),
                          check_multiple("intermediate", c.intermediate, kVectorElems),
                          check_range("experts", c.experts, 1, kMaxExperts),
                          check_range("top_k", c.top_k, 1, kMaxTopK),
                          check_range("max_tokens", c.max_tokens, 1, kMaxTokens)}) {
    if (!s.ok()) return s;
  }
  if (c.top_k > c.experts) {
    return invalid(fmt::format("top_k = {} exceeds experts = {}", c.top_k, c.experts));
  }
  const Routing& r = c.routing;
  if (r.n_group < 1 || c.experts % r.n_group != 0) {
    return invalid(fmt::format("routing.n_group = {} must be positive and divide experts = {}",
                               r.n_group, c.experts));
  }
  if (r.topk_group < 1 || r.topk_group > r.n_group) {
    return invalid(fmt::format("routing.topk_group = {} must lie in [1, n_group = {}]",
                               r.topk_group, r.n_group));
  }
  const int selectable = r.topk_group * (c.experts / r.n_group);
  if (c.top_k > selectable) {
    return invalid(
        fmt::format("top_k = {} exceeds the {} experts in topk_group = {} groups of {} experts",
                    c.top_k, selectable, r.topk_group, c.experts / r.n_group));
  }
  if (!std::isfinite(r.routed_scaling_factor) || r.routed_scaling_factor <= 0.0f) {
    return invalid(fmt::format("routing.routed_scaling_factor = {} must be finite and positive",
                               r.routed_scaling_factor));
  }
  const SharedExperts& s = c.shared;
  if (s.count < 0 || s.count > 64) {
    return invalid(fmt::format("shared.count = {} must lie in [0, 64]", s.count));
  }
  if (s.count > 0) {
    for (const Status& st :
         {check_range("shared.intermediate", s.intermediate, 1, kMaxIntermediate),
          check_multiple("shared.intermediate", s.intermediate, kVectorElems)}) {
      if (!st.ok()) return st;
    }
  } else if (s.gated || s.intermediate != 0) {
    return invalid(
        fmt::format("shared.count = 0 but shared.intermediate = {} and shared.gated = {}",
                    s.intermediate, s.gated));
  }
  return {};
}

Status check_device_pointer(const void* ptr, const char* name, int device, std::size_t align) {
  if (ptr == nullptr) return invalid(fmt::format("{} is a null pointer", name));
  const auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  if (addr % align != 0) {
    return invalid(fmt::format("{} = {} is not {}-byte aligned", name, ptr, align));
  }
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
    return invalid(
        fmt::format("{} = {} is not a CUDA pointer ({})", name, ptr, cudaGetErrorString(err)));
  }
  if (attr.type == cudaMemoryTypeManaged) return {};
  if (attr.type != cudaMemoryTypeDevice) {
    return invalid(fmt::format("{} = {} is host memory; a device pointer is required", name, ptr));
  }
  if (attr.device != device) {
    return invalid(fmt::format("{} = {} lives on device {}, but the layer runs on device {}", name,
                               ptr, attr.device, device));
  }
  return {};
}

Status validate_weights(const Config& c, const Weights& w, int device) {
  if (w.dtype != c.dtype) {
    return invalid(fmt::format("weights.dtype = {} does not match config.dtype = {}",
                               dtype_name(w.dtype), dtype_name(c.dtype)));
  }
  const struct {
    const void* ptr;
    const char* name;
    bool needed;
  } items[] = {
      {w.router, "weights.router", true},
      {w.w13, "weights.w13", true},
      {w.w2, "weights.w2", true},
      {w.correction_bias, "weights.correction_bias", c.routing.use_correction_bias},
      {w.shared_w13, "weights.shared_w13", c.shared.count > 0},
      {w.shared_w2, "weights.shared_w2", c.shared.count > 0},
      {w.shared_gate, "weights.shared_gate", c.shared.gated},
  };
  for (const auto& item : items) {
    if (!item.needed) continue;
    Status s = check_device_pointer(item.ptr, item.name, device, 16);
    if (!s.ok()) return s;
  }
  return {};
}

Status check_gpu_support(const Config& c) {
  const Routing& r = c.routing;
  if (r.n_group > 1) {
    return {StatusCode::NotSupported,
            fmt::format("grouped top-k (routing.n_group = {}) runs on the CPU reference only in "
                        "this version",
                        r.n_group)};
  }
  if (c.shared.count > 0) {
    return {StatusCode::NotSupported,
            fmt::format("shared experts (shared.count = {}) run on the CPU reference only in this "
                        "version",
                        c.shared.count)};
  }
  return {};
}

}  // namespace flashmoe::detail
