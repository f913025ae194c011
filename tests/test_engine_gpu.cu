// What an inference engine does with a Layer beyond one forward: one scratch shared by many
// Layers, a smaller scratch with long forwards split into launches (tokens_per_launch), weights
// replaced in place, padded batches with a device token count (in CUDA graphs too), non-finite
// tokens, overlapping forwards caught, errors collected in a device word, a CUDA error left
// by the caller not taken for ours, and programmatic dependent launches.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "forward_check.hpp"
#include "test_util.hpp"
#include "testing.hpp"

namespace {

using flashmoe::StatusCode;
using namespace flashmoe_test;

class Engine : public ::testing::Test {
 protected:
  void SetUp() override {
    FLASHMOE_NEED_GPU();
    seed_ = fresh_seed();
    rng_.seed(seed_);
  }
  Config config(int hidden, int inter, int experts, int top_k, int max_tokens,
                DType dt = DType::BF16) {
    Config c;
    c.hidden = hidden;
    c.intermediate = inter;
    c.experts = experts;
    c.top_k = top_k;
    c.dtype = dt;
    c.max_tokens = max_tokens;
    return c;
  }
  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// Layers of different shapes run in turn in one scratch of the largest size, with decode and
// prefill forwards interleaved: each is correct, and bitwise equal to the same Layer with a
// scratch of its own (the scratch holds nothing from one forward to the next).
TEST_F(Engine, OneScratchServesLayersOfDifferentShapes) {
  SCOPED_TRACE(seed_);
  const Model models[] = {
      make_model(config(256, 136, 16, 4, 1024), rng_),
      make_model(config(512, 64, 64, 8, 512, DType::FP16), rng_),
      make_model(config(128, 200, 8, 2, 2048), rng_),
  };
  std::size_t need = 0;
  for (const Model& m : models) need = std::max(need, flashmoe::scratch_bytes(m.config));
  DeviceBuffer scratch(need);
  // Garbage everywhere but the owner line, which create zeroes: nothing may depend on it.
  CUDA_OK(cudaMemset(scratch.get(), 0xA5, need));
  std::vector<Layer> shared(3), own(3);
  for (int i = 0; i < 3; ++i) {
    flashmoe::LayerOptions o;
    o.scratch = scratch.get();
    o.scratch_bytes = need;
    ASSERT_TRUE(Layer::create(models[i].config, models[i].device_weights(), shared[i], o).ok());
    ASSERT_TRUE(Layer::create(models[i].config, models[i].device_weights(), own[i]).ok());
  }
  StreamGuard stream;
  const std::pair<int, int> order[] = {{0, 5}, {1, 300}, {2, 1},  {0, 700}, {2, 2048},
                                       {1, 1}, {0, 64},  {2, 37}, {1, 512}, {0, 1}};
  for (const auto& [i, T] : order) {
    SCOPED_TRACE(::testing::Message() << "layer " << i << " T " << T);
    ForwardRun run = make_run(models[i].config, T, rng_);
    ForwardRun alone = run;
    ASSERT_TRUE(run_forward(shared[i], run, stream.get()));
    ASSERT_TRUE(run_forward(own[i], alone, stream.get()));
    check_output(models[i], run, sample_tokens(T, 12, rng_));
    EXPECT_EQ(run.y, alone.y) << "shared scratch changed the result";
  }
}

TEST_F(Engine, SetWeightsThenForwardUsesTheNewWeights) {
  SCOPED_TRACE(seed_);
  const Config c = config(256, 136, 16, 4, 1024);
  const Model a = make_model(c, rng_), b = make_model(c, rng_);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, a.device_weights(), layer).ok());
  StreamGuard stream;
  for (int T : {3, 600}) {  // decode and prefill kernels: every variant's maps are re-encoded
    ForwardRun run = make_run(c, T, rng_);
    ASSERT_TRUE(run_forward(layer, run, stream.get()));
    check_output(a, run, sample_tokens(T, 16, rng_));
  }
  ASSERT_TRUE(layer.set_weights(b.device_weights()).ok());
  EXPECT_EQ(layer.weights().w13, b.device_weights().w13);
  for (int T : {3, 600}) {
    ForwardRun run = make_run(c, T, rng_);
    ASSERT_TRUE(run_forward(layer, run, stream.get()));
    check_routing(b, run, sample_tokens(T, 16, rng_));
    check_output(b, run, sample_tokens(T, 16, rng_));
  }
}

// Padded batches: tokens past the device count are not routed and leave their rows of y and
// of the routing outputs bitwise as they were; the live ones are correct. Decode and prefill
// capacities, counts from 0 to past the capacity (clamped).
TEST_F(Engine, DeviceTokenCountSkipsPaddingAndLeavesItsRowsUntouched) {
  SCOPED_TRACE(seed_);
  const Model m = make_model(config(256, 136, 16, 4, 1024), rng_);
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  StreamGuard stream;
  for (int capacity : {8, 64, 700}) {
    for (int n : {0, 1, capacity / 2 + 1, capacity, capacity + 5}) {
      SCOPED_TRACE(::testing::Message() << "capacity " << capacity << " n " << n);
      const int live = std::min(n, capacity);
      ForwardRun run = make_run(c, capacity, rng_);
      const PaddedBatch batch(run, n, live, c);
      ASSERT_TRUE(flashmoe::forward(layer, batch.x.get(), batch.y.get(), capacity, stream.get(),
                                    batch.options)
                      .ok());
      ASSERT_TRUE(layer.device_status(stream.get()).ok());
      const ForwardRun head = batch.live_rows(run, c);
      if (live > 0) {
        check_routing(m, head, sample_tokens(live, 16, rng_));
        check_output(m, head, sample_tokens(live, 16, rng_));
      }
    }
  }
}

// LayerOptions::tokens_per_launch: a scratch for that many tokens, and longer forwards as one
// launch per chunk of rows. Chunks of the decode kernels (7 tokens) and of the prefill kernel
// with a decode remainder (300 + 300 + 100 at T = 700); each chunk's rows of y and of the
// routing outputs are its own (the token right after every chunk boundary is checked); a
// caller scratch of the chunked size; results stable from run to run and across grid sizes.
TEST_F(Engine, TokensPerLaunchRunsLongForwardsAsChunksOfLaunches) {
  SCOPED_TRACE(seed_);
  const Model m = make_model(config(256, 136, 16, 4, 1024), rng_);
  const Config& c = m.config;
  StreamGuard stream;
  for (int per_launch : {7, 300}) {
    SCOPED_TRACE(::testing::Message() << "tokens_per_launch " << per_launch);
    const std::size_t need = flashmoe::scratch_bytes(c, per_launch);
    ASSERT_LT(need, flashmoe::scratch_bytes(c));
    DeviceBuffer scratch(need);
    CUDA_OK(cudaMemset(scratch.get(), 0xA5, need));
    flashmoe::LayerOptions o;
    o.tokens_per_launch = per_launch;
    o.scratch = scratch.get();
    o.scratch_bytes = need - 1;
    Layer layer, small_grid;
    const flashmoe::Status too_small = Layer::create(c, m.device_weights(), layer, o);
    EXPECT_EQ(too_small.code(), StatusCode::InvalidArgument);
    EXPECT_NE(too_small.message().find("options.scratch_bytes"), std::string::npos);
    o.scratch_bytes = need;
    ASSERT_TRUE(Layer::create(c, m.device_weights(), layer, o).ok());
    EXPECT_EQ(layer.tokens_per_launch(), per_launch);
    EXPECT_EQ(layer.scratch_bytes(), need);
    flashmoe::LayerOptions few = {};
    few.tokens_per_launch = per_launch;
    few.max_blocks = 5;
    ASSERT_TRUE(Layer::create(c, m.device_weights(), small_grid, few).ok());
    for (int T : {per_launch, 2 * per_launch + 1, 700}) {
      SCOPED_TRACE(::testing::Message() << "T " << T);
      ForwardRun run = make_run(c, T, rng_);
      ForwardRun again = run, other_grid = run;
      ASSERT_TRUE(run_forward(layer, run, stream.get()));
      std::vector<int> check = sample_tokens(T, 12, rng_);
      for (int b = per_launch; b < T && check.size() < 40; b += per_launch) check.push_back(b);
      std::sort(check.begin(), check.end());
      check.erase(std::unique(check.begin(), check.end()), check.end());
      check_routing(m, run, check);
      check_output(m, run, check);
      ASSERT_TRUE(run_forward(layer, again, stream.get()));
      ASSERT_TRUE(run_forward(small_grid, other_grid, stream.get()));
      EXPECT_EQ(run.y, again.y) << "not bitwise identical from run to run";
      EXPECT_EQ(run.y, other_grid.y) << "not bitwise identical for another grid size";
      EXPECT_EQ(run.ids, other_grid.ids);
    }
  }
}

// Chunked forwards with the routing given by the caller, beta, and a device token count that
// ends inside a chunk (the later chunks route nothing, their rows stay as they were); a CUDA
// graph of one forward holds one kernel node per chunk.
TEST_F(Engine, TokensPerLaunchKeepsCallerRoutingBetaAndPaddedBatches) {
  SCOPED_TRACE(seed_);
  const Model m = make_model(config(256, 136, 16, 4, 1024), rng_);
  const Config& c = m.config;
  flashmoe::LayerOptions lo;
  lo.tokens_per_launch = 6;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer, lo).ok());
  StreamGuard stream;
  const int T = 20;
  const std::size_t cells = static_cast<std::size_t>(T) * c.hidden;

  // Routing from a plain chunked forward, given back by the caller, with beta = 0.5.
  ForwardRun routed = make_run(c, T, rng_);
  ASSERT_TRUE(run_forward(layer, routed, stream.get()));
  ForwardRun run = make_run(c, T, rng_);
  run.x = routed.x;
  run.y_in = random_values(cells, 1.0f, c.dtype, rng_);
  DeviceBuffer ids = upload(routed.ids), wts = upload(routed.weights);
  ForwardOptions o;
  o.topk_ids = ids.get<std::int32_t>();
  o.topk_weights = wts.get<float>();
  o.beta = 0.5f;
  ASSERT_TRUE(run_forward(layer, run, stream.get(), o));
  EXPECT_EQ(run.ids, routed.ids);
  check_output(m, run, sample_tokens(T, T, rng_), 0.5);

  // A device count of 9: chunk 0 whole, chunk 1 three rows, chunks 2 and 3 nothing.
  ForwardRun padded = make_run(c, T, rng_);
  const int live = 9;
  const PaddedBatch batch(padded, live, live, c);
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flashmoe::Status s =
      flashmoe::forward(layer, batch.x.get(), batch.y.get(), T, stream.get(), batch.options);
  CUDA_OK(cudaStreamEndCapture(stream.get(), &graph));
  ASSERT_TRUE(s.ok()) << s.to_string();
  std::size_t nodes = 0;
  CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
  EXPECT_EQ(nodes, 4u);  // ceil(20 / 6)
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, stream.get()));
  ASSERT_TRUE(layer.device_status(stream.get()).ok());
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  const ForwardRun head = batch.live_rows(padded, c);
  check_routing(m, head, sample_tokens(live, live, rng_));
  check_output(m, head, sample_tokens(live, live, rng_));
}

// The engine's pattern: one graph captured at the capacity, replayed with a different count
// each time (written by a copy in the same stream).
TEST_F(Engine, PaddedBatchGraphReplaysWithChangingCounts) {
  SCOPED_TRACE(seed_);
  const Model m = make_model(config(256, 136, 16, 4, 256), rng_);
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  const int capacity = 32;
  const std::size_t cells = static_cast<std::size_t>(capacity) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(capacity) * c.top_k;
  DeviceBuffer dx(cells * 2), dy(cells * 2), ids(pairs * 4), wts(pairs * 4), count(4);
  StreamGuard stream;
  ForwardOptions o;
  o.device_num_tokens = count.get<std::int32_t>();
  o.out_topk_ids = ids.get<std::int32_t>();
  o.out_topk_weights = wts.get<float>();
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flashmoe::Status s =
      flashmoe::forward(layer, dx.get(), dy.get(), capacity, stream.get(), o);
  CUDA_OK(cudaStreamEndCapture(stream.get(), &graph));
  ASSERT_TRUE(s.ok()) << s.to_string();
  std::size_t nodes = 0;
  CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
  ASSERT_EQ(nodes, 1u);
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int n : {1, 32, 7, 0, 19, 2, 32, 1}) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    ForwardRun run = make_run(c, capacity, rng_);
    run.y_in.assign(cells, 0x1234);
    CUDA_OK(
        cudaMemcpyAsync(dx.get(), run.x.data(), cells * 2, cudaMemcpyHostToDevice, stream.get()));
    CUDA_OK(cudaMemcpyAsync(dy.get(), run.y_in.data(), cells * 2, cudaMemcpyHostToDevice,
                            stream.get()));
    CUDA_OK(cudaMemcpyAsync(count.get(), &n, 4, cudaMemcpyHostToDevice, stream.get()));
    // Routing outputs poisoned (all bits set): the padding pairs must keep it.
    CUDA_OK(cudaMemsetAsync(ids.get(), 0xff, pairs * 4, stream.get()));
    CUDA_OK(cudaMemsetAsync(wts.get(), 0xff, pairs * 4, stream.get()));
    CUDA_OK(cudaGraphLaunch(exec, stream.get()));
    ASSERT_TRUE(layer.device_status(stream.get()).ok());
    run.y = download<std::uint16_t>(dy.get(), cells);
    run.ids = download<std::int32_t>(ids.get(), pairs);
    run.weights = download<float>(wts.get(), pairs);
    for (std::size_t i = static_cast<std::size_t>(n) * c.hidden; i < cells; ++i) {
      ASSERT_EQ(run.y[i], 0x1234) << "padding row " << i / c.hidden << " was written";
    }
    for (std::size_t q = static_cast<std::size_t>(n) * c.top_k; q < pairs; ++q) {
      std::uint32_t weight_bits = 0;
      std::memcpy(&weight_bits, &run.weights[q], 4);
      ASSERT_TRUE(run.ids[q] == -1 && weight_bits == 0xffffffffu)
          << "padding pair " << q << " was routed";
    }
    if (n > 0) check_output(m, first_rows(run, n, c), sample_tokens(n, n, rng_));
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
}

// A token with NaN or infinite entries: its experts are real ids (the lowest ones: every
// choice score is treated as the lowest possible), its own y row may be NaN, and every other
// token's row is bitwise what it is when the bad tokens are finite (rows are computed
// independently and combined in a fixed order). No hang, no device error.
TEST_F(Engine, NonFiniteTokensChangeOnlyTheirOwnRows) {
  SCOPED_TRACE(seed_);
  const Model m = make_model(config(256, 136, 16, 4, 1024), rng_);
  const Config& c = m.config;
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  StreamGuard stream;
  const std::uint16_t nan_bits = 0x7FC0, inf_bits = 0x7F80;  // bf16
  for (int T : {6, 40, 700}) {
    SCOPED_TRACE(::testing::Message() << "T " << T);
    const std::vector<int> bad = {1, T / 2, T - 1};
    ForwardRun clean = make_run(c, T, rng_);
    ForwardRun dirty = clean;
    for (std::size_t j = 0; j < bad.size(); ++j) {
      const std::size_t row = static_cast<std::size_t>(bad[j]) * c.hidden;
      if (j == 0) {
        for (int h = 0; h < c.hidden; ++h) dirty.x[row + h] = nan_bits;
      } else {
        dirty.x[row + 3 * j] = j == 1 ? inf_bits : static_cast<std::uint16_t>(inf_bits | 0x8000);
      }
    }
    ASSERT_TRUE(run_forward(layer, clean, stream.get()));
    ASSERT_TRUE(run_forward(layer, dirty, stream.get()));
    for (int id : dirty.ids) ASSERT_TRUE(id >= 0 && id < c.experts) << "expert id " << id;
    for (int t = 0; t < T; ++t) {
      if (std::find(bad.begin(), bad.end(), t) != bad.end()) continue;
      const auto row = [&](const ForwardRun& r) {
        return std::vector<std::uint16_t>(
            r.y.begin() + static_cast<std::ptrdiff_t>(t) * c.hidden,
            r.y.begin() + static_cast<std::ptrdiff_t>(t + 1) * c.hidden);
      };
      ASSERT_EQ(row(dirty), row(clean)) << "token " << t << " changed by another's NaN";
    }
    check_output(m, clean, sample_tokens(T, 8, rng_));
  }
}

// Two forwards that overlap on one scratch: the one that finds it owned writes nothing and
// reports WorkspaceBusy (in its device status word and through device_status); the owner's
// result is not disturbed. The overlap is made certain by a test fault that holds the first
// forward until its watchdog fires; which of the two owns the scratch is not: the streams are
// independent, so the GPU may start the later launch first (it did under ctest -j 4, with other
// processes' kernels time-sliced in). Afterwards the scratch serves correct forwards again.
// Once for two forwards of one Layer, once for two Layers sharing a scratch.
TEST_F(Engine, OverlappingForwardsAreCaughtAndWriteNothing) {
  SCOPED_TRACE(seed_);
  const Config c = config(256, 136, 16, 4, 1024);
  const Model m = make_model(c, rng_);
  DeviceBuffer scratch(flashmoe::scratch_bytes(c));
  flashmoe::LayerOptions shared;
  shared.watchdog_ms = 300;
  shared.scratch = scratch.get();
  shared.scratch_bytes = scratch.bytes();
  flashmoe::LayerOptions own;
  own.watchdog_ms = 300;
  Layer one, first, second;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), one, own).ok());
  ASSERT_TRUE(Layer::create(c, m.device_weights(), first, shared).ok());
  ASSERT_TRUE(Layer::create(c, m.device_weights(), second, shared).ok());
  StreamGuard sa, sb;
  struct Pair {
    Layer* held;
    Layer* late;
  };
  for (const Pair& pair : {Pair{&one, &one}, Pair{&first, &second}}) {
    SCOPED_TRACE(pair.held == pair.late ? "one Layer" : "two Layers, one scratch");
    const int T = 64;
    ForwardRun a = make_run(c, T, rng_), b = make_run(c, T, rng_);
    a.y_in.assign(a.y_in.size(), 0x1234);
    b.y_in.assign(b.y_in.size(), 0x1234);
    DeviceBuffer ax = upload(a.x), ay = upload(a.y_in), bx = upload(b.x), by = upload(b.y_in);
    DeviceBuffer words = upload(std::vector<std::int32_t>{0, 0});
    ForwardOptions oa, ob;
    oa.device_status = words.get<std::int32_t>();
    ob.device_status = words.get<std::int32_t>() + 1;
    flashmoe::testing::inject_fault(*pair.held, flashmoe::testing::Fault::DropMTileSignal);
    ASSERT_TRUE(flashmoe::forward(*pair.held, ax.get(), ay.get(), T, sa.get(), oa).ok());
    flashmoe::testing::inject_fault(*pair.held, flashmoe::testing::Fault::None);
    ASSERT_TRUE(flashmoe::forward(*pair.late, bx.get(), by.get(), T, sb.get(), ob).ok());
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<std::int32_t> codes = download<std::int32_t>(words.get(), 2);
    // The held forward owned the scratch: it times out, the late one is refused. Else the late
    // one ran to its end while the held one was refused.
    const bool held_owned = codes[0] == static_cast<int>(StatusCode::DeviceTimeout);
    SCOPED_TRACE(held_owned ? "the held forward owned the scratch" : "the late one owned it");
    EXPECT_EQ(codes[held_owned ? 1 : 0], static_cast<int>(StatusCode::WorkspaceBusy));
    if (!held_owned) EXPECT_EQ(codes[1], static_cast<int>(StatusCode::Ok));
    const ForwardRun& refused_run = held_owned ? b : a;
    const void* refused_y = held_owned ? by.get() : ay.get();
    EXPECT_EQ(download<std::uint16_t>(refused_y, refused_run.y_in.size()), refused_run.y_in)
        << "refused forward wrote y";
    // The refused forward's Layer reports it (and frees the scratch); the owner's its own
    // outcome, if it is another Layer (one Layer keeps the first error it recorded).
    Layer* refused = held_owned ? pair.late : pair.held;
    Layer* owner = held_owned ? pair.held : pair.late;
    cudaStream_t refused_stream = held_owned ? sb.get() : sa.get();
    cudaStream_t owner_stream = held_owned ? sa.get() : sb.get();
    const flashmoe::Status busy = refused->device_status(refused_stream);
    EXPECT_EQ(busy.code(), StatusCode::WorkspaceBusy) << busy.to_string();
    EXPECT_NE(busy.message().find("overlapped"), std::string::npos) << busy.message();
    if (owner != refused) {
      EXPECT_EQ(owner->device_status(owner_stream).code(),
                held_owned ? StatusCode::DeviceTimeout : StatusCode::Ok);
    }
    EXPECT_TRUE(owner->device_status(owner_stream).ok());
    for (Layer* layer : {pair.held, pair.late}) {
      ForwardRun good = make_run(c, 300, rng_);
      ASSERT_TRUE(run_forward(*layer, good, sa.get()));
      check_output(m, good, sample_tokens(300, 16, rng_));
    }
  }
}

// Forwards one after the other on two streams joined by events are not an overlap.
TEST_F(Engine, EventOrderedForwardsOnTwoStreamsShareAScratch) {
  SCOPED_TRACE(seed_);
  const Config c = config(256, 136, 16, 4, 1024);
  const Model m = make_model(c, rng_);
  DeviceBuffer scratch(flashmoe::scratch_bytes(c));
  flashmoe::LayerOptions o;
  o.scratch = scratch.get();
  o.scratch_bytes = scratch.bytes();
  Layer a, b;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), a, o).ok());
  ASSERT_TRUE(Layer::create(c, m.device_weights(), b, o).ok());
  StreamGuard sa, sb;
  cudaEvent_t done_a = nullptr, done_b = nullptr;
  CUDA_OK(cudaEventCreateWithFlags(&done_a, cudaEventDisableTiming));
  CUDA_OK(cudaEventCreateWithFlags(&done_b, cudaEventDisableTiming));
  std::vector<ForwardRun> runs;
  std::vector<DeviceBuffer> xs, ys;
  for (int i = 0; i < 8; ++i) {
    runs.push_back(make_run(c, i % 2 ? 500 : 9, rng_));
    xs.push_back(upload(runs.back().x));
    ys.push_back(upload(runs.back().y_in));
  }
  for (int i = 0; i < 8; ++i) {
    const bool on_a = i % 2 == 0;
    cudaStream_t s = on_a ? sa.get() : sb.get();
    if (i > 0) CUDA_OK(cudaStreamWaitEvent(s, on_a ? done_b : done_a, 0));
    ASSERT_TRUE(flashmoe::forward(on_a ? a : b, xs[i].get(), ys[i].get(), runs[i].tokens, s,
                                  ForwardOptions{})
                    .ok());
    CUDA_OK(cudaEventRecord(on_a ? done_a : done_b, s));
  }
  ASSERT_TRUE(a.device_status(sa.get()).ok());
  ASSERT_TRUE(b.device_status(sb.get()).ok());
  for (int i = 0; i < 8; ++i) {
    runs[i].y = download<std::uint16_t>(ys[i].get(), runs[i].x.size());
    // check_output needs the routing used: take the reference's (no near-ties at this scale
    // are likely, and check_output compares with the routing it is given).
    const int T = runs[i].tokens;
    runs[i].ids.resize(static_cast<std::size_t>(T) * c.top_k);
    runs[i].weights.resize(runs[i].ids.size());
    ASSERT_TRUE(flashmoe::reference::route(c, m.host_weights(), runs[i].x.data(), T,
                                           runs[i].ids.data(), runs[i].weights.data())
                    .ok());
    check_output(m, runs[i], sample_tokens(T, 8, rng_));
  }
  CUDA_OK(cudaEventDestroy(done_a));
  CUDA_OK(cudaEventDestroy(done_b));
}

// The device status word: the first failure stays; a forward that succeeds leaves it alone.
TEST_F(Engine, DeviceStatusWordKeepsTheFirstFailure) {
  SCOPED_TRACE(seed_);
  const Config c = config(256, 136, 16, 4, 64);
  const Model m = make_model(c, rng_);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  StreamGuard stream;
  const int T = 4;
  DeviceBuffer word = upload(std::vector<std::int32_t>{0});
  ForwardOptions o;
  o.device_status = word.get<std::int32_t>();
  ForwardRun good = make_run(c, T, rng_);
  ASSERT_TRUE(run_forward(layer, good, stream.get(), o));
  EXPECT_EQ(download<std::int32_t>(word.get(), 1)[0], 0) << "a good forward wrote the word";

  std::vector<std::int32_t> ids(static_cast<std::size_t>(T) * c.top_k, 1);
  ids[5] = c.experts;  // out of range
  DeviceBuffer d_ids = upload(ids);
  DeviceBuffer d_wts = upload(std::vector<float>(ids.size(), 0.25f));
  ForwardRun bad = make_run(c, T, rng_);
  DeviceBuffer dx = upload(bad.x), dy = upload(bad.y_in);
  ForwardOptions ob = o;
  ob.topk_ids = d_ids.get<std::int32_t>();
  ob.topk_weights = d_wts.get<float>();
  ASSERT_TRUE(flashmoe::forward(layer, dx.get(), dy.get(), T, stream.get(), ob).ok());
  EXPECT_EQ(layer.device_status(stream.get()).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(download<std::int32_t>(word.get(), 1)[0],
            static_cast<int>(StatusCode::InvalidArgument));
  // Later good forwards leave the first failure in place.
  ForwardRun again = make_run(c, T, rng_);
  ASSERT_TRUE(run_forward(layer, again, stream.get(), o));
  EXPECT_EQ(download<std::int32_t>(word.get(), 1)[0],
            static_cast<int>(StatusCode::InvalidArgument));
}

// A CUDA error the caller left pending (cudaGetLastError would return it) is not reported as
// a failure of forward, whose result is still correct.
TEST_F(Engine, PendingCallerErrorIsNotReportedAsOurs) {
  SCOPED_TRACE(seed_);
  const Config c = config(256, 136, 16, 4, 64);
  const Model m = make_model(c, rng_);
  Layer layer;
  ASSERT_TRUE(Layer::create(c, m.device_weights(), layer).ok());
  void* huge = nullptr;
  ASSERT_NE(cudaMalloc(&huge, std::numeric_limits<std::size_t>::max() / 2), cudaSuccess);
  ASSERT_NE(cudaPeekAtLastError(), cudaSuccess) << "the error is pending";
  StreamGuard stream;
  ForwardRun run = make_run(c, 5, rng_);
  ASSERT_TRUE(run_forward(layer, run, stream.get()));
  check_output(m, run, sample_tokens(5, 5, rng_));
}

// Programmatic dependent launch: a chain of forwards, each one's x the previous one's y, over
// two Layers that share a scratch, on a stream and captured in a graph. Each forward may be
// scheduled while the previous one still runs, so one that touched its x or the scratch before
// the previous forward ended would differ from ordinary launches; every step must be bitwise
// theirs, and the first matches the reference. Decode and prefill kernels, and a forward of
// two launches (tokens_per_launch).
TEST_F(Engine, ProgrammaticLaunchesMatchOrdinaryOnes) {
  SCOPED_TRACE(seed_);
  const Model models[] = {make_model(config(256, 136, 16, 4, 1024), rng_),
                          make_model(config(256, 200, 8, 2, 1024, DType::BF16), rng_)};
  std::size_t need = 0;
  for (const Model& m : models) need = std::max(need, flashmoe::scratch_bytes(m.config, 512));
  DeviceBuffer scratch(need);
  std::vector<Layer> layers(2);
  for (int i = 0; i < 2; ++i) {
    flashmoe::LayerOptions o;
    o.scratch = scratch.get();
    o.scratch_bytes = need;
    o.tokens_per_launch = 512;
    ASSERT_TRUE(Layer::create(models[i].config, models[i].device_weights(), layers[i], o).ok());
  }
  if (!flashmoe::testing::has_programmatic_launch(layers[0])) {
    GTEST_SKIP() << "no programmatic dependent launch here (needs sm_90+ and kernels built for it)";
  }
  StreamGuard stream;
  constexpr int kSteps = 6;
  for (int T : {1, 5, 600, 1000}) {
    SCOPED_TRACE(::testing::Message() << "T " << T);
    const Config& c = models[0].config;
    const std::size_t cells = static_cast<std::size_t>(T) * c.hidden;
    const std::size_t pairs = static_cast<std::size_t>(T) * c.top_k;
    ForwardRun first = make_run(c, T, rng_);
    // Runs the chain: each step's y into `ys`, the first step's routing into `first`.
    using Steps = std::vector<std::vector<std::uint16_t>>;
    auto chain = [&](bool programmatic, bool graph, Steps& ys) {
      std::vector<DeviceBuffer> act;
      act.emplace_back(upload(first.x));
      for (int i = 0; i < kSteps; ++i) act.emplace_back(upload(first.y_in));  // poison
      DeviceBuffer ids(pairs * 4), wts(pairs * 4);
      ForwardOptions o;
      o.programmatic_launch = programmatic;
      ForwardOptions o0 = o;
      o0.out_topk_ids = ids.get<std::int32_t>();
      o0.out_topk_weights = wts.get<float>();
      cudaGraph_t g = nullptr;
      if (graph) CUDA_OK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
      bool launched = true;
      for (int i = 0; i < kSteps && launched; ++i) {
        const flashmoe::Status s = flashmoe::forward(layers[i % 2], act[i].get(), act[i + 1].get(),
                                                     T, stream.get(), i == 0 ? o0 : o);
        EXPECT_TRUE(s.ok()) << s.to_string();
        launched = s.ok();
      }
      if (graph) {
        CUDA_OK(cudaStreamEndCapture(stream.get(), &g));
        cudaGraphExec_t exec = nullptr;
        CUDA_OK(cudaGraphInstantiate(&exec, g, 0));
        CUDA_OK(cudaGraphLaunch(exec, stream.get()));
        CUDA_OK(cudaStreamSynchronize(stream.get()));
        CUDA_OK(cudaGraphExecDestroy(exec));
        CUDA_OK(cudaGraphDestroy(g));
      }
      for (Layer& l : layers) EXPECT_TRUE(l.device_status(stream.get()).ok());
      ys.clear();
      for (int i = 1; i <= kSteps; ++i) ys.push_back(download<std::uint16_t>(act[i].get(), cells));
      first.ids = download<std::int32_t>(ids.get(), pairs);
      first.weights = download<float>(wts.get(), pairs);
    };
    Steps ordinary;
    chain(false, false, ordinary);
    ASSERT_FALSE(HasFatalFailure());
    first.y = ordinary[0];
    check_output(models[0], first, sample_tokens(T, 8, rng_));
    for (const bool graph : {false, true}) {
      SCOPED_TRACE(graph ? "graph" : "stream");
      Steps programmatic;
      chain(true, graph, programmatic);
      ASSERT_FALSE(HasFatalFailure());
      for (int i = 0; i < kSteps; ++i) EXPECT_EQ(programmatic[i], ordinary[i]) << "step " << i;
    }
  }
}

}  // namespace
