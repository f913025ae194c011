// The scheduling trace recorded by a real forward: one event per task, per-block order,
// consistent summary, parseable JSON and SVG, results unchanged by tracing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"
#include "testing.hpp"
#include "tile_choice.hpp"
#include "trace_check.hpp"
#include "workspace.hpp"

namespace {

using flashmoe::Config;
using flashmoe::Layer;
using flashmoe::Trace;
using flashmoe::TraceKind;
using namespace flashmoe_test;

int ceil_div(int a, int b) { return (a + b - 1) / b; }

class TraceGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHMOE_NEED_GPU();
    seed_ = fresh_seed();
    rng_.seed(seed_);
    create(512, 200, 40, 4);
  }

  // A fresh model (random weights) and layer of this shape, max_tokens 600.
  void create(int hidden, int inter, int experts, int top_k) {
    Config c;
    c.hidden = hidden;
    c.intermediate = inter;
    c.experts = experts;
    c.top_k = top_k;
    c.max_tokens = 600;
    model_ = make_model(c, rng_);
    layer_ = Layer();
    ASSERT_TRUE(Layer::create(c, model_.device_weights(), layer_).ok());
    flashmoe::testing::set_table_free(layer_, true);  // its launches are traced too
  }

  // Forward on fresh x; returns y and fills ids.
  std::vector<std::uint16_t> forward(int T, const std::vector<std::uint16_t>& x,
                                     std::vector<std::int32_t>& ids) {
    const Config& c = model_.config;
    DeviceBuffer dx = upload(x), dy(x.size() * 2), d_ids(static_cast<std::size_t>(T) * c.top_k * 4);
    flashmoe::ForwardOptions o;
    o.out_topk_ids = d_ids.get<std::int32_t>();
    EXPECT_TRUE(flashmoe::forward(layer_, dx.get(), dy.get(), T, nullptr, o).ok());
    EXPECT_TRUE(layer_.device_status(nullptr).ok());
    ids = download<std::int32_t>(d_ids.get(), static_cast<std::size_t>(T) * c.top_k);
    return download<std::uint16_t>(dy.get(), x.size());
  }

  // One forward of T tokens with tracing off and on: the same y, and a trace with one event
  // per task of the launch, in order per block, that every writer renders.
  void check_traced_forward(int T) {
    const Config& c = model_.config;
    const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, c.dtype, rng_);
    std::vector<std::int32_t> ids_off, ids;
    ASSERT_TRUE(layer_.set_tracing(0).ok());
    const auto y_off = forward(T, x, ids_off);
    ASSERT_TRUE(layer_.set_tracing(1 << 14).ok());
    ASSERT_TRUE(layer_.tracing());
    const auto y_on = forward(T, x, ids);
    EXPECT_EQ(y_on, y_off) << "tracing must not change results";
    Trace trace;
    ASSERT_TRUE(layer_.read_trace(nullptr, trace).ok());
    ASSERT_EQ(trace.num_tokens, T);
    ASSERT_EQ(static_cast<int>(trace.blocks.size()), trace.grid_blocks);

    // Expected task counts from the routing that ran.
    std::map<int, int> per_expert;
    for (int e : ids) ++per_expert[e];
    int mtiles = 0;
    for (const auto& [e, n] : per_expert) mtiles += ceil_div(n, trace.tile_m);
    // Router tasks: decode kernels take chunks of kRouterTokens x kRouterExperts whole rows;
    // the prefill kernel, tiles of its down shape over one or more slices of H.
    const bool decode = trace.variant == "decode";
    // Decode forwards run on 16-, 32- or 48-row m-tiles (decode_variant).
    ASSERT_EQ(decode, !flashmoe::detail::runs_prefill_kernel(T, c.top_k, c.experts));
    if (decode) {
      const int variant = flashmoe::detail::decode_variant(
          T,
          flashmoe::detail::thin_decode_max_tokens(c.max_tokens, c.top_k, c.experts, c.hidden,
                                                   c.intermediate),
          flashmoe::detail::tall_decode_min_tokens(c.max_tokens, c.top_k, c.experts));
      const int rows[] = {flashmoe::detail::kThinDecodeTileM, flashmoe::detail::kDecodeTileM,
                          flashmoe::detail::kTallDecodeTileM};
      EXPECT_EQ(trace.tile_m, rows[variant]);
    }
    // A router task: kRouterTokens x kRouterExperts in decode, a router tile in prefill (the
    // prefill kernel's down tile shape, which the warp-specialised kernel reuses).
    EXPECT_EQ(trace.router_tile_m, decode ? flashmoe::detail::kRouterTokens : 64);
    EXPECT_EQ(trace.router_tile_n, decode ? flashmoe::detail::kRouterExperts : 64);
    const int chunks = ceil_div(T, trace.router_tile_m);
    const int eslices = ceil_div(c.experts, trace.router_tile_n);
    if (decode) {
      EXPECT_EQ(trace.router_k_slices, 1);
    } else {
      EXPECT_GE(trace.router_k_slices, 1);
      EXPECT_LE(trace.router_k_slices, flashmoe::detail::kRouterMaxKSlices);
      // The split the host planned (64: the K step of the prefill down tile).
      EXPECT_EQ(trace.router_k_slices,
                flashmoe::detail::router_split(T, c.hidden, c.experts, false, true,
                                               trace.router_tile_m, trace.router_tile_n, 64)
                    .kslices);
    }
    const int ng = ceil_div(c.intermediate, trace.tile_n_gateup);
    const int nd = ceil_div(c.hidden, trace.tile_n_down);
    std::map<TraceKind, int> count;
    std::set<int> combine_ntiles;
    for (const auto& e : trace.events) {
      ++count[e.kind];
      if (e.kind == TraceKind::Combine) combine_ntiles.insert(e.tile);
    }
    EXPECT_EQ(trace.router_tasks, chunks * eslices * trace.router_k_slices);
    EXPECT_EQ(count[TraceKind::Router], trace.router_tasks);
    // The top-k of each chunk (decode) or select ticket (prefill, each with its row-map
    // ticket), and the tile table, which table-free decode launches do not build.
    const int selects =
        decode ? chunks
               : flashmoe::detail::router_split(T, c.hidden, c.experts, false, true,
                                                trace.router_tile_m, trace.router_tile_n, 64)
                     .selects;
    const bool table_free =
        decode && flashmoe::detail::table_free_tiles(T, c.top_k, trace.tile_m);
    EXPECT_EQ(count[TraceKind::Routing], (decode ? selects : 2 * selects) + (table_free ? 0 : 1));
    EXPECT_EQ(count[TraceKind::GateUp], mtiles * ng);
    // The warp-specialised kernel first copies each m-tile's token rows into expert order, in
    // gather_parts jobs (1 to kMaxGatherParts) an m-tile.
    if (trace.variant == "prefill_ws") {
      EXPECT_GE(trace.gather_parts, 1);
      EXPECT_LE(trace.gather_parts, flashmoe::detail::kMaxGatherParts);
    } else {
      EXPECT_EQ(trace.gather_parts, 0);
    }
    EXPECT_EQ(count[TraceKind::Gather], mtiles * trace.gather_parts);
    // Down tiles split I only when one would stream more than kDownSliceBytes of weights.
    EXPECT_GE(trace.down_k_slices, 1);
    EXPECT_LE(trace.down_k_slices,
              flashmoe::detail::down_slices_allowed(static_cast<std::int64_t>(T) * c.top_k,
                                                    c.intermediate, trace.tile_n_down));
    EXPECT_EQ(count[TraceKind::Down], mtiles * nd * trace.down_k_slices);
    EXPECT_LE(count[TraceKind::Combine], count[TraceKind::Down]);
    EXPECT_EQ(static_cast<int>(combine_ntiles.size()), nd) << "every column slice combined";
    // Each gate/up and down tile exactly once.
    std::set<std::pair<int, int>> seen;
    for (const auto& e : trace.events) {
      if (e.kind == TraceKind::GateUp || e.kind == TraceKind::Down) {
        EXPECT_TRUE(seen.insert({static_cast<int>(e.kind), e.tile}).second) << "tile " << e.tile;
      }
    }

    // Per block: no overlap, times increase, within entry and exit; nothing dropped.
    std::map<std::uint32_t, std::vector<flashmoe::TraceEvent>> by_block;
    for (const auto& e : trace.events) by_block[e.block].push_back(e);
    for (const auto& b : trace.blocks) {
      EXPECT_EQ(b.dropped, 0u);
      EXPECT_LE(b.entry_ns, b.exit_ns);
      std::uint64_t last_end = b.entry_ns;
      for (const auto& e : by_block[b.block]) {
        EXPECT_EQ(e.sm, b.sm) << "a block stays on its SM";
        EXPECT_LE(last_end, e.start_ns) << "block " << b.block << " events overlap";
        EXPECT_LE(e.start_ns, e.end_ns);
        last_end = e.end_ns;
      }
      EXPECT_LE(last_end, b.exit_ns);
    }

    // The summary adds up.
    const flashmoe::TraceSummary s = flashmoe::summarize(trace);
    std::uint64_t n = 0;
    double total = 0, direct = 0;
    for (int k = 0; k < flashmoe::kTraceKinds; ++k) {
      n += s.kinds[k].count;
      total += s.kinds[k].total_us;
    }
    for (const auto& e : trace.events) direct += (e.end_ns - e.start_ns) * 1e-3;
    EXPECT_EQ(n, trace.events.size());
    EXPECT_NEAR(total, direct, 1e-6 * std::max(1.0, direct));
    EXPECT_GT(s.span_us, 0.0);
    EXPECT_GE(s.mean_sm_busy, 0.0);
    EXPECT_LE(s.mean_sm_busy, 1.0 + 1e-9);
    EXPECT_LE(s.first_task_us, s.span_us);
    EXPECT_LE(s.tail_us, s.span_us);

    std::string error;
    const std::string json = flashmoe::trace_to_chrome_json(trace);
    EXPECT_TRUE(flashmoe_test::json_is_valid(json, &error)) << error;
    EXPECT_EQ(flashmoe_test::chrome_x_event_count(json), static_cast<int>(trace.events.size()));
    EXPECT_TRUE(flashmoe_test::xml_is_well_formed(flashmoe::trace_to_svg(trace), &error)) << error;
    EXPECT_NE(flashmoe::trace_summary_text(trace).find("gate_up"), std::string::npos);
  }

  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  Model model_;
  Layer layer_;
};

TEST_F(TraceGpu, OneEventPerTaskInOrderAndWritersAgree) {
  SCOPED_TRACE(seed_);
  // Decode on 16-row m-tiles (1, 5: no tile table, 37), 32-row (200: 20 rows per expert) and
  // 48-row (276: 27.6), then 310 (31 rows: the warp-specialised engine where the device has it,
  // else 48-row decode) and prefill (600).
  for (int T : {1, 5, 37, 200, 276, 310, 600}) {
    SCOPED_TRACE(::testing::Message() << "T = " << T);
    check_traced_forward(T);
    if (HasFatalFailure()) return;
  }
}

TEST_F(TraceGpu, LongDownTilesRunAsKSlices) {
  // I = 16456: every down tile streams more than kDownSliceBytes of weights, in both
  // kernels; the last slice ends in a partial pipeline step.
  SCOPED_TRACE(seed_);
  create(64, 16456, 4, 2);
  if (HasFatalFailure()) return;
  for (int T : {1, 5, 300}) {
    SCOPED_TRACE(::testing::Message() << "T = " << T);
    check_traced_forward(T);
    if (HasFatalFailure()) return;
    Trace trace;
    ASSERT_TRUE(layer_.read_trace(nullptr, trace).ok());
    EXPECT_GT(trace.down_k_slices, 1);
  }
}

TEST_F(TraceGpu, OverflowIsCountedNeverWrittenPast) {
  SCOPED_TRACE(seed_);
  const Config& c = model_.config;
  ASSERT_TRUE(layer_.set_tracing(2).ok());
  const int T = 600;
  const auto x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, c.dtype, rng_);
  std::vector<std::int32_t> ids;
  forward(T, x, ids);
  Trace trace;
  ASSERT_TRUE(layer_.read_trace(nullptr, trace).ok());
  std::map<std::uint32_t, int> per_block;
  for (const auto& e : trace.events) ++per_block[e.block];
  for (const auto& [b, n] : per_block) EXPECT_LE(n, 2);
  EXPECT_GT(flashmoe::summarize(trace).dropped, 0u);
}

TEST_F(TraceGpu, ReadWithoutTracingIsAnError) {
  Trace trace;
  EXPECT_EQ(layer_.read_trace(nullptr, trace).code(), flashmoe::StatusCode::InvalidArgument);
  EXPECT_EQ(layer_.set_tracing(-1).code(), flashmoe::StatusCode::InvalidArgument);
  EXPECT_FALSE(layer_.tracing());
}

}  // namespace
