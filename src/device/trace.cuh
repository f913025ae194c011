// Device side of the scheduling trace. Thread 0 of each block records its block's tasks into
// the block's own slice of the trace buffer: no atomics, and a full slice only counts.
#pragma once

#include <cstdint>

#include "flashmoe/trace.hpp"
#include "sync.cuh"
#include "trace_layout.hpp"

namespace flashmoe::detail {

#ifndef FLASHMOE_ENABLE_TRACE
#define FLASHMOE_ENABLE_TRACE 1
#endif

__device__ __forceinline__ std::uint32_t sm_id() {
  std::uint32_t id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

struct TraceSink {
  RawTraceEvent* events = nullptr;  // [grid][capacity], null: tracing off
  RawTraceBlock* blocks = nullptr;  // [grid]
  std::uint32_t capacity = 0;
};

// Whether this build compiles the traced kernels at all (FLASHMOE_ENABLE_TRACE).
inline constexpr bool kTraceCompiled = FLASHMOE_ENABLE_TRACE != 0;

// A kernel is instantiated with Tracer<true> (launched only while a trace buffer is set) and
// Tracer<false>, so that untraced forwards carry no tracer state in their registers.
template <bool kOn>
class Tracer {
 public:
  __device__ explicit Tracer(const TraceSink& sink) {
    if (sink.events != nullptr && threadIdx.x == 0) {
      events_ = sink.events + static_cast<std::size_t>(blockIdx.x) * sink.capacity;
      block_ = sink.blocks + blockIdx.x;
      capacity_ = sink.capacity;
      entry_ = global_timer_ns();
    }
  }
  // Only thread 0 records; everyone else gets 0 and no-ops.
  __device__ bool on() const { return events_ != nullptr; }
  __device__ std::uint64_t now() const { return on() ? global_timer_ns() : 0; }

  __device__ void record(TraceKind kind, std::uint64_t start, int expert, int tile) {
    if (!on()) return;
    if (count_ < capacity_) {
      events_[count_] = {start, global_timer_ns(), expert,
                         tile,  sm_id(),           static_cast<std::uint32_t>(kind)};
    }
    ++count_;
  }
  __device__ void finish() {
    if (!on()) return;
    *block_ = {entry_, global_timer_ns(), sm_id(), count_, {0, 0}};
  }

 private:
  RawTraceEvent* events_ = nullptr;
  RawTraceBlock* block_ = nullptr;
  std::uint32_t capacity_ = 0, count_ = 0;
  std::uint64_t entry_ = 0;
};

template <>
class Tracer<false> {
 public:
  __device__ explicit Tracer(const TraceSink&) {}
  __device__ constexpr bool on() const { return false; }
  __device__ constexpr std::uint64_t now() const { return 0; }
  __device__ void record(TraceKind, std::uint64_t, int, int) {}
  __device__ void finish() {}
};

}  // namespace flashmoe::detail
