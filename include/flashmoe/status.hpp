// FlashMoE: status values returned by every fallible call.
#pragma once

#include <string>
#include <utility>

namespace flashmoe {

enum class StatusCode : int {
  Ok = 0,
  InvalidArgument = 1,  // a size, pointer, option or device-side routing id is wrong
  NotSupported = 2,     // valid, but this build or device cannot run it
  OutOfMemory = 3,      // workspace allocation failed
  CudaError = 4,        // a CUDA runtime call failed
  DeviceTimeout = 5,    // the kernel's watchdog ended a wait that never finished
  Internal = 6,         // a bug in FlashMoE: please report it
  WorkspaceBusy = 7,    // two forwards overlapped on one Layer or one scratch (see layer.hpp)
};

// Stable lower-case name of a code ("ok", "invalid_argument", ...).
[[nodiscard]] const char* to_string(StatusCode code) noexcept;

// A code plus a human-readable message naming the argument and its value. Every function
// returning a Status is [[nodiscard]]. (The class itself is not: nvcc's front end would then
// warn on plain assignments such as `status = forward(...)`.)
class Status {
 public:
  Status() noexcept = default;  // Ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  [[nodiscard]] bool ok() const noexcept { return code_ == StatusCode::Ok; }
  [[nodiscard]] StatusCode code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // "invalid_argument: hidden = 0 must be positive"
  [[nodiscard]] std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::Ok;
  std::string message_;
};

}  // namespace flashmoe
