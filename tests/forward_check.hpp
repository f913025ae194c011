// Helpers of the GPU forward tests: the benchmark shapes, one forward with fresh inputs and a
// poisoned y, and its routing and output checked against the CPU reference.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"

namespace flashmoe_test {

using flashmoe::Config;
using flashmoe::DType;
using flashmoe::ForwardOptions;
using flashmoe::Layer;

struct Shape {
  const char* name;
  int hidden, inter, experts, top_k;
  bool renormalize;
  int max_check;  // tokens checked against the reference per run (all when T is smaller)
};

inline Config make_config(const Shape& s, DType dt, int max_tokens) {
  Config c;
  c.hidden = s.hidden;
  c.intermediate = s.inter;
  c.experts = s.experts;
  c.top_k = s.top_k;
  c.dtype = dt;
  c.routing.renormalize = s.renormalize;
  c.max_tokens = max_tokens;
  return c;
}

class StreamGuard {
 public:
  StreamGuard() { (void)cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking); }
  ~StreamGuard() { (void)cudaStreamDestroy(s_); }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// One forward with its inputs and what came back.
struct ForwardRun {
  int tokens = 0;
  std::vector<std::uint16_t> x, y_in, y;
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

// Fresh random x, and y poisoned (NaN everywhere): every element must be written.
inline ForwardRun make_run(const Config& c, int T, std::mt19937_64& rng) {
  ForwardRun run;
  run.tokens = T;
  run.x = random_values(static_cast<std::size_t>(T) * c.hidden, 1.0f, c.dtype, rng);
  run.y_in.assign(run.x.size(), kPoison);
  return run;
}

// Uploads run.x and run.y_in, runs forward on `stream`, downloads y and the routing used.
inline ::testing::AssertionResult run_forward(Layer& layer, ForwardRun& run, cudaStream_t stream,
                                              ForwardOptions options = {}) {
  const Config& c = layer.config();
  const std::size_t pairs = static_cast<std::size_t>(run.tokens) * c.top_k;
  DeviceBuffer dx = upload(run.x), dy = upload(run.y_in);
  DeviceBuffer ids(pairs * 4), wts(pairs * 4);
  options.out_topk_ids = ids.get<std::int32_t>();
  options.out_topk_weights = wts.get<float>();
  const flashmoe::Status s =
      flashmoe::forward(layer, dx.get(), dy.get(), run.tokens, stream, options);
  if (!s.ok()) return ::testing::AssertionFailure() << "forward: " << s.to_string();
  const flashmoe::Status d = layer.device_status(stream);
  if (!d.ok()) return ::testing::AssertionFailure() << "device: " << d.to_string();
  run.y = download<std::uint16_t>(dy.get(), run.x.size());
  run.ids = download<std::int32_t>(ids.get(), pairs);
  run.weights = download<float>(wts.get(), pairs);
  return ::testing::AssertionSuccess();
}

// A forward that ran traced, again with tracing off (the untraced kernels, which engines run):
// the same bits. Tracing is left on with `events_per_block`.
inline void expect_untraced_matches(Layer& layer, const ForwardRun& traced, cudaStream_t stream,
                                    int events_per_block) {
  ASSERT_TRUE(layer.set_tracing(0).ok());
  ForwardRun again = traced;
  ASSERT_TRUE(run_forward(layer, again, stream));
  EXPECT_EQ(again.y, traced.y) << "the untraced kernel must give the traced kernel's bits";
  EXPECT_EQ(again.ids, traced.ids);
  ASSERT_TRUE(layer.set_tracing(events_per_block).ok());
}

inline std::vector<int> sample_tokens(int T, int max_check, std::mt19937_64& rng) {
  std::vector<int> all(T);
  for (int t = 0; t < T; ++t) all[t] = t;
  if (T <= max_check) return all;
  std::shuffle(all.begin() + 1, all.end() - 1, rng);
  std::vector<int> pick(all.begin(), all.begin() + max_check - 1);
  pick.push_back(T - 1);  // first and last always
  std::sort(pick.begin(), pick.end());
  return pick;
}

// The router's choice for sampled tokens against the reference's. Sets may differ only at a
// near-tie: an expert in one set and not the other must score within 1e-5 of the K-th best.
inline void check_routing(const Model& m, const ForwardRun& run, const std::vector<int>& tokens) {
  const Config& c = m.config;
  const int K = c.top_k, H = c.hidden;
  for (int t : tokens) {
    std::vector<std::int32_t> rid(K);
    std::vector<float> rw(K);
    ASSERT_TRUE(flashmoe::reference::route(c, m.host_weights(),
                                           &run.x[static_cast<std::size_t>(t) * H], 1, rid.data(),
                                           rw.data())
                    .ok());
    const std::set<int> gpu(run.ids.begin() + t * K, run.ids.begin() + (t + 1) * K);
    const std::set<int> ref(rid.begin(), rid.end());
    ASSERT_EQ(gpu.size(), static_cast<std::size_t>(K)) << "token " << t << ": repeated expert";
    if (gpu == ref) {
      for (int k = 0; k < K; ++k) {
        const int pos =
            static_cast<int>(std::find(rid.begin(), rid.end(), run.ids[t * K + k]) - rid.begin());
        EXPECT_NEAR(run.weights[t * K + k], rw[pos], 1e-4)
            << "token " << t << " expert " << rid[pos];
      }
      continue;
    }
    // Full ranking: all experts, unnormalised scores.
    Config all = c;
    all.top_k = c.experts;
    all.routing.renormalize = false;
    all.routing.routed_scaling_factor = 1.0f;
    std::vector<std::int32_t> aid(c.experts);
    std::vector<float> aw(c.experts);
    ASSERT_TRUE(flashmoe::reference::route(all, m.host_weights(),
                                           &run.x[static_cast<std::size_t>(t) * H], 1, aid.data(),
                                           aw.data())
                    .ok());
    const float kth = aw[K - 1];
    for (int e = 0; e < c.experts; ++e) {
      if (gpu.count(aid[e]) != ref.count(aid[e])) {
        EXPECT_NEAR(aw[e], kth, 1e-5)
            << "token " << t << ": expert " << aid[e] << " chosen differently, not a near-tie";
      }
    }
  }
}

// y of sampled tokens against the reference run with the routing the GPU used, and every
// token of y written (no poison left).
// Returns the largest relative L2 error over `tokens` (infinity where y was not written).
inline double check_output(const Model& m, const ForwardRun& run, const std::vector<int>& tokens,
                           double beta = 0.0) {
  const Config& c = m.config;
  const int H = c.hidden, K = c.top_k;
  for (std::size_t i = 0; i < run.y.size(); ++i) {
    const bool written = std::isfinite(flashmoe::reference::to_float(run.y[i], c.dtype));
    EXPECT_TRUE(written) << "y[" << i / H << ", " << i % H
                         << "] not written (or not finite): bits 0x" << std::hex << run.y[i]
                         << std::dec;
    if (!written) return INFINITY;
  }
  std::vector<double> err(tokens.size());
  parallel_for(static_cast<int>(tokens.size()), [&](int j) {
    const int t = tokens[j];
    ForwardOptions o;
    o.topk_ids = &run.ids[static_cast<std::size_t>(t) * K];
    o.topk_weights = &run.weights[static_cast<std::size_t>(t) * K];
    o.beta = static_cast<float>(beta);
    std::vector<std::uint16_t> y(run.y_in.begin() + static_cast<std::ptrdiff_t>(t) * H,
                                 run.y_in.begin() + static_cast<std::ptrdiff_t>(t + 1) * H);
    std::vector<double> ref(H);
    const flashmoe::Status s = flashmoe::reference::forward(
        c, m.host_weights(), &run.x[static_cast<std::size_t>(t) * H], y.data(), 1, o, ref.data());
    err[j] =
        s.ok() ? rel_l2(&run.y[static_cast<std::size_t>(t) * H], ref.data(), H, c.dtype) : INFINITY;
  });
  double worst = 0.0;
  for (std::size_t j = 0; j < tokens.size(); ++j) {
    EXPECT_LT(err[j], tolerance(c.dtype)) << "token " << tokens[j] << " of " << run.tokens;
    worst = std::max(worst, err[j]);
  }
  return worst;
}

// The first `n` rows of a run, as a run of its own (for check_output).
inline ForwardRun first_rows(const ForwardRun& run, int n, const Config& c) {
  ForwardRun r;
  r.tokens = n;
  const std::size_t cells = static_cast<std::size_t>(n) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(n) * c.top_k;
  r.x.assign(run.x.begin(), run.x.begin() + static_cast<std::ptrdiff_t>(cells));
  r.y_in.assign(run.y_in.begin(), run.y_in.begin() + static_cast<std::ptrdiff_t>(cells));
  r.y.assign(run.y.begin(), run.y.begin() + static_cast<std::ptrdiff_t>(cells));
  r.ids.assign(run.ids.begin(), run.ids.begin() + static_cast<std::ptrdiff_t>(pairs));
  r.weights.assign(run.weights.begin(), run.weights.begin() + static_cast<std::ptrdiff_t>(pairs));
  return r;
}

// A padded batch on the device: `run` with its rows from `live` on set to a sentinel in y (not
// poison, so that "untouched" is checked bitwise), the device token count `count`, and routing
// outputs pre-filled with -7 (an untouched pair shows).
struct PaddedBatch {
  static constexpr std::uint16_t kSentinel = 0x3C00;
  DeviceBuffer x, y, count, ids, weights;
  ForwardOptions options;
  int live = 0;

  PaddedBatch(ForwardRun& run, int count_value, int live_rows, const Config& c) : live(live_rows) {
    for (std::size_t i = static_cast<std::size_t>(live) * c.hidden; i < run.y_in.size(); ++i) {
      run.y_in[i] = kSentinel;
    }
    const std::size_t pairs = static_cast<std::size_t>(run.tokens) * c.top_k;
    x = upload(run.x);
    y = upload(run.y_in);
    count = upload(std::vector<std::int32_t>{count_value});
    ids = upload(std::vector<std::int32_t>(pairs, -7));
    weights = upload(std::vector<float>(pairs, -7.0f));
    options.device_num_tokens = count.get<std::int32_t>();
    options.out_topk_ids = ids.get<std::int32_t>();
    options.out_topk_weights = weights.get<float>();
  }

  // Downloads y and the routing outputs into `run`, checks the padding, and returns the live
  // rows as a run of their own (for check_routing and check_output).
  ForwardRun live_rows(ForwardRun& run, const Config& c) const {
    const std::size_t pairs = static_cast<std::size_t>(run.tokens) * c.top_k;
    run.y = download<std::uint16_t>(y.get(), run.y_in.size());
    run.ids = download<std::int32_t>(ids.get(), pairs);
    run.weights = download<float>(weights.get(), pairs);
    for (std::size_t i = static_cast<std::size_t>(live) * c.hidden; i < run.y.size(); ++i) {
      EXPECT_EQ(run.y[i], kSentinel) << "padding row " << i / c.hidden << " was written";
      if (run.y[i] != kSentinel) break;
    }
    for (std::size_t q = static_cast<std::size_t>(live) * c.top_k; q < pairs; ++q) {
      EXPECT_TRUE(run.ids[q] == -7 && run.weights[q] == -7.0f)
          << "padding pair " << q << " was routed";
      if (run.ids[q] != -7 || run.weights[q] != -7.0f) break;
    }
    return first_rows(run, live, c);
  }
};

// y of `run` forwarded as a padded batch of `live` of its rows (PaddedBatch: the padding rows
// of y and of the routing outputs are checked untouched); empty, with a failure recorded, when
// the forward fails.
inline std::vector<std::uint16_t> padded_forward(Layer& layer, ForwardRun& run, int live,
                                                 const Config& c, cudaStream_t stream) {
  const PaddedBatch batch(run, live, live, c);
  const flashmoe::Status s =
      flashmoe::forward(layer, batch.x.get(), batch.y.get(), run.tokens, stream, batch.options);
  EXPECT_TRUE(s.ok()) << s.to_string();
  const flashmoe::Status d = s.ok() ? layer.device_status(stream) : s;
  EXPECT_TRUE(d.ok()) << d.to_string();
  if (!d.ok()) return {};
  (void)batch.live_rows(run, c);
  return run.y;
}

}  // namespace flashmoe_test
