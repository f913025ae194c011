// Raw trace records as the kernel writes them; converted to flashmoe::TraceEvent on the host.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashmoe::detail {

struct RawTraceEvent {  // 32 bytes
  std::uint64_t start_ns, end_ns;
  std::int32_t expert, tile;
  std::uint32_t sm, kind;
};

struct RawTraceBlock {  // 32 bytes
  std::uint64_t entry_ns, exit_ns;
  std::uint32_t sm, recorded;  // recorded counts every event, kept or dropped
  std::uint32_t pad[2];
};

static_assert(sizeof(RawTraceEvent) == 32 && sizeof(RawTraceBlock) == 32, "trace record sizes");

// Trace buffer: [max_grid] block records, then [max_grid][capacity] events.
inline std::size_t trace_events_offset(int max_grid) {
  return static_cast<std::size_t>(max_grid) * sizeof(RawTraceBlock);
}
inline std::size_t trace_buffer_bytes(int max_grid, int capacity) {
  return trace_events_offset(max_grid) + static_cast<std::size_t>(max_grid) *
                                             static_cast<std::size_t>(capacity) *
                                             sizeof(RawTraceEvent);
}

}  // namespace flashmoe::detail
