// Raw trace records as the kernel writes them; converted to flashmoe::TraceEvent on the host.
#pragma once

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

}  // namespace flashmoe::detail
