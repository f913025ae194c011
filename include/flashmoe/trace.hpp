// FlashMoE: the scheduling timeline of the persistent kernel. With tracing on, every block
// records each task it runs and each wait, with %globaltimer start and end times and its SM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashmoe {

enum class TraceKind : std::uint8_t {
  Router = 0,   // router logits of a token chunk x expert slice (x K slice in prefill)
  Routing = 1,  // top-k of a token chunk (decode; tile = the chunk) or of a select ticket's
                //   tokens (prefill; tile = the ticket; expert = -3: the ticket's row map),
                //   or the tile-table build (tile = -1)
  GateUp = 2,   // gate/up tile: expert, tile = m-tile * gate/up n-tiles + n-tile
  Down = 3,     // down tile: expert,
                //   tile = (m-tile * down n-tiles + n-tile) * down K slices + K slice
  Combine = 4,  // fixed-order sum of finished token slices after a down tile: its expert,
                //   tile = the down n-tile
  Wait = 5,     // a bounded spin-wait (expert = -1: for the tile table; -2: a select ticket
                //   for its router chunk, tile = the chunk; else for an m-tile)
  Gather = 6,   // copy of an m-tile's token rows into expert order (warp-specialised prefill):
                //   expert, tile = the m-tile
};
inline constexpr int kTraceKinds = 7;

// Stable lower-case name: "router", "routing", "gate_up", "down", "combine", "wait", "gather".
[[nodiscard]] const char* to_string(TraceKind kind) noexcept;

struct TraceEvent {
  std::uint64_t start_ns = 0;  // %globaltimer, nanoseconds
  std::uint64_t end_ns = 0;
  std::uint32_t sm = 0;     // %smid
  std::uint32_t block = 0;  // blockIdx.x
  TraceKind kind = TraceKind::Router;
  std::int32_t expert = -1;  // -1 where no expert applies
  std::int32_t tile = -1;    // task-specific index, see TraceKind
};

// Per-block facts of a traced launch.
struct TraceBlock {
  std::uint32_t block = 0;
  std::uint32_t sm = 0;
  std::uint64_t entry_ns = 0;  // the block started
  std::uint64_t exit_ns = 0;   // the block left its task loop
  std::uint32_t dropped = 0;   // events beyond the per-block capacity (counted, not written)
};

// Everything recorded by the last traced forward.
struct Trace {
  std::vector<TraceEvent> events;  // grouped by block, in the order each block recorded them
  std::vector<TraceBlock> blocks;
  int num_tokens = 0;
  int grid_blocks = 0;
  int sm_count = 0;
  // Tile shape of the kernel variant that ran (decode or prefill).
  int tile_m = 0, tile_n_gateup = 0, tile_n_down = 0;
  // Router tasks of the launch and the slices of the hidden dimension each logit is summed
  // over (1 in decode; the prefill kernel splits H while there are few token chunks); both 0
  // with caller-supplied routing.
  int router_tasks = 0, router_k_slices = 0;
  // Tokens and experts of one router task (its token chunk and expert slice); 0 with
  // caller-supplied routing.
  int router_tile_m = 0, router_tile_n = 0;
  // Slices of the intermediate dimension each down tile is split into (1: none; long down
  // tiles of few-expert shapes are split so that the launch does not end on a few of them).
  int down_k_slices = 0;
  // Jobs each m-tile's gather (its token rows copied into expert order) is split into, each a
  // share of the columns: the warp-specialised kernel's, 0 in the others.
  int gather_parts = 0;
  // "decode", "prefill", or "prefill_ws" (the warp-specialised prefill kernel of sm_90a).
  std::string variant;
};

// Writers. Times are shown relative to the earliest block entry (without block records: the
// earliest event start).
// Chrome trace-event JSON (Perfetto, chrome://tracing): one process per SM, one thread per
// block, "X" events with ts/dur in microseconds.
[[nodiscard]] std::string trace_to_chrome_json(const Trace& trace);
// A self-contained SVG timeline: one row per SM, a colour per kind, a time axis in microseconds.
[[nodiscard]] std::string trace_to_svg(const Trace& trace);

// Numbers of the text summary.
struct TraceKindStats {
  std::uint64_t count = 0;
  double total_us = 0, mean_us = 0, max_us = 0;
  // When the kind ran, relative to the trace's origin: the first start, the median start and
  // end (the lower middle value for an even count) and the last end. All 0 without events.
  double first_start_us = 0, median_start_us = 0, median_end_us = 0, last_end_us = 0;
};
struct TraceSummary {
  TraceKindStats kinds[kTraceKinds];
  double span_us = 0;        // earliest block entry to latest block exit
  double first_task_us = 0;  // earliest entry to the start of the first non-wait event
  double tail_us = 0;        // first block to go idle (exit) to the last block's exit
  // Expert tiles (gate/up and down): the earliest start (the routing prelude ends there), the
  // latest end, and how many SMs ran one in between: the mean number of SMs with an expert
  // tile in progress over that window, and the most at any instant (a down tile's wait for its
  // m-tile's h is never part of the tile; the decode and prefill kernels record it as a Wait
  // event, the warp-specialised one not at all). All 0 without expert tiles.
  double first_expert_tile_us = 0, last_expert_tile_us = 0;
  double mean_expert_sms = 0;
  int peak_expert_sms = 0;
  // Busy fraction of an SM: the union of the task intervals (waits excluded) of all blocks
  // resident on it, over the span. The mean is over the SMs that appear in the trace.
  double mean_sm_busy = 0;
  std::vector<double> sm_busy;            // per SM id (0 for SMs that ran nothing)
  std::vector<TraceEvent> longest_waits;  // up to 5, longest first (ties: earlier start)
  std::uint64_t dropped = 0;
  // The launch in kTracePhases equal parts of the span: per kind, the mean number of blocks
  // running an event of that kind in each part (the phases of a launch, and what runs in its
  // tail, in numbers).
  static constexpr int kTracePhases = 10;
  double phase_blocks[kTraceKinds][kTracePhases] = {};
};
[[nodiscard]] TraceSummary summarize(const Trace& trace);
// The summary as text (fmt), a few dozen lines.
[[nodiscard]] std::string trace_summary_text(const Trace& trace);

}  // namespace flashmoe
