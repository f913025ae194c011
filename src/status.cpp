#include "flashmoe/status.hpp"

#include <fmt/format.h>

namespace flashmoe {

const char* to_string(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::Ok:
      return "ok";
    case StatusCode::InvalidArgument:
      return "invalid_argument";
    case StatusCode::NotSupported:
      return "not_supported";
    case StatusCode::OutOfMemory:
      return "out_of_memory";
    case StatusCode::CudaError:
      return "cuda_error";
    case StatusCode::DeviceTimeout:
      return "device_timeout";
    case StatusCode::Internal:
      return "internal";
    case StatusCode::WorkspaceBusy:
      return "workspace_busy";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (message_.empty()) return flashmoe::to_string(code_);
  return fmt::format("{}: {}", flashmoe::to_string(code_), message_);
}

}  // namespace flashmoe
