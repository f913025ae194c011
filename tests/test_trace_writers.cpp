// The host-side trace writers (Chrome JSON, SVG, summary) on hand-made traces whose answers are
// worked out below, plus the validators of trace_check.hpp themselves. No GPU needed.
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "flashmoe/trace.hpp"
#include "trace_check.hpp"

namespace {

using flashmoe::Trace;
using flashmoe::TraceBlock;
using flashmoe::TraceEvent;
using flashmoe::TraceKind;
using flashmoe_test::JsonValue;

// A realistic %globaltimer value (ns since the epoch). Doubles hold integers exactly only up
// to 2^53 ~ 9e15, so any writer that converts absolute times to double before subtracting the
// base gets these offsets wrong by up to 128 ns.
constexpr std::uint64_t kBase = 1'700'000'000'000'000'000ull;

TraceEvent ev(std::uint32_t block, std::uint32_t sm, TraceKind kind, std::int32_t expert,
              std::int32_t tile, std::uint64_t start, std::uint64_t end) {
  TraceEvent e;
  e.start_ns = kBase + start;
  e.end_ns = kBase + end;
  e.sm = sm;
  e.block = block;
  e.kind = kind;
  e.expert = expert;
  e.tile = tile;
  return e;
}

TraceBlock blk(std::uint32_t block, std::uint32_t sm, std::uint64_t entry, std::uint64_t exit,
               std::uint32_t dropped) {
  TraceBlock b;
  b.block = block;
  b.sm = sm;
  b.entry_ns = kBase + entry;
  b.exit_ns = kBase + exit;
  b.dropped = dropped;
  return b;
}

// Four blocks on SMs 0, 1 and 3 (SM 2 ran nothing); times in ns after kBase.
//
//   block  SM  entry   exit   dropped
//     0     0      0  10000      0      <- earliest entry: the base
//     2     0    200  12000      0      <- latest exit: span = 12000 ns = 12 us
//     1     1    500   9000      2
//     3     3   1000   6000      3      <- earliest exit: tail = 12000 - 6000 = 6 us
//
//   #   block kind     expert tile  start    end    dur
//   e0    0   wait       -1    -1    100   1500   1400
//   e1    0   routing    -1    -1   1500   4000   2500   (ts 1.500, dur 2.500)
//   e2    0   gate_up    12     3   4000   7000   3000
//   e3    0   down       12     1   7000   9500   2500
//   e4    2   router     -1     0    800   2000   1200
//   e5    2   wait       12     0   2000   6000   4000
//   e6    2   gate_up    12     4   6000   8000   2000
//   e7    2   combine    -1     2  11000  11500    500
//   e8    1   router     -1     1    600   2100   1500   <- first non-wait: first_task 0.6 us
//   e9    1   wait       -1    -1   2100   4100   2000
//   e10   1   down        5     0   4100   8600   4500
//   e11   3   wait        7     0   1000   3000   2000
//   e12   3   combine    -1     0   3000   3500    500
//   e13   3   wait        7     1   3500   4000    500
//   e14   3   wait       -1    -1   4000   4300    300
//
// Per kind (count, total, mean, max in us):
//   router 2, 2.7, 1.35, 1.5      routing 1, 2.5, 2.5, 2.5     gate_up 2, 5.0, 2.5, 3.0
//   down   2, 7.0, 3.5, 4.5       combine 2, 1.0, 0.5, 0.5     wait    6, 10.2, 1.7, 4.0
//
// SM busy (union of non-wait intervals / 12000 ns):
//   SM 0: blocks 0 and 2 overlap: [800,2000] u [1500,4000] u [4000,7000] u [6000,8000] u
//         [7000,9500] = [800,9500] (8700) plus [11000,11500] (500) = 9200 -> 0.7666...
//         (the plain sum, 11700, would give 0.975)
//   SM 1: 1500 + 4500 = 6000 -> 0.5;  SM 2: nothing -> 0;  SM 3: 500 -> 0.041666...
//   mean over the SMs that appear (0, 1, 3): 15700 / 36000 = 0.436111...
//
// When each kind ran (first start, lower-median start, lower-median end, last end, in us):
//   router 0.6, 0.6, 2.0, 2.1      routing 1.5, 1.5, 4.0, 4.0    gate_up 4.0, 4.0, 7.0, 8.0
//   down   4.1, 4.1, 8.6, 9.5      combine 3.0, 3.0, 3.5, 11.5   wait    0.1, 2.0, 4.0, 6.0
//   (wait: starts 100, 1000, 2000, 2100, 3500, 4000; ends 1500, 3000, 4000, 4100, 4300, 6000)
//
// Expert tiles (gate/up and down): SM 0 [4000,9500] (5500), SM 1 [4100,8600] (4500); from 4.0
// to 9.5 us, 10000 / 5500 = 1.818... SMs on average, 2 at most.
//
// Longest waits: e5 (4000), e11 and e9 (2000 each; e11 starts first), e0 (1400), e13 (500);
// e14 (300) is the sixth and is left out. Dropped: 2 + 3 = 5.
Trace sample_trace() {
  Trace t;
  t.num_tokens = 16;
  t.grid_blocks = 4;
  t.sm_count = 132;
  t.tile_m = 16;
  t.tile_n_gateup = 128;
  t.tile_n_down = 64;
  t.variant = "decode";
  t.blocks = {blk(0, 0, 0, 10000, 0), blk(1, 1, 500, 9000, 2), blk(2, 0, 200, 12000, 0),
              blk(3, 3, 1000, 6000, 3)};
  t.events = {
      ev(0, 0, TraceKind::Wait, -1, -1, 100, 1500),
      ev(0, 0, TraceKind::Routing, -1, -1, 1500, 4000),
      ev(0, 0, TraceKind::GateUp, 12, 3, 4000, 7000),
      ev(0, 0, TraceKind::Down, 12, 1, 7000, 9500),
      ev(2, 0, TraceKind::Router, -1, 0, 800, 2000),
      ev(2, 0, TraceKind::Wait, 12, 0, 2000, 6000),
      ev(2, 0, TraceKind::GateUp, 12, 4, 6000, 8000),
      ev(2, 0, TraceKind::Combine, -1, 2, 11000, 11500),
      ev(1, 1, TraceKind::Router, -1, 1, 600, 2100),
      ev(1, 1, TraceKind::Wait, -1, -1, 2100, 4100),
      ev(1, 1, TraceKind::Down, 5, 0, 4100, 8600),
      ev(3, 3, TraceKind::Wait, 7, 0, 1000, 3000),
      ev(3, 3, TraceKind::Combine, -1, 0, 3000, 3500),
      ev(3, 3, TraceKind::Wait, 7, 1, 3500, 4000),
      ev(3, 3, TraceKind::Wait, -1, -1, 4000, 4300),
  };
  return t;
}

// Rects every SVG has besides one per event: the background and the six legend swatches.
constexpr int kSvgFixedRects = 1 + flashmoe::kTraceKinds;

const JsonValue* find_x_event(const std::vector<JsonValue>& events, const std::string& name) {
  for (const JsonValue& e : events) {
    const JsonValue* n = e.get("name");
    if (n && n->is_string(name)) return &e;
  }
  return nullptr;
}

double number_of(const JsonValue* object, const std::string& key) {
  const JsonValue* v = object ? object->get(key) : nullptr;
  EXPECT_TRUE(v && v->type == JsonValue::Type::Number) << key;
  return v && v->type == JsonValue::Type::Number ? v->number : -1e300;
}

// The metadata event `name` ("process_name"/"thread_name") for pid/tid, or nullptr.
const JsonValue* find_metadata(const JsonValue& root, const std::string& name, int pid, int tid) {
  const JsonValue* events = root.get("traceEvents");
  if (!events) return nullptr;
  for (const JsonValue& e : events->items) {
    const JsonValue* ph = e.get("ph");
    const JsonValue* n = e.get("name");
    if (!ph || !ph->is_string("M") || !n || !n->is_string(name)) continue;
    const JsonValue* p = e.get("pid");
    if (!p || p->number != pid) continue;
    if (tid >= 0) {
      const JsonValue* t = e.get("tid");
      if (!t || t->number != tid) continue;
    }
    return &e;
  }
  return nullptr;
}

std::string metadata_name(const JsonValue& root, const std::string& name, int pid, int tid) {
  const JsonValue* e = find_metadata(root, name, pid, tid);
  const JsonValue* args = e ? e->get("args") : nullptr;
  const JsonValue* n = args ? args->get("name") : nullptr;
  return n && n->type == JsonValue::Type::String ? n->string : "<missing>";
}

// The line of text that starts with prefix, or "" when none does.
std::string line_starting(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

// The <rect ...>...</rect> element whose <title> starts with title, or "".
std::string svg_rect_titled(const std::string& svg, const std::string& title) {
  const std::size_t t = svg.find("<title>" + title);
  if (t == std::string::npos) return "";
  const std::size_t r = svg.rfind("<rect", t);
  const std::size_t end = svg.find("</rect>", t);
  if (r == std::string::npos || end == std::string::npos) return "";
  return svg.substr(r, end - r);
}

// ---------------------------------------------------------------------------------------------
// Chrome JSON and SVG
// ---------------------------------------------------------------------------------------------

TEST(TraceWriters, KindNames) {
  EXPECT_STREQ(flashmoe::to_string(TraceKind::Router), "router");
  EXPECT_STREQ(flashmoe::to_string(TraceKind::Routing), "routing");
  EXPECT_STREQ(flashmoe::to_string(TraceKind::GateUp), "gate_up");
  EXPECT_STREQ(flashmoe::to_string(TraceKind::Down), "down");
  EXPECT_STREQ(flashmoe::to_string(TraceKind::Combine), "combine");
  EXPECT_STREQ(flashmoe::to_string(TraceKind::Wait), "wait");
  EXPECT_STREQ(flashmoe::to_string(static_cast<TraceKind>(9)), "unknown");
}

TEST(TraceWriters, ChromeJsonIsValidWithOneXEventPerEvent) {
  const Trace trace = sample_trace();
  const std::string json = flashmoe::trace_to_chrome_json(trace);
  std::string error;
  ASSERT_TRUE(flashmoe_test::json_is_valid(json, &error)) << error << "\n" << json;
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(json), 15);

  JsonValue root;
  ASSERT_TRUE(flashmoe_test::json_parse(json, &root, &error)) << error;
  const JsonValue* unit = root.get("displayTimeUnit");
  ASSERT_NE(unit, nullptr);
  EXPECT_TRUE(unit->is_string("ns"));
  const JsonValue* other = root.get("otherData");
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(other->get("time_unit") && other->get("time_unit")->is_string("us"));
  EXPECT_TRUE(other->get("variant") && other->get("variant")->is_string("decode"));
  EXPECT_EQ(number_of(other, "num_tokens"), 16);
  EXPECT_EQ(number_of(other, "grid_blocks"), 4);
  EXPECT_EQ(number_of(other, "tile_m"), 16);
}

TEST(TraceWriters, ChromeJsonTimesAreMicrosecondsFromEarliestEntry) {
  const std::string json = flashmoe::trace_to_chrome_json(sample_trace());
  // e1: 1500..4000 ns after the earliest entry, printed with 3 decimals.
  EXPECT_NE(json.find(R"("ts":1.500,"dur":2.500)"), std::string::npos) << json;

  const std::vector<JsonValue> events = flashmoe_test::chrome_x_events(json);
  ASSERT_EQ(events.size(), 15u);
  const JsonValue* routing = find_x_event(events, "routing tile table");
  ASSERT_NE(routing, nullptr) << json;
  EXPECT_DOUBLE_EQ(number_of(routing, "ts"), 1.5);
  EXPECT_DOUBLE_EQ(number_of(routing, "dur"), 2.5);
  EXPECT_EQ(number_of(routing, "pid"), 0);  // SM 0
  EXPECT_EQ(number_of(routing, "tid"), 0);  // block 0
  EXPECT_TRUE(routing->get("cat") && routing->get("cat")->is_string("routing"));
  const JsonValue* args = routing->get("args");
  ASSERT_NE(args, nullptr);
  EXPECT_EQ(number_of(args, "expert"), -1);
  EXPECT_EQ(number_of(args, "tile"), -1);
  // Absolute ns do not survive a double; check them as text.
  EXPECT_NE(json.find(R"("start_ns":1700000000000001500,"end_ns":1700000000000004000)"),
            std::string::npos);

  // e10: down e5 t0 on SM 1 / block 1, 4100..8600 ns.
  const JsonValue* down = find_x_event(events, "down e5 t0");
  ASSERT_NE(down, nullptr) << json;
  EXPECT_DOUBLE_EQ(number_of(down, "ts"), 4.1);
  EXPECT_DOUBLE_EQ(number_of(down, "dur"), 4.5);
  EXPECT_EQ(number_of(down, "pid"), 1);
  EXPECT_EQ(number_of(down, "tid"), 1);

  // e5 and e2: the names of a wait for an m-tile and of a gate/up tile.
  const JsonValue* wait = find_x_event(events, "wait e12 m-tile 0");
  ASSERT_NE(wait, nullptr) << json;
  EXPECT_DOUBLE_EQ(number_of(wait, "ts"), 2.0);
  EXPECT_DOUBLE_EQ(number_of(wait, "dur"), 4.0);
  EXPECT_NE(find_x_event(events, "gate_up e12 t3"), nullptr);
}

TEST(TraceWriters, ChromeJsonNamesProcessesAfterSmsAndThreadsAfterBlocks) {
  const std::string json = flashmoe::trace_to_chrome_json(sample_trace());
  JsonValue root;
  ASSERT_TRUE(flashmoe_test::json_parse(json, &root, nullptr));
  EXPECT_EQ(metadata_name(root, "process_name", 0, -1), "SM 0");
  EXPECT_EQ(metadata_name(root, "process_name", 1, -1), "SM 1");
  EXPECT_EQ(metadata_name(root, "process_name", 3, -1), "SM 3");
  EXPECT_EQ(find_metadata(root, "process_name", 2, -1), nullptr);  // SM 2 ran nothing
  EXPECT_EQ(metadata_name(root, "thread_name", 0, 0), "block 0");
  EXPECT_EQ(metadata_name(root, "thread_name", 0, 2), "block 2");
  EXPECT_EQ(metadata_name(root, "thread_name", 1, 1), "block 1");
  EXPECT_EQ(metadata_name(root, "thread_name", 3, 3), "block 3");
}

TEST(TraceWriters, StringsAreEscaped) {
  Trace trace = sample_trace();
  trace.variant = "de\"c<o>&de\\\n\x01";
  const std::string json = flashmoe::trace_to_chrome_json(trace);
  std::string error;
  JsonValue root;
  ASSERT_TRUE(flashmoe_test::json_parse(json, &root, &error)) << error << "\n" << json;
  const JsonValue* other = root.get("otherData");
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(other->get("variant") && other->get("variant")->is_string(trace.variant));

  const std::string svg = flashmoe::trace_to_svg(trace);
  EXPECT_TRUE(flashmoe_test::xml_is_well_formed(svg, &error)) << error;
  EXPECT_NE(svg.find("de&quot;c&lt;o&gt;&amp;de\\"), std::string::npos);
}

TEST(TraceWriters, SvgIsWellFormedWithOneRectPerEvent) {
  const Trace trace = sample_trace();
  const std::string svg = flashmoe::trace_to_svg(trace);
  std::string error;
  ASSERT_TRUE(flashmoe_test::xml_is_well_formed(svg, &error)) << error << "\n" << svg;
  EXPECT_EQ(flashmoe_test::count_occurrences(svg, "<rect"), 15 + kSvgFixedRects);
  EXPECT_EQ(flashmoe_test::count_occurrences(svg, "<title>"), 15);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("viewBox="), std::string::npos);
  // Axis unit, and the title line: variant, T, grid, span.
  EXPECT_NE(svg.find("(&#181;s)"), std::string::npos);
  EXPECT_NE(svg.find("decode"), std::string::npos);
  EXPECT_NE(svg.find("T = 16"), std::string::npos);
  EXPECT_NE(svg.find("grid 4 blocks"), std::string::npos);
  EXPECT_NE(svg.find("span 12.000 &#181;s"), std::string::npos);
  // Legend: every kind.
  for (int k = 0; k < flashmoe::kTraceKinds; ++k) {
    const std::string name = flashmoe::to_string(static_cast<TraceKind>(k));
    EXPECT_NE(svg.find(">" + name + "</text>"), std::string::npos) << name;
  }
}

TEST(TraceWriters, SvgRowsAxisAndGeometry) {
  const std::string svg = flashmoe::trace_to_svg(sample_trace());
  // One row per SM that appears, sorted by id; none for SM 2.
  const std::size_t sm0 = svg.find(">SM 0</text>");
  const std::size_t sm1 = svg.find(">SM 1</text>");
  const std::size_t sm3 = svg.find(">SM 3</text>");
  ASSERT_NE(sm0, std::string::npos);
  ASSERT_NE(sm1, std::string::npos);
  ASSERT_NE(sm3, std::string::npos);
  EXPECT_LT(sm0, sm1);
  EXPECT_LT(sm1, sm3);
  EXPECT_EQ(svg.find(">SM 2</text>"), std::string::npos);

  // A 12 us span gives a 1 us step: ticks 0, 1, ..., 12, printed without decimals.
  EXPECT_NE(svg.find(">0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">6</text>"), std::string::npos);
  EXPECT_NE(svg.find(">12</text>"), std::string::npos);
  EXPECT_EQ(svg.find(">13</text>"), std::string::npos);

  // Plot: x from 64 px, 1512 px wide for 12000 ns. e1 (1500..4000 ns) starts at
  // 64 + 1512 * 1500 / 12000 = 253 px and is 1512 * 2500 / 12000 = 315 px wide.
  const std::string rect = svg_rect_titled(svg, "routing tile table");
  ASSERT_FALSE(rect.empty()) << svg;
  EXPECT_NE(rect.find("x=\"253.00\""), std::string::npos) << rect;
  EXPECT_NE(rect.find("width=\"315.00\""), std::string::npos) << rect;
  EXPECT_NE(rect.find("block 0 SM 0"), std::string::npos) << rect;
  EXPECT_NE(rect.find("1.500-4.000"), std::string::npos) << rect;

  // Waits are thinner than tasks.
  const std::string wait = svg_rect_titled(svg, "wait e12 m-tile 0");
  ASSERT_FALSE(wait.empty());
  EXPECT_NE(wait.find("height=\"2\""), std::string::npos) << wait;
  EXPECT_NE(rect.find("height=\"6\""), std::string::npos) << rect;
}

TEST(TraceWriters, EmptyTrace) {
  const Trace trace;
  const std::string json = flashmoe::trace_to_chrome_json(trace);
  std::string error;
  EXPECT_TRUE(flashmoe_test::json_is_valid(json, &error)) << error << "\n" << json;
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(json), 0);

  const std::string svg = flashmoe::trace_to_svg(trace);
  EXPECT_TRUE(flashmoe_test::xml_is_well_formed(svg, &error)) << error << "\n" << svg;
  EXPECT_EQ(flashmoe_test::count_occurrences(svg, "<rect"), kSvgFixedRects);
}

// Without block records the base is the earliest event start and the span runs to the latest
// event end: here 1000..3000 ns, so the down task (2000..3000) is at ts 1.0 and takes half.
TEST(TraceWriters, EventsWithoutBlocksUseTheEarliestEvent) {
  Trace trace;
  trace.events = {ev(0, 5, TraceKind::Down, 1, 0, 2000, 3000),
                  ev(0, 5, TraceKind::Wait, 1, 0, 1000, 1500)};
  const std::vector<JsonValue> events =
      flashmoe_test::chrome_x_events(flashmoe::trace_to_chrome_json(trace));
  const JsonValue* down = find_x_event(events, "down e1 t0");
  ASSERT_NE(down, nullptr);
  EXPECT_DOUBLE_EQ(number_of(down, "ts"), 1.0);
  EXPECT_DOUBLE_EQ(number_of(down, "dur"), 1.0);
  EXPECT_TRUE(flashmoe_test::xml_is_well_formed(flashmoe::trace_to_svg(trace), nullptr));

  const flashmoe::TraceSummary s = flashmoe::summarize(trace);
  EXPECT_DOUBLE_EQ(s.span_us, 2.0);
  EXPECT_DOUBLE_EQ(s.first_task_us, 1.0);
  EXPECT_DOUBLE_EQ(s.tail_us, 0.0);
  ASSERT_EQ(s.sm_busy.size(), 6u);
  EXPECT_DOUBLE_EQ(s.sm_busy[5], 0.5);
  EXPECT_DOUBLE_EQ(s.mean_sm_busy, 0.5);
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

TEST(TraceSummary, PerKindStats) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  struct Want {
    TraceKind kind;
    std::uint64_t count;
    double total, mean, max;
  };
  const Want want[] = {
      {TraceKind::Router, 2, 2.7, 1.35, 1.5}, {TraceKind::Routing, 1, 2.5, 2.5, 2.5},
      {TraceKind::GateUp, 2, 5.0, 2.5, 3.0},  {TraceKind::Down, 2, 7.0, 3.5, 4.5},
      {TraceKind::Combine, 2, 1.0, 0.5, 0.5}, {TraceKind::Wait, 6, 10.2, 1.7, 4.0},
  };
  for (const Want& w : want) {
    const flashmoe::TraceKindStats& k = s.kinds[static_cast<int>(w.kind)];
    SCOPED_TRACE(flashmoe::to_string(w.kind));
    EXPECT_EQ(k.count, w.count);
    EXPECT_NEAR(k.total_us, w.total, 1e-9);
    EXPECT_NEAR(k.mean_us, w.mean, 1e-9);
    EXPECT_NEAR(k.max_us, w.max, 1e-9);
  }
}

TEST(TraceSummary, WhenEachKindRan) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  struct Want {
    TraceKind kind;
    double first, median_start, median_end, last;
  };
  const Want want[] = {
      {TraceKind::Router, 0.6, 0.6, 2.0, 2.1},   {TraceKind::Routing, 1.5, 1.5, 4.0, 4.0},
      {TraceKind::GateUp, 4.0, 4.0, 7.0, 8.0},   {TraceKind::Down, 4.1, 4.1, 8.6, 9.5},
      {TraceKind::Combine, 3.0, 3.0, 3.5, 11.5}, {TraceKind::Wait, 0.1, 2.0, 4.0, 6.0},
      {TraceKind::Gather, 0.0, 0.0, 0.0, 0.0},
  };
  for (const Want& w : want) {
    const flashmoe::TraceKindStats& k = s.kinds[static_cast<int>(w.kind)];
    SCOPED_TRACE(flashmoe::to_string(w.kind));
    EXPECT_NEAR(k.first_start_us, w.first, 1e-9);
    EXPECT_NEAR(k.median_start_us, w.median_start, 1e-9);
    EXPECT_NEAR(k.median_end_us, w.median_end, 1e-9);
    EXPECT_NEAR(k.last_end_us, w.last, 1e-9);
  }
}

TEST(TraceSummary, ExpertTilesWindowAndSms) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  EXPECT_NEAR(s.first_expert_tile_us, 4.0, 1e-9);
  EXPECT_NEAR(s.last_expert_tile_us, 9.5, 1e-9);
  EXPECT_NEAR(s.mean_expert_sms, 10000.0 / 5500.0, 1e-12);
  EXPECT_EQ(s.peak_expert_sms, 2);
}

TEST(TraceSummary, ExpertSmsCountSmsNotBlocks) {
  Trace t;
  t.blocks = {blk(0, 0, 0, 30000, 0), blk(1, 0, 0, 30000, 0), blk(2, 1, 0, 30000, 0)};
  t.events = {
      // Two blocks of SM 0 overlap: one SM.
      ev(0, 0, TraceKind::GateUp, 1, 0, 1000, 11000),
      ev(1, 0, TraceKind::Down, 1, 0, 6000, 16000),
      // SM 1 starts as SM 0 ends: never two at once.
      ev(2, 1, TraceKind::GateUp, 2, 0, 16000, 21000),
      // Neither routing nor waits count.
      ev(2, 1, TraceKind::Routing, -1, 0, 0, 1000),
      ev(2, 1, TraceKind::Wait, 2, 0, 21000, 29000),
  };
  const flashmoe::TraceSummary s = flashmoe::summarize(t);
  EXPECT_NEAR(s.first_expert_tile_us, 1.0, 1e-9);
  EXPECT_NEAR(s.last_expert_tile_us, 21.0, 1e-9);
  EXPECT_NEAR(s.mean_expert_sms, 1.0, 1e-12);  // (15000 + 5000) / 20000
  EXPECT_EQ(s.peak_expert_sms, 1);
}

// Tenths of the 12 us span (1.2 us each): down runs e10 from 4.1 us and e3 from 7.0 us,
// router e8 and e4 in the first two tenths, combine e12 in the third and e7 in the last.
TEST(TraceSummary, BlocksRunningEachKindPerTenthOfTheSpan) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  const double down[] = {0, 0, 0, 0.7 / 1.2, 1.0, 1.4 / 1.2, 2.0, 1.3 / 1.2, 0, 0};
  const double router[] = {1.0 / 1.2, 1.7 / 1.2, 0, 0, 0, 0, 0, 0, 0, 0};
  const double combine[] = {0, 0, 0.5 / 1.2, 0, 0, 0, 0, 0, 0, 0.5 / 1.2};
  for (int i = 0; i < flashmoe::TraceSummary::kTracePhases; ++i) {
    SCOPED_TRACE(i);
    EXPECT_NEAR(s.phase_blocks[static_cast<int>(TraceKind::Down)][i], down[i], 1e-12);
    EXPECT_NEAR(s.phase_blocks[static_cast<int>(TraceKind::Router)][i], router[i], 1e-12);
    EXPECT_NEAR(s.phase_blocks[static_cast<int>(TraceKind::Combine)][i], combine[i], 1e-12);
    EXPECT_EQ(s.phase_blocks[static_cast<int>(TraceKind::Gather)][i], 0.0);
  }
  // Every kind's blocks over the tenths add up to its total time.
  for (int k = 0; k < flashmoe::kTraceKinds; ++k) {
    double sum = 0;
    for (double v : s.phase_blocks[k]) sum += v * 1.2;
    EXPECT_NEAR(sum, s.kinds[k].total_us, 1e-9) << flashmoe::to_string(static_cast<TraceKind>(k));
  }
}

TEST(TraceSummary, SpanFirstTaskAndTail) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  EXPECT_NEAR(s.span_us, 12.0, 1e-9);
  EXPECT_NEAR(s.first_task_us, 0.6, 1e-9);  // e8, not the earlier wait e0
  EXPECT_NEAR(s.tail_us, 6.0, 1e-9);
  EXPECT_EQ(s.dropped, 5u);
}

TEST(TraceSummary, SmBusyIsTheUnionOfTaskIntervals) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  ASSERT_EQ(s.sm_busy.size(), 4u);  // max SM id 3, plus one
  EXPECT_NEAR(s.sm_busy[0], 9200.0 / 12000.0, 1e-12);
  EXPECT_NEAR(s.sm_busy[1], 0.5, 1e-12);
  EXPECT_EQ(s.sm_busy[2], 0.0);
  EXPECT_NEAR(s.sm_busy[3], 500.0 / 12000.0, 1e-12);
  EXPECT_NEAR(s.mean_sm_busy, 15700.0 / 36000.0, 1e-12);
}

TEST(TraceSummary, LongestWaitsLongestFirst) {
  const flashmoe::TraceSummary s = flashmoe::summarize(sample_trace());
  ASSERT_EQ(s.longest_waits.size(), 5u);
  // (block, start offset) of e5, e11, e9, e0, e13.
  const std::pair<std::uint32_t, std::uint64_t> want[] = {
      {2, 2000}, {3, 1000}, {1, 2100}, {0, 100}, {3, 3500}};
  for (std::size_t i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(s.longest_waits[i].kind, TraceKind::Wait);
    EXPECT_EQ(s.longest_waits[i].block, want[i].first);
    EXPECT_EQ(s.longest_waits[i].start_ns, kBase + want[i].second);
  }
}

TEST(TraceSummary, TextReportsKindsAndNumbers) {
  const std::string text = flashmoe::trace_summary_text(sample_trace());
  // Header.
  EXPECT_NE(text.find("decode"), std::string::npos) << text;
  EXPECT_NE(text.find("T = 16"), std::string::npos) << text;
  EXPECT_NE(text.find("12.000 us"), std::string::npos) << text;
  // One table row per kind: name, count, total, mean, max, then first start, median start,
  // median end, last end.
  const std::vector<std::vector<std::string>> rows = {
      {"router", "2", "2.700", "1.350", "1.500", "0.600", "0.600", "2.000", "2.100"},
      {"routing", "1", "2.500", "2.500", "2.500", "1.500", "1.500", "4.000", "4.000"},
      {"gate_up", "2", "5.000", "2.500", "3.000", "4.000", "4.000", "7.000", "8.000"},
      {"down", "2", "7.000", "3.500", "4.500", "4.100", "4.100", "8.600", "9.500"},
      {"combine", "2", "1.000", "0.500", "0.500", "3.000", "3.000", "3.500", "11.500"},
      {"wait", "6", "10.200", "1.700", "4.000", "0.100", "2.000", "4.000", "6.000"},
      {"gather", "0", "0.000", "0.000", "0.000", "0.000", "0.000", "0.000", "0.000"},
  };
  for (const auto& row : rows) {
    const std::string line = line_starting(text, "  " + row[0] + " ");
    ASSERT_FALSE(line.empty()) << row[0] << "\n" << text;
    std::istringstream fields(line);
    std::vector<std::string> got;
    for (std::string f; fields >> f;) got.push_back(f);
    EXPECT_EQ(got, row) << line;
  }
  EXPECT_NE(text.find("0.600 us"), std::string::npos) << text;  // first task
  EXPECT_NE(text.find("6.000 us"), std::string::npos) << text;  // tail
  EXPECT_NE(text.find("43.6 %"), std::string::npos) << text;    // mean SM busy
  const std::string expert = line_starting(text, "  expert tiles");
  EXPECT_NE(expert.find("4.000 us to 9.500 us, on 1.8 SMs on average, 2 at most (of 132)"),
            std::string::npos)
      << text;
  // Least busy first; SM 2 does not appear in the trace, so it is not listed.
  const std::string least = line_starting(text, "  least busy SMs");
  EXPECT_NE(least.find("SM 3 4.2 %, SM 1 50.0 %, SM 0 76.7 %"), std::string::npos) << least;
  // The longest wait with its block, SM, expert and start offset.
  EXPECT_NE(text.find("4.000 us  block 2"), std::string::npos) << text;
  EXPECT_NE(text.find("expert 12 m-tile 0"), std::string::npos) << text;
  EXPECT_NE(text.find("at +2.000 us"), std::string::npos) << text;
  EXPECT_NE(text.find("WARNING: 5 events dropped"), std::string::npos) << text;
  // The phase table: its header, and the down row after the stats table's (kinds that never ran
  // have no row there).
  const std::size_t phases = text.find(
      "blocks running each kind, mean over each tenth of the "
      "span (1.200 us)");
  ASSERT_NE(phases, std::string::npos) << text;
  const std::string down = line_starting(text.substr(phases), "  down ");
  std::istringstream fields(down);
  std::vector<std::string> got;
  for (std::string f; fields >> f;) got.push_back(f);
  const std::vector<std::string> want = {"down", "0.0", "0.0", "0.0", "0.6", "1.0",
                                         "1.2",  "2.0", "1.1", "0.0", "0.0"};
  EXPECT_EQ(got, want) << down;
  EXPECT_TRUE(line_starting(text.substr(phases), "  gather ").empty()) << text;
}

TEST(TraceSummary, NoWarningWithoutDrops) {
  Trace trace = sample_trace();
  for (TraceBlock& b : trace.blocks) b.dropped = 0;
  EXPECT_EQ(flashmoe::trace_summary_text(trace).find("WARNING"), std::string::npos);
}

TEST(TraceSummary, EmptyTrace) {
  const Trace trace;
  const flashmoe::TraceSummary s = flashmoe::summarize(trace);
  for (const flashmoe::TraceKindStats& k : s.kinds) {
    EXPECT_EQ(k.count, 0u);
    EXPECT_EQ(k.total_us, 0.0);
    EXPECT_EQ(k.mean_us, 0.0);
    EXPECT_EQ(k.max_us, 0.0);
    EXPECT_EQ(k.first_start_us, 0.0);
    EXPECT_EQ(k.last_end_us, 0.0);
  }
  EXPECT_EQ(s.span_us, 0.0);
  EXPECT_EQ(s.first_task_us, 0.0);
  EXPECT_EQ(s.tail_us, 0.0);
  EXPECT_EQ(s.mean_sm_busy, 0.0);
  EXPECT_EQ(s.first_expert_tile_us, 0.0);
  EXPECT_EQ(s.last_expert_tile_us, 0.0);
  EXPECT_EQ(s.mean_expert_sms, 0.0);
  EXPECT_EQ(s.peak_expert_sms, 0);
  EXPECT_TRUE(s.sm_busy.empty());
  EXPECT_TRUE(s.longest_waits.empty());
  EXPECT_EQ(s.dropped, 0u);
  const std::string text = flashmoe::trace_summary_text(trace);
  EXPECT_NE(text.find("no events"), std::string::npos) << text;
}

// ---------------------------------------------------------------------------------------------
// The validators
// ---------------------------------------------------------------------------------------------

TEST(TraceChecks, JsonAcceptsValidDocuments) {
  const std::string doc = R"( {"a":[1,-2.5e3,0.25,true,false,null,"x\u00e9\n\"\\\/"],"b":{}} )";
  JsonValue root;
  std::string error;
  ASSERT_TRUE(flashmoe_test::json_parse(doc, &root, &error)) << error;
  const JsonValue* a = root.get("a");
  ASSERT_TRUE(a && a->type == JsonValue::Type::Array);
  ASSERT_EQ(a->items.size(), 7u);
  EXPECT_EQ(a->items[1].number, -2500.0);
  EXPECT_EQ(a->items[2].number, 0.25);
  EXPECT_TRUE(a->items[3].boolean);
  EXPECT_EQ(a->items[5].type, JsonValue::Type::Null);
  EXPECT_EQ(a->items[6].string, "x\xc3\xa9\n\"\\/");
  EXPECT_TRUE(flashmoe_test::json_is_valid("[]", nullptr));
  EXPECT_TRUE(flashmoe_test::json_is_valid("\"\\ud83d\\ude00\"", nullptr));
}

TEST(TraceChecks, JsonRejectsBrokenDocuments) {
  const char* broken[] = {
      R"({"a":1)",      // missing brace
      R"({"a":[1,2})",  // bracket never closed
      R"(["\x"])",      // bad escape
      R"(["\u12G4"])",  // bad \u escape
      R"([1,])",        // trailing comma
      R"({"a" 1})",     // missing colon
      R"({a:1})",       // unquoted key
      R"(['a'])",       // single quotes
      R"([01])",        // leading zero
      R"([1.])",        // no digits after the point
      R"([tru])",       // bad literal
      "[\"a\nb\"]",     // raw newline in a string
      R"({} {})",       // two values
      "",               // nothing
  };
  for (const char* doc : broken) {
    std::string error;
    EXPECT_FALSE(flashmoe_test::json_is_valid(doc, &error)) << doc;
    EXPECT_FALSE(error.empty()) << doc;
  }
}

TEST(TraceChecks, ChromeXEventCount) {
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(
                R"({"traceEvents":[{"ph":"X"},{"ph":"M"},{"ph":"X"},{"ph":"i"}]})"),
            2);
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(R"({"traceEvents":[]})"), 0);
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(R"({"events":[]})"), -1);
  EXPECT_EQ(flashmoe_test::chrome_x_event_count(R"({"traceEvents":[{"ph":"X"})"), -1);
}

TEST(TraceChecks, XmlAcceptsWellFormedDocuments) {
  const std::string doc =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" a='1'>\n"
      "  <g><rect x=\"1\"/><rect x=\"2\"></rect></g>\n"
      "  <text>a &amp; b &lt; c &#181; &#xB5; 2 > 1</text><![CDATA[ <raw> & ]]>\n"
      "</svg>\n";
  std::string error;
  EXPECT_TRUE(flashmoe_test::xml_is_well_formed(doc, &error)) << error;
  EXPECT_TRUE(flashmoe_test::xml_is_well_formed("<a/>", &error)) << error;
}

TEST(TraceChecks, XmlRejectsBrokenDocuments) {
  const char* broken[] = {
      "<svg><g></svg>",            // unbalanced tag
      "<svg><g>",                  // unclosed
      "<a><b></a></b>",            // misnested
      "<a></a><b></b>",            // two roots
      "",                          // no root
      "text<a/>",                  // text before the root
      "<a x=1/>",                  // unquoted attribute
      "<a x=\"1\" x=\"2\"/>",      // duplicate attribute
      "<a x=\"1\"y=\"2\"/>",       // no space between attributes
      "<a x=\"<\"/>",              // '<' in an attribute
      "<a>1 < 2</a>",              // stray '<'
      "<a>R&D</a>",                // stray '&'
      "<a>&nbsp;</a>",             // undefined entity
      "<a>&#;</a>",                // empty character reference
      "<a><!-- never closed</a>",  // unterminated comment
      "<a x=\"1></a>",             // unterminated attribute value
  };
  for (const char* doc : broken) {
    std::string error;
    EXPECT_FALSE(flashmoe_test::xml_is_well_formed(doc, &error)) << doc;
    EXPECT_FALSE(error.empty()) << doc;
  }
}

}  // namespace
