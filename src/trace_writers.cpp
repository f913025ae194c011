// FlashMoE trace writers: Chrome trace-event JSON, an SVG timeline and a text summary of the
// scheduling trace recorded by the persistent kernel. Host-only, no CUDA.
//
// Timestamps are %globaltimer nanoseconds since the epoch (~1.7e18), beyond double's exact
// integer range, so every time is first made relative to the base in integer nanoseconds and
// only then converted to double.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashmoe/trace.hpp"

namespace flashmoe {

const char* to_string(TraceKind kind) noexcept {
  switch (kind) {
    case TraceKind::Router:
      return "router";
    case TraceKind::Routing:
      return "routing";
    case TraceKind::GateUp:
      return "gate_up";
    case TraceKind::Down:
      return "down";
    case TraceKind::Combine:
      return "combine";
    case TraceKind::Wait:
      return "wait";
    case TraceKind::Gather:
      return "gather";
  }
  return "unknown";
}

namespace {

using Buffer = fmt::memory_buffer;

// The time origin and extent of a trace, in absolute nanoseconds.
struct Window {
  std::uint64_t base = 0;  // earliest block entry, else earliest event start, else 0
  std::uint64_t end = 0;   // latest block exit, else latest event end (never below base)
  bool has_blocks = false;
};

Window window_of(const Trace& trace) {
  Window w;
  if (!trace.blocks.empty()) {
    w.has_blocks = true;
    w.base = trace.blocks.front().entry_ns;
    w.end = trace.blocks.front().exit_ns;
    for (const TraceBlock& b : trace.blocks) {
      w.base = std::min(w.base, b.entry_ns);
      w.end = std::max(w.end, b.exit_ns);
    }
  } else if (!trace.events.empty()) {
    w.base = trace.events.front().start_ns;
    w.end = trace.events.front().end_ns;
    for (const TraceEvent& e : trace.events) {
      w.base = std::min(w.base, e.start_ns);
      w.end = std::max(w.end, e.end_ns);
    }
  }
  w.end = std::max(w.end, w.base);
  return w;
}

// Signed offset from the base in nanoseconds, as double; exact for offsets below 2^53 ns.
double rel_ns(std::uint64_t t, std::uint64_t base) {
  return t >= base ? static_cast<double>(t - base) : -static_cast<double>(base - t);
}
double rel_us(std::uint64_t t, std::uint64_t base) { return rel_ns(t, base) / 1000.0; }

// A reversed interval (corrupt record) counts as zero length rather than a huge unsigned one.
std::uint64_t duration_ns(const TraceEvent& e) {
  return e.end_ns >= e.start_ns ? e.end_ns - e.start_ns : 0;
}

bool kind_valid(TraceKind kind) { return static_cast<int>(kind) < kTraceKinds; }

// Short event text shared by all writers, e.g. "gate_up e12 t3", "wait e12 m-tile 4".
std::string event_label(const TraceEvent& e) {
  const char* kind = to_string(e.kind);
  if (e.kind == TraceKind::Wait) {
    if (e.expert == -2) return fmt::format("wait router chunk {}", e.tile);
    if (e.expert < 0) return "wait tile table";
    return fmt::format("wait e{} m-tile {}", e.expert, e.tile);
  }
  if (e.kind == TraceKind::Routing && e.tile < 0) return "routing tile table";
  if (e.kind == TraceKind::Routing && e.expert == -3)
    return fmt::format("routing row map t{}", e.tile);
  std::string label = kind;
  if (e.expert >= 0) label += fmt::format(" e{}", e.expert);
  if (e.tile >= 0) label += fmt::format(" t{}", e.tile);
  return label;
}

void append_json_string(Buffer& out, std::string_view s) {
  out.push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out.append(std::string_view("\\\""));
        break;
      case '\\':
        out.append(std::string_view("\\\\"));
        break;
      case '\n':
        out.append(std::string_view("\\n"));
        break;
      case '\r':
        out.append(std::string_view("\\r"));
        break;
      case '\t':
        out.append(std::string_view("\\t"));
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(out), "\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out.push_back(c);  // UTF-8 bytes pass through unchanged
        }
    }
  }
  out.push_back('"');
}

std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 forbids most control characters even as references; drop them.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out.push_back(c);
    }
  }
  return out;
}

// Every (SM, block) pair of the trace, from the block records and the events (a block whose
// record is missing still gets a thread / row).
std::map<std::uint32_t, std::vector<std::uint32_t>> blocks_by_sm(const Trace& trace) {
  std::map<std::uint32_t, std::vector<std::uint32_t>> by_sm;
  for (const TraceBlock& b : trace.blocks) by_sm[b.sm].push_back(b.block);
  for (const TraceEvent& e : trace.events) by_sm[e.sm].push_back(e.block);
  for (auto& [sm, blocks] : by_sm) {
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  }
  return by_sm;
}

// The union of [first, second) intervals as disjoint intervals in ascending order (empty ones
// dropped); sorts its argument.
std::vector<std::pair<std::uint64_t, std::uint64_t>> merge_intervals(
    std::vector<std::pair<std::uint64_t, std::uint64_t>>& intervals) {
  std::sort(intervals.begin(), intervals.end());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> merged;
  for (const auto& [start, end] : intervals) {
    if (end <= start) continue;
    if (!merged.empty() && start <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, end);
    } else {
      merged.emplace_back(start, end);
    }
  }
  return merged;
}

// Total length of the union of [first, second) intervals; sorts its argument.
std::uint64_t union_length(std::vector<std::pair<std::uint64_t, std::uint64_t>>& intervals) {
  std::uint64_t total = 0;
  for (const auto& [start, end] : merge_intervals(intervals)) total += end - start;
  return total;
}

// An axis step of 1, 2 or 5 times a power of ten giving about `target` intervals over span.
double nice_step(double span, int target) {
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  const double m = r < 1.5 ? 1.0 : r < 3.5 ? 2.0 : r < 7.5 ? 5.0 : 10.0;
  return m * mag;
}

// Decimals needed to print multiples of step exactly (steps are 1, 2 or 5 x 10^k).
int step_decimals(double step) {
  const int d = -static_cast<int>(std::floor(std::log10(step) + 1e-9));
  return std::max(0, d);
}

}  // namespace

std::string trace_to_chrome_json(const Trace& trace) {
  const Window w = window_of(trace);
  Buffer out;
  auto it = std::back_inserter(out);

  out.append(
      std::string_view(R"({"displayTimeUnit":"ns","otherData":{"time_unit":"us","variant":)"));
  append_json_string(out, trace.variant);
  fmt::format_to(it,
                 R"(,"num_tokens":{},"grid_blocks":{},"sm_count":{},"tile_m":{},)"
                 R"("tile_n_gateup":{},"tile_n_down":{},"router_tasks":{},"router_k_slices":{},)"
                 R"("router_tile_m":{},"router_tile_n":{},"down_k_slices":{},"gather_parts":{},)"
                 R"("base_ns":{}}},)"
                 R"("traceEvents":[)",
                 trace.num_tokens, trace.grid_blocks, trace.sm_count, trace.tile_m,
                 trace.tile_n_gateup, trace.tile_n_down, trace.router_tasks, trace.router_k_slices,
                 trace.router_tile_m, trace.router_tile_n, trace.down_k_slices, trace.gather_parts,
                 w.base);

  bool first = true;
  auto sep = [&] {
    if (!first) out.push_back(',');
    first = false;
    out.push_back('\n');
  };

  // Metadata: one process per SM (sorted by SM id), one thread per block.
  for (const auto& [sm, blocks] : blocks_by_sm(trace)) {
    sep();
    fmt::format_to(
        it, R"({{"ph":"M","name":"process_name","pid":{},"tid":0,"args":{{"name":"SM {}"}}}})", sm,
        sm);
    sep();
    fmt::format_to(
        it,
        R"({{"ph":"M","name":"process_sort_index","pid":{},"tid":0,"args":{{"sort_index":{}}}}})",
        sm, sm);
    for (const std::uint32_t block : blocks) {
      sep();
      fmt::format_to(
          it, R"({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":"block {}"}}}})",
          sm, block, block);
    }
  }

  // Block entry and exit as thread-scoped instants, so they never count as tasks.
  for (const TraceBlock& b : trace.blocks) {
    sep();
    fmt::format_to(it, R"({{"ph":"i","s":"t","name":"block entry","pid":{},"tid":{},"ts":{:.3f}}})",
                   b.sm, b.block, rel_us(b.entry_ns, w.base));
    sep();
    fmt::format_to(it,
                   R"({{"ph":"i","s":"t","name":"block exit","pid":{},"tid":{},"ts":{:.3f},)"
                   R"("args":{{"dropped":{}}}}})",
                   b.sm, b.block, rel_us(b.exit_ns, w.base), b.dropped);
  }

  for (const TraceEvent& e : trace.events) {
    sep();
    out.append(std::string_view(R"({"ph":"X","name":)"));
    append_json_string(out, event_label(e));
    out.append(std::string_view(R"(,"cat":)"));
    append_json_string(out, to_string(e.kind));
    fmt::format_to(it,
                   R"(,"pid":{},"tid":{},"ts":{:.3f},"dur":{:.3f},)"
                   R"("args":{{"expert":{},"tile":{},"start_ns":{},"end_ns":{}}}}})",
                   e.sm, e.block, rel_us(e.start_ns, w.base),
                   static_cast<double>(duration_ns(e)) / 1000.0, e.expert, e.tile, e.start_ns,
                   e.end_ns);
  }
  out.append(std::string_view("\n]}\n"));
  return fmt::to_string(out);
}

std::string trace_to_svg(const Trace& trace) {
  // Layout, in px. 132 SM rows at 7 px fit in about 1 000 px of height.
  constexpr double kWidth = 1600, kLeft = 64, kRight = 24;
  constexpr double kPlotW = kWidth - kLeft - kRight;
  constexpr double kRowsTop = 52, kPitch = 7, kTaskH = 6, kWaitH = 2;
  // Fixed palette, index = TraceKind; waits are light grey and thin so they read as bubbles.
  static constexpr const char* kColors[kTraceKinds] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759",
                                                       "#b07aa1", "#bab0ac", "#76b7b2"};

  const Window w = window_of(trace);
  // The axis covers events that run past the last exit too; an empty trace gets 0..1 us.
  std::uint64_t end = w.end;
  for (const TraceEvent& e : trace.events) end = std::max(end, e.end_ns);
  const double span_ns = end > w.base ? static_cast<double>(end - w.base) : 1000.0;
  const auto x_of = [&](double ns) { return kLeft + ns / span_ns * kPlotW; };

  // Rows: every SM that appears, sorted by id.
  std::map<std::uint32_t, int> row_of;
  for (const auto& [sm, blocks] : blocks_by_sm(trace)) {
    const int row = static_cast<int>(row_of.size());
    row_of[sm] = row;
  }
  const double rows_h = kPitch * static_cast<double>(row_of.size());
  const double axis_y = kRowsTop + rows_h + 4;
  const double height = axis_y + 44;

  Buffer out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                 "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
                 "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\">\n"
                 "<rect x=\"0\" y=\"0\" width=\"{0:.0f}\" height=\"{1:.0f}\" fill=\"#ffffff\"/>\n",
                 kWidth, height);

  std::uint64_t dropped = 0;
  for (const TraceBlock& b : trace.blocks) dropped += b.dropped;
  fmt::format_to(it,
                 "<text x=\"{:.0f}\" y=\"18\" font-size=\"13\">FlashMoE trace: {} | T = {} | "
                 "grid {} blocks | {} SMs | span {:.3f} &#181;s | {} events{}</text>\n",
                 kLeft, xml_escape(trace.variant), trace.num_tokens, trace.grid_blocks,
                 row_of.size(), rel_us(w.end, w.base), trace.events.size(),
                 dropped > 0 ? fmt::format(" | {} dropped", dropped) : std::string());

  // Legend: one swatch per kind. These six and the background are the only rects besides the
  // events' (tests count them).
  for (int k = 0; k < kTraceKinds; ++k) {
    const double x = kLeft + 110.0 * k;
    fmt::format_to(it,
                   "<rect x=\"{:.0f}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{}\"/>"
                   "<text x=\"{:.0f}\" y=\"37\" font-size=\"11\">{}</text>\n",
                   x, kColors[k], x + 14, to_string(static_cast<TraceKind>(k)));
  }

  // Time axis with gridlines through the rows.
  const double span_us = span_ns / 1000.0;
  const double step = nice_step(span_us, 10);
  const int decimals = step_decimals(step);
  fmt::format_to(it,
                 "<line x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\" stroke=\"#000000\" "
                 "stroke-width=\"1\"/>\n",
                 kLeft, axis_y, kLeft + kPlotW, axis_y);
  for (int i = 0;; ++i) {
    const double t_us = step * i;
    if (t_us > span_us * (1 + 1e-9)) break;
    const double x = x_of(t_us * 1000.0);
    fmt::format_to(it,
                   "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\" "
                   "stroke=\"#dddddd\" stroke-width=\"0.5\"/>"
                   "<line x1=\"{0:.2f}\" y1=\"{2:.2f}\" x2=\"{0:.2f}\" y2=\"{3:.2f}\" "
                   "stroke=\"#000000\" stroke-width=\"1\"/>"
                   "<text x=\"{0:.2f}\" y=\"{4:.2f}\" font-size=\"10\" "
                   "text-anchor=\"middle\">{5:.{6}f}</text>\n",
                   x, kRowsTop, axis_y, axis_y + 4, axis_y + 16, t_us, decimals);
  }
  fmt::format_to(it,
                 "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"11\" text-anchor=\"middle\">"
                 "time since the first block entry (&#181;s)</text>\n",
                 kLeft + kPlotW / 2, axis_y + 34);

  // Row labels.
  for (const auto& [sm, row] : row_of) {
    fmt::format_to(
        it, "<text x=\"{:.0f}\" y=\"{:.1f}\" font-size=\"6\" text-anchor=\"end\">SM {}</text>\n",
        kLeft - 4, kRowsTop + kPitch * row + kTaskH, sm);
  }

  // One rect per event; several blocks on one SM share its row, hence the slight transparency.
  for (const TraceEvent& e : trace.events) {
    const int k = kind_valid(e.kind) ? static_cast<int>(e.kind) : static_cast<int>(TraceKind::Wait);
    const bool wait = e.kind == TraceKind::Wait;
    const double row_y = kRowsTop + kPitch * row_of.at(e.sm);
    const double h = wait ? kWaitH : kTaskH;
    const double y = row_y + (kTaskH - h) / 2;
    const double start = rel_ns(e.start_ns, w.base);
    const double dur = static_cast<double>(duration_ns(e));
    // A minimum width keeps sub-pixel tasks visible.
    const double width = std::max(dur / span_ns * kPlotW, 0.5);
    fmt::format_to(it,
                   "<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.0f}\" fill=\"{}\" "
                   "fill-opacity=\"{}\"><title>{} | block {} SM {} | {:.3f}-{:.3f} &#181;s "
                   "({:.3f} &#181;s)</title></rect>\n",
                   x_of(start), y, width, h, kColors[k], wait ? "0.6" : "0.85",
                   xml_escape(event_label(e)), e.block, e.sm, start / 1000.0,
                   rel_us(e.end_ns, w.base), dur / 1000.0);
  }
  out.append(std::string_view("</svg>\n"));
  return fmt::to_string(out);
}

TraceSummary summarize(const Trace& trace) {
  TraceSummary s;
  const Window w = window_of(trace);
  s.span_us = static_cast<double>(w.end - w.base) / 1000.0;

  // Per kind.
  std::uint64_t total_ns[kTraceKinds] = {}, max_ns[kTraceKinds] = {};
  std::vector<std::uint64_t> starts[kTraceKinds], ends[kTraceKinds];
  for (const TraceEvent& e : trace.events) {
    if (!kind_valid(e.kind)) continue;
    const int k = static_cast<int>(e.kind);
    const std::uint64_t d = duration_ns(e);
    ++s.kinds[k].count;
    total_ns[k] += d;
    max_ns[k] = std::max(max_ns[k], d);
    starts[k].push_back(e.start_ns);
    ends[k].push_back(std::max(e.end_ns, e.start_ns));
  }
  for (int k = 0; k < kTraceKinds; ++k) {
    TraceKindStats& ks = s.kinds[k];
    ks.total_us = static_cast<double>(total_ns[k]) / 1000.0;
    ks.max_us = static_cast<double>(max_ns[k]) / 1000.0;
    if (ks.count == 0) continue;
    ks.mean_us = ks.total_us / ks.count;
    std::sort(starts[k].begin(), starts[k].end());
    std::sort(ends[k].begin(), ends[k].end());
    const std::size_t mid = (starts[k].size() - 1) / 2;
    ks.first_start_us = rel_us(starts[k].front(), w.base);
    ks.median_start_us = rel_us(starts[k][mid], w.base);
    ks.median_end_us = rel_us(ends[k][mid], w.base);
    ks.last_end_us = rel_us(ends[k].back(), w.base);
  }

  // Expert tiles: each SM's union of their intervals, then a sweep over the unions' edges for
  // the number of SMs running one at each instant (an end sorts before a start at the same
  // time: a tile that follows another on a second SM is not an overlap).
  std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> expert_tiles;
  for (const TraceEvent& e : trace.events) {
    if ((e.kind == TraceKind::GateUp || e.kind == TraceKind::Down) && e.end_ns > e.start_ns) {
      expert_tiles[e.sm].emplace_back(e.start_ns, e.end_ns);
    }
  }
  if (!expert_tiles.empty()) {
    std::uint64_t first = ~std::uint64_t{0}, last = 0, covered = 0;
    std::vector<std::pair<std::uint64_t, int>> edges;
    for (auto& [sm, intervals] : expert_tiles) {
      for (const auto& [a, b] : merge_intervals(intervals)) {
        first = std::min(first, a);
        last = std::max(last, b);
        covered += b - a;
        edges.emplace_back(a, +1);
        edges.emplace_back(b, -1);
      }
    }
    std::sort(edges.begin(), edges.end());
    int running = 0;
    for (const auto& edge : edges) {
      running += edge.second;
      s.peak_expert_sms = std::max(s.peak_expert_sms, running);
    }
    s.first_expert_tile_us = rel_us(first, w.base);
    s.last_expert_tile_us = rel_us(last, w.base);
    s.mean_expert_sms = static_cast<double>(covered) / static_cast<double>(last - first);
  }

  // Time to the first task.
  bool any_task = false;
  std::uint64_t first_task = 0;
  for (const TraceEvent& e : trace.events) {
    if (e.kind == TraceKind::Wait || !kind_valid(e.kind)) continue;
    if (!any_task || e.start_ns < first_task) first_task = e.start_ns;
    any_task = true;
  }
  if (any_task) s.first_task_us = rel_us(first_task, w.base);

  // Tail: the first block to finish to the last.
  if (w.has_blocks) {
    std::uint64_t first_exit = trace.blocks.front().exit_ns;
    for (const TraceBlock& b : trace.blocks) first_exit = std::min(first_exit, b.exit_ns);
    s.tail_us = rel_us(w.end, first_exit);
  }

  // SM busy: union of the task intervals of all blocks on an SM (blocks sharing an SM overlap),
  // clipped to the span, over the span.
  const auto by_sm = blocks_by_sm(trace);
  if (!by_sm.empty()) {
    s.sm_busy.assign(static_cast<std::size_t>(by_sm.rbegin()->first) + 1, 0.0);
    std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> intervals;
    for (const TraceEvent& e : trace.events) {
      if (e.kind == TraceKind::Wait || !kind_valid(e.kind)) continue;
      const std::uint64_t a = std::max(e.start_ns, w.base);
      const std::uint64_t b = std::min(e.end_ns, w.end);
      if (b > a) intervals[e.sm].emplace_back(a, b);
    }
    const double span_ns = static_cast<double>(w.end - w.base);
    double sum = 0;
    for (const auto& [sm, blocks] : by_sm) {
      auto found = intervals.find(sm);
      const double busy = found == intervals.end() || span_ns <= 0
                              ? 0.0
                              : static_cast<double>(union_length(found->second)) / span_ns;
      s.sm_busy[sm] = busy;
      sum += busy;
    }
    s.mean_sm_busy = sum / static_cast<double>(by_sm.size());
  }

  // Longest waits; ties go to the earlier start, then the lower block, for a stable order.
  for (const TraceEvent& e : trace.events) {
    if (e.kind == TraceKind::Wait) s.longest_waits.push_back(e);
  }
  std::sort(s.longest_waits.begin(), s.longest_waits.end(),
            [](const TraceEvent& a, const TraceEvent& b) {
              const std::uint64_t da = duration_ns(a), db = duration_ns(b);
              if (da != db) return da > db;
              if (a.start_ns != b.start_ns) return a.start_ns < b.start_ns;
              return a.block < b.block;
            });
  if (s.longest_waits.size() > 5) s.longest_waits.resize(5);

  // Phases: each event's overlap with each tenth of the span, over the tenth's length.
  const std::uint64_t span_ns = w.end - w.base;
  if (span_ns > 0) {
    constexpr int kPhases = TraceSummary::kTracePhases;
    auto edge = [&](int i) { return w.base + span_ns * static_cast<std::uint64_t>(i) / kPhases; };
    for (const TraceEvent& e : trace.events) {
      if (!kind_valid(e.kind)) continue;
      for (int i = 0; i < kPhases; ++i) {
        const std::uint64_t a = std::max(e.start_ns, edge(i));
        const std::uint64_t b = std::min(e.end_ns, edge(i + 1));
        if (b > a) s.phase_blocks[static_cast<int>(e.kind)][i] += static_cast<double>(b - a);
      }
    }
    for (auto& per_kind : s.phase_blocks) {
      for (int i = 0; i < kPhases; ++i) {
        per_kind[i] /= static_cast<double>(edge(i + 1) - edge(i));
      }
    }
  }

  for (const TraceBlock& b : trace.blocks) s.dropped += b.dropped;
  return s;
}

std::string trace_summary_text(const Trace& trace) {
  const TraceSummary s = summarize(trace);
  const Window w = window_of(trace);
  const auto by_sm = blocks_by_sm(trace);

  Buffer out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "FlashMoE trace: variant {}, T = {}, grid {} blocks, tile_m {}, tile_n {} / {}, "
                 "down K slices {}, gather parts {}\n",
                 trace.variant.empty() ? "?" : trace.variant, trace.num_tokens, trace.grid_blocks,
                 trace.tile_m, trace.tile_n_gateup, trace.tile_n_down, trace.down_k_slices,
                 trace.gather_parts);
  fmt::format_to(it, "  {} blocks on {} SMs (device has {}), {} events, span {:.3f} us\n",
                 trace.blocks.size(), by_sm.size(), trace.sm_count, trace.events.size(), s.span_us);
  if (trace.events.empty()) {
    out.append(std::string_view("  no events recorded\n"));
  }

  // Durations, then when the kind ran: first start, median start and end, last end.
  fmt::format_to(it, "\n  {:<8} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "kind",
                 "count", "total us", "mean us", "max us", "first", "med start", "med end", "last");
  for (int k = 0; k < kTraceKinds; ++k) {
    const TraceKindStats& ks = s.kinds[k];
    fmt::format_to(
        it, "  {:<8} {:>8} {:>12.3f} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f}\n",
        to_string(static_cast<TraceKind>(k)), ks.count, ks.total_us, ks.mean_us, ks.max_us,
        ks.first_start_us, ks.median_start_us, ks.median_end_us, ks.last_end_us);
  }

  fmt::format_to(it, "\n  time to first task {:>10.3f} us\n", s.first_task_us);
  fmt::format_to(it, "  tail               {:>10.3f} us (first block exit to the last)\n",
                 s.tail_us);
  fmt::format_to(it, "  mean SM busy       {:>10.1f} %  (tasks only, waits excluded)\n",
                 100.0 * s.mean_sm_busy);
  if (s.peak_expert_sms > 0) {
    fmt::format_to(
        it,
        "  expert tiles       {:>10.3f} us to {:.3f} us, on {:.1f} SMs on average, {} at "
        "most (of {})\n",
        s.first_expert_tile_us, s.last_expert_tile_us, s.mean_expert_sms, s.peak_expert_sms,
        trace.sm_count);
  }
  if (!by_sm.empty()) {
    std::vector<std::pair<double, std::uint32_t>> busy;
    for (const auto& [sm, blocks] : by_sm) busy.emplace_back(s.sm_busy[sm], sm);
    std::sort(busy.begin(), busy.end());
    out.append(std::string_view("  least busy SMs    "));
    for (std::size_t i = 0; i < busy.size() && i < 5; ++i) {
      fmt::format_to(it, "{} SM {} {:.1f} %", i == 0 ? "" : ",", busy[i].second,
                     100.0 * busy[i].first);
    }
    out.push_back('\n');
  }

  if (!trace.events.empty()) {
    fmt::format_to(it,
                   "\n  blocks running each kind, mean over each tenth of the span ({:.3f} us)\n",
                   s.span_us / TraceSummary::kTracePhases);
    fmt::format_to(it, "  {:<8}", "kind");
    for (int i = 1; i <= TraceSummary::kTracePhases; ++i) fmt::format_to(it, " {:>6}", i);
    out.push_back('\n');
    for (int k = 0; k < kTraceKinds; ++k) {
      if (s.kinds[k].count == 0) continue;
      fmt::format_to(it, "  {:<8}", to_string(static_cast<TraceKind>(k)));
      for (double v : s.phase_blocks[k]) fmt::format_to(it, " {:>6.1f}", v);
      out.push_back('\n');
    }
  }

  if (!s.longest_waits.empty()) {
    out.append(std::string_view("\n  longest waits\n"));
    for (const TraceEvent& e : s.longest_waits) {
      const std::string what = e.expert == -2 ? fmt::format("router chunk {}", e.tile)
                               : e.expert < 0
                                   ? std::string("tile table")
                                   : fmt::format("expert {} m-tile {}", e.expert, e.tile);
      fmt::format_to(it, "  {:>10.3f} us  block {:<4} SM {:<4} {:<24} at +{:.3f} us\n",
                     static_cast<double>(duration_ns(e)) / 1000.0, e.block, e.sm, what,
                     rel_us(e.start_ns, w.base));
    }
  }

  if (s.dropped > 0) {
    fmt::format_to(it,
                   "\n  WARNING: {} events dropped (per-block trace capacity exceeded); counts "
                   "and busy times are lower bounds\n",
                   s.dropped);
  }
  return fmt::to_string(out);
}

}  // namespace flashmoe
