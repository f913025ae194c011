// Tests of the CPU reference. Every expected value is worked out by hand in the comments from
// exactly representable inputs; sigma(v) = 1 / (1 + e^-v) and silu(v) = v * sigma(v).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "flashmoe/reference.hpp"

namespace flashmoe {
namespace {

using reference::from_float;
using reference::to_float;

constexpr double kPi = 3.14159265358979323846;
constexpr DType kDTypes[] = {DType::BF16, DType::FP16};

double sigma(double v) { return 1.0 / (1.0 + std::exp(-v)); }

std::vector<std::uint16_t> to_bits(const std::vector<float>& values, DType dtype) {
  std::vector<std::uint16_t> bits;
  for (float v : values) {
    bits.push_back(from_float(v, dtype));
    EXPECT_EQ(to_float(bits.back(), dtype), v) << "test input is not exact in 16 bits";
  }
  return bits;
}

const void* data_or_null(const std::vector<std::uint16_t>& v) {
  return v.empty() ? nullptr : v.data();
}

// A layer on host arrays. Sizes and weights are set by each test.
struct Host {
  Config config;
  std::vector<std::uint16_t> x, router, w13, w2, shared_w13, shared_w2, shared_gate;
  std::vector<float> bias;

  Host(int hidden, int intermediate, int experts, int top_k, DType dtype = DType::BF16) {
    config.hidden = hidden;
    config.intermediate = intermediate;
    config.experts = experts;
    config.top_k = top_k;
    config.dtype = dtype;
    config.max_tokens = 16;
  }
  void set(std::vector<std::uint16_t>& field, const std::vector<float>& values) {
    field = to_bits(values, config.dtype);
  }
  Weights weights() const {
    Weights w;
    w.dtype = config.dtype;
    w.router = data_or_null(router);
    w.w13 = data_or_null(w13);
    w.w2 = data_or_null(w2);
    w.correction_bias = bias.empty() ? nullptr : bias.data();
    w.shared_w13 = data_or_null(shared_w13);
    w.shared_w2 = data_or_null(shared_w2);
    w.shared_gate = data_or_null(shared_gate);
    return w;
  }
  std::int64_t tokens() const { return static_cast<std::int64_t>(x.size()) / config.hidden; }
};

struct Output {
  Status status;
  std::vector<std::uint16_t> y;
  std::vector<double> y_f64;
};

// Runs forward on all tokens of `host`; y starts as y_in (zeros when empty).
Output run(const Host& host, const ForwardOptions& options = {},
           std::vector<std::uint16_t> y_in = {}) {
  const std::size_t size = host.x.size();
  Output out;
  out.y = y_in.empty() ? std::vector<std::uint16_t>(size, 0) : y_in;
  out.y_f64.assign(size, std::numeric_limits<double>::quiet_NaN());
  out.status = reference::forward(host.config, host.weights(), host.x.data(), out.y.data(),
                                  host.tokens(), options, out.y_f64.data());
  return out;
}

// y_f64 must match to 1e-12 (relative); y within half a 16-bit ulp plus a little.
void expect_y(const Output& out, const std::vector<double>& expected, DType dtype) {
  ASSERT_TRUE(out.status.ok()) << out.status.message();
  ASSERT_EQ(out.y.size(), expected.size());
  const double ulp = dtype == DType::BF16 ? 0x1p-8 : 0x1p-11;  // relative spacing at 1
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i];
    EXPECT_NEAR(out.y_f64[i], e, 1e-12 * std::max(1.0, std::abs(e))) << "element " << i;
    EXPECT_NEAR(to_float(out.y[i], dtype), e, ulp * std::abs(e)) << "element " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// DTypeConversion

TEST(DTypeConversion, Bf16ExactValues) {
  // bf16 is the top half of a float: 1 = 0x3F800000, -2 = 0xC0000000, 0.5 = 0x3F000000.
  EXPECT_EQ(from_float(1.0f, DType::BF16), 0x3F80);
  EXPECT_EQ(from_float(-2.0f, DType::BF16), 0xC000);
  EXPECT_EQ(from_float(0.5f, DType::BF16), 0x3F00);
  EXPECT_EQ(from_float(0.0f, DType::BF16), 0x0000);
  EXPECT_EQ(from_float(-0.0f, DType::BF16), 0x8000);
  EXPECT_EQ(to_float(0x3F80, DType::BF16), 1.0f);
  EXPECT_EQ(to_float(0xC000, DType::BF16), -2.0f);
  EXPECT_EQ(to_float(0x3FC0, DType::BF16), 1.5f);  // mantissa 0x40 = 0.5
  // Largest finite bf16: (2 - 2^-7) * 2^127. Smallest subnormal: 2^-133.
  EXPECT_EQ(to_float(0x7F7F, DType::BF16), std::ldexp(2.0f - 0x1p-7f, 127));
  EXPECT_EQ(from_float(std::ldexp(1.0f, -133), DType::BF16), 0x0001);
  EXPECT_EQ(to_float(0x0001, DType::BF16), std::ldexp(1.0f, -133));
}

TEST(DTypeConversion, Bf16RoundsToNearestEven) {
  // bf16 keeps 7 mantissa bits: the neighbours of 1 are 1 (0x3F80) and 1 + 2^-7 (0x3F81).
  EXPECT_EQ(from_float(1.0f + 0x1p-8f, DType::BF16), 0x3F80);      // tie: down to the even 0x3F80
  EXPECT_EQ(from_float(1.0f + 3 * 0x1p-8f, DType::BF16), 0x3F82);  // tie: up to the even 0x3F82
  EXPECT_EQ(from_float(1.0f + 0x1p-8f + 0x1p-20f, DType::BF16), 0x3F81);  // above the tie
  EXPECT_EQ(from_float(1.0f + 0x1p-8f - 0x1p-20f, DType::BF16), 0x3F80);  // below the tie
  EXPECT_EQ(from_float(-(1.0f + 3 * 0x1p-8f), DType::BF16), 0xBF82);
  // 2^-149 is far below half of the smallest bf16 subnormal (2^-133): zero.
  EXPECT_EQ(from_float(std::ldexp(1.0f, -149), DType::BF16), 0x0000);
}

TEST(DTypeConversion, Bf16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(from_float(inf, DType::BF16), 0x7F80);
  EXPECT_EQ(from_float(-inf, DType::BF16), 0xFF80);
  EXPECT_EQ(to_float(0x7F80, DType::BF16), inf);
  // FLT_MAX = (2 - 2^-23) 2^127 is past the midpoint (2 - 2^-8) 2^127 above the largest bf16.
  EXPECT_EQ(from_float(std::numeric_limits<float>::max(), DType::BF16), 0x7F80);
  EXPECT_EQ(from_float(-std::numeric_limits<float>::max(), DType::BF16), 0xFF80);
  // NaN stays NaN (all-ones exponent, non-zero mantissa) and keeps its sign, even when its
  // payload sits only in the low 16 bits that truncation would drop.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float value : {nan, -nan, std::numeric_limits<float>::signaling_NaN()}) {
    const std::uint16_t bits = from_float(value, DType::BF16);
    EXPECT_EQ(bits & 0x7F80, 0x7F80);
    EXPECT_NE(bits & 0x007F, 0);
    EXPECT_EQ(std::signbit(to_float(bits, DType::BF16)), std::signbit(value));
  }
  std::uint32_t low_payload = 0x7F800001u;
  float low_nan;
  std::memcpy(&low_nan, &low_payload, sizeof low_nan);
  EXPECT_TRUE(std::isnan(to_float(from_float(low_nan, DType::BF16), DType::BF16)));
}

TEST(DTypeConversion, Fp16ExactValues) {
  // fp16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
  EXPECT_EQ(from_float(1.0f, DType::FP16), 0x3C00);
  EXPECT_EQ(from_float(-2.0f, DType::FP16), 0xC000);
  EXPECT_EQ(from_float(0.5f, DType::FP16), 0x3800);
  EXPECT_EQ(from_float(-0.0f, DType::FP16), 0x8000);
  EXPECT_EQ(from_float(65504.0f, DType::FP16), 0x7BFF);         // largest finite
  EXPECT_EQ(from_float(0x1p-14f, DType::FP16), 0x0400);         // smallest normal
  EXPECT_EQ(from_float(0x1p-24f, DType::FP16), 0x0001);         // smallest subnormal
  EXPECT_EQ(from_float(1023 * 0x1p-24f, DType::FP16), 0x03FF);  // largest subnormal
  EXPECT_EQ(to_float(0x3C00, DType::FP16), 1.0f);
  EXPECT_EQ(to_float(0x3E00, DType::FP16), 1.5f);
  EXPECT_EQ(to_float(0x7BFF, DType::FP16), 65504.0f);
  EXPECT_EQ(to_float(0x0001, DType::FP16), 0x1p-24f);
  EXPECT_EQ(to_float(0x83FF, DType::FP16), -1023 * 0x1p-24f);
  EXPECT_TRUE(std::signbit(to_float(0x8000, DType::FP16)));
}

TEST(DTypeConversion, Fp16RoundsToNearestEven) {
  // Neighbours of 1 are 1 (0x3C00) and 1 + 2^-10 (0x3C01).
  EXPECT_EQ(from_float(1.0f + 0x1p-11f, DType::FP16), 0x3C00);      // tie: down to even
  EXPECT_EQ(from_float(1.0f + 3 * 0x1p-11f, DType::FP16), 0x3C02);  // tie: up to even
  EXPECT_EQ(from_float(1.0f + 0x1p-11f + 0x1p-20f, DType::FP16), 0x3C01);
  // Subnormals count units of 2^-24.
  EXPECT_EQ(from_float(0x1p-25f, DType::FP16), 0x0000);      // 0.5 units: tie to 0
  EXPECT_EQ(from_float(3 * 0x1p-25f, DType::FP16), 0x0002);  // 1.5 units: tie to 2
  EXPECT_EQ(from_float(0x1p-25f + 0x1p-35f, DType::FP16), 0x0001);
  EXPECT_EQ(from_float(0x1p-26f, DType::FP16), 0x0000);
  EXPECT_EQ(from_float(-3 * 0x1p-25f, DType::FP16), 0x8002);
  // 1023.5 units: tie between 0x03FF (odd) and 0x0400, the smallest normal.
  EXPECT_EQ(from_float(1023.5f * 0x1p-24f, DType::FP16), 0x0400);
}

TEST(DTypeConversion, Fp16OverflowAndSpecials) {
  const float inf = std::numeric_limits<float>::infinity();
  // Spacing at 65504 is 32, so 65520 is the midpoint to 65536 (= inf): ties to even, and
  // 65504's mantissa 0x3FF is odd, so it overflows.
  EXPECT_EQ(from_float(65519.0f, DType::FP16), 0x7BFF);
  EXPECT_EQ(from_float(65520.0f, DType::FP16), 0x7C00);
  EXPECT_EQ(from_float(1e6f, DType::FP16), 0x7C00);
  EXPECT_EQ(from_float(-1e6f, DType::FP16), 0xFC00);
  EXPECT_EQ(from_float(std::numeric_limits<float>::max(), DType::FP16), 0x7C00);
  EXPECT_EQ(from_float(inf, DType::FP16), 0x7C00);
  EXPECT_EQ(from_float(-inf, DType::FP16), 0xFC00);
  EXPECT_EQ(to_float(0x7C00, DType::FP16), inf);
  EXPECT_EQ(to_float(0xFC00, DType::FP16), -inf);
  EXPECT_TRUE(std::isnan(to_float(0x7E00, DType::FP16)));
  EXPECT_TRUE(std::isnan(to_float(0x7C01, DType::FP16)));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float value : {nan, -nan}) {
    const std::uint16_t bits = from_float(value, DType::FP16);
    EXPECT_EQ(bits & 0x7C00, 0x7C00);
    EXPECT_NE(bits & 0x03FF, 0);
    EXPECT_EQ(std::signbit(to_float(bits, DType::FP16)), std::signbit(value));
  }
}

TEST(DTypeConversion, EveryBitPatternRoundTrips) {
  for (DType dtype : kDTypes) {
    for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
      const auto bits = static_cast<std::uint16_t>(b);
      const float value = to_float(bits, dtype);
      if (std::isnan(value)) {
        EXPECT_TRUE(std::isnan(to_float(from_float(value, dtype), dtype))) << b;
      } else {
        EXPECT_EQ(from_float(value, dtype), bits) << b;
      }
    }
  }
}

TEST(DTypeConversion, MidpointsTieToEven) {
  // Between neighbours a = value(b) and c = value(b + 1), the midpoint (exact in float) goes to
  // whichever of b, b + 1 is even; a hair either side goes to the nearer one. Both signs.
  for (DType dtype : kDTypes) {
    const std::uint32_t last = dtype == DType::BF16 ? 0x7F7F : 0x7BFF;  // largest finite
    for (std::uint32_t b = 0; b < last; ++b) {
      const float a = to_float(static_cast<std::uint16_t>(b), dtype);
      const float c = to_float(static_cast<std::uint16_t>(b + 1), dtype);
      const float mid = a + (c - a) / 2;  // (a + c) / 2 would overflow near the top
      const std::uint32_t even = b % 2 == 0 ? b : b + 1;
      for (std::uint32_t sign : {0u, 0x8000u}) {
        const float s = sign ? -1.0f : 1.0f;
        ASSERT_EQ(from_float(s * mid, dtype), sign | even) << b;
        ASSERT_EQ(from_float(s * std::nextafter(mid, 0.0f), dtype), sign | b) << b;
        ASSERT_EQ(from_float(s * std::nextafter(mid, c), dtype), sign | (b + 1)) << b;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ReferenceRouting: H = 1 and x = 1 (or -1) make the logits equal the router entries.

struct Routed {
  Status status;
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

Routed route(const Host& host) {
  Routed r;
  const auto count = static_cast<std::size_t>(host.tokens() * host.config.top_k);
  r.ids.assign(count, -7);
  r.weights.assign(count, -7.0f);
  r.status = reference::route(host.config, host.weights(), host.x.data(), host.tokens(),
                              r.ids.data(), r.weights.data());
  return r;
}

void expect_routing(const Routed& r, const std::vector<std::int32_t>& ids,
                    const std::vector<double>& weights) {
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(r.ids, ids);
  ASSERT_EQ(r.weights.size(), weights.size());
  for (std::size_t i = 0; i < weights.size(); ++i)
    EXPECT_FLOAT_EQ(r.weights[i], static_cast<float>(weights[i])) << "weight " << i;
}

TEST(ReferenceRouting, SoftmaxTopKRenormalized) {
  Host h(/*hidden=*/1, 1, /*experts=*/4, /*top_k=*/2);
  h.set(h.router, {0, 2, 1, -1});
  h.set(h.x, {1, -1});
  // Token 0: logits (0, 2, 1, -1) -> experts 1, 2. Renormalised softmax of the two:
  //   e^2 / (e^2 + e^1) = sigma(1), e^1 / (e^2 + e^1) = sigma(-1).
  // Token 1: logits (0, -2, -1, 1) -> experts 3, 0, weights sigma(1), sigma(-1) likewise.
  expect_routing(route(h), {1, 2, 3, 0}, {sigma(1), sigma(-1), sigma(1), sigma(-1)});
}

TEST(ReferenceRouting, SoftmaxTopKWithoutRenormalize) {
  Host h(1, 1, 4, 2);
  h.config.routing.renormalize = false;
  h.config.routing.routed_scaling_factor = 0.5f;
  h.set(h.router, {0, 2, 1, -1});
  h.set(h.x, {1});
  // Full softmax over logits (0, 2, 1, -1): Z = e^0 + e^2 + e^1 + e^-1; experts 1, 2 keep
  // e^2 / Z and e^1 / Z, then the scaling factor halves them.
  const double z = 1 + std::exp(2.0) + std::exp(1.0) + std::exp(-1.0);
  expect_routing(route(h), {1, 2}, {0.5 * std::exp(2.0) / z, 0.5 * std::exp(1.0) / z});
}

TEST(ReferenceRouting, SigmoidBiasChangesChoiceNotWeight) {
  Host h(1, 1, /*experts=*/4, /*top_k=*/2);
  Routing& r = h.config.routing;
  r.scoring = Scoring::Sigmoid;
  r.n_group = 2;  // groups {0, 1} and {2, 3}
  r.topk_group = 1;
  r.routed_scaling_factor = 2.5f;
  h.set(h.router, {2, 0, 1, 0});
  h.set(h.x, {1});
  // Scores sigma(logits) = (sigma(2) = 0.881, 0.5, sigma(1) = 0.731, 0.5).
  // Without bias a group scores its best: 0.881 vs 0.731 -> group 0 -> experts 0, 1.
  // Weights: sigma(2) and 0.5 renormalised, times 2.5.
  double sum = sigma(2) + 0.5;
  expect_routing(route(h), {0, 1}, {2.5 * sigma(2) / sum, 2.5 * 0.5 / sum});

  // Bias (0, 0, 0.5, 0.5): choices (0.881, 0.5, 1.231, 1.0); a group scores its two best:
  // 1.381 vs 2.231 -> group 1 -> experts 2, 3 (1.231 first). Weights use the scores without
  // bias, sigma(1) and 0.5, renormalised, times 2.5.
  r.use_correction_bias = true;
  h.bias = {0, 0, 0.5f, 0.5f};
  sum = sigma(1) + 0.5;
  expect_routing(route(h), {2, 3}, {2.5 * sigma(1) / sum, 2.5 * 0.5 / sum});
}

TEST(ReferenceRouting, GroupScoreIsBestWithoutBiasTopTwoWithBias) {
  Host h(1, 1, /*experts=*/6, /*top_k=*/2);
  Routing& r = h.config.routing;
  r.scoring = Scoring::Sigmoid;
  r.n_group = 2;  // groups {0, 1, 2} and {3, 4, 5}
  r.topk_group = 1;
  h.set(h.router, {3, -3, -3, 1, 1, -3});
  h.set(h.x, {1});
  // Scores: group 0 (sigma(3) = 0.953, 0.047, 0.047), group 1 (0.731, 0.731, 0.047).
  // Best-of-group: 0.953 vs 0.731 -> group 0 -> expert 0, then 1 and 2 tie -> 1.
  // Renormalised: sigma(3) + sigma(-3) = 1, so the weights are sigma(3), sigma(-3).
  expect_routing(route(h), {0, 1}, {sigma(3), sigma(-3)});

  // With a (zero) correction bias the group score is the sum of its two best:
  // sigma(3) + sigma(-3) = 1 vs 2 sigma(1) = 1.46 -> group 1 -> experts 3, 4 (tie -> 3
  // first), weights sigma(1) / (2 sigma(1)) = 0.5 each.
  r.use_correction_bias = true;
  h.bias.assign(6, 0.0f);
  expect_routing(route(h), {3, 4}, {0.5, 0.5});
}

TEST(ReferenceRouting, SingletonGroupsWithBias) {
  Host h(1, 1, /*experts=*/4, /*top_k=*/2);
  Routing& r = h.config.routing;
  r.scoring = Scoring::Sigmoid;
  r.renormalize = false;
  r.n_group = 4;  // one expert per group: a group's score is just its one choice score
  r.topk_group = 2;
  r.use_correction_bias = true;
  h.bias = {1.5f, 0, 0, -2};
  h.set(h.router, {0, 1, 2, 3});
  h.set(h.x, {1});
  // Choices: (0.5 + 1.5 = 2.0, sigma(1) = 0.731, sigma(2) = 0.881, sigma(3) - 2 = -1.05).
  // Groups kept: 0 and 2 -> experts 0, 2 with unbiased, unnormalised weights 0.5, sigma(2).
  expect_routing(route(h), {0, 2}, {0.5, sigma(2)});
}

TEST(ReferenceRouting, TiesGoToLowerId) {
  Host h(1, 1, /*experts=*/4, /*top_k=*/3);
  h.set(h.router, {1, 2, 2, 1});
  h.set(h.x, {1});
  // Logits (1, 2, 2, 1): experts 1 and 2 tie (1 first), then 0 and 3 tie (0 wins).
  // Renormalised: e^2, e^2, e^1 over 2 e^2 + e.
  const double sum = 2 * std::exp(2.0) + std::exp(1.0);
  expect_routing(route(h), {1, 2, 0},
                 {std::exp(2.0) / sum, std::exp(2.0) / sum, std::exp(1.0) / sum});

  // All logits 0: experts 0, 1, 2, each 1/3 after renormalising.
  h.set(h.router, {0, 0, 0, 0});
  expect_routing(route(h), {0, 1, 2}, {1.0 / 3, 1.0 / 3, 1.0 / 3});
}

TEST(ReferenceRouting, GroupTiesGoToLowerGroup) {
  Host h(1, 1, /*experts=*/4, /*top_k=*/2);
  h.config.routing.n_group = 2;
  h.config.routing.topk_group = 1;
  h.set(h.router, {0, 0, 0, 0});
  h.set(h.x, {1});
  // Both groups score 1/4: group 0 wins -> experts 0, 1, renormalised to 0.5 each.
  expect_routing(route(h), {0, 1}, {0.5, 0.5});
}

// ---------------------------------------------------------------------------------------------
// Reference: the whole layer.

// One expert (so softmax routing gives weight 1), H = 2, I = 1:
//   gate row W1 = (1, 0), up row W3 = (0, 1), down W2 = (1, -1)^T.
// For x = (x0, x1): g = x0, u = x1, y = act(x0) * x1 * (1, -1).
Host one_expert(DType dtype, Activation act) {
  Host h(/*hidden=*/2, /*intermediate=*/1, /*experts=*/1, /*top_k=*/1, dtype);
  h.config.activation = act;
  h.set(h.router, {0, 0});
  h.set(h.w13, {1, 0, 0, 1});
  h.set(h.w2, {1, -1});
  // Token 0: x = (1, 2) -> 2 act(1). Token 1: x = (-1, 0.5) -> 0.5 act(-1).
  h.set(h.x, {1, 2, -1, 0.5f});
  return h;
}

std::vector<double> one_expert_y(double act_1, double act_minus_1) {
  return {2 * act_1, -2 * act_1, 0.5 * act_minus_1, -0.5 * act_minus_1};
}

TEST(Reference, SiluActivation) {
  // silu(1) = sigma(1), silu(-1) = -sigma(-1).
  for (DType dtype : kDTypes)
    expect_y(run(one_expert(dtype, Activation::SiluGated)), one_expert_y(sigma(1), -sigma(-1)),
             dtype);
}

TEST(Reference, GeluErfActivation) {
  // gelu(v) = v/2 (1 + erf(v / sqrt 2)): gelu(1) = (1 + erf(1/sqrt2)) / 2,
  // gelu(-1) = -(1 - erf(1/sqrt2)) / 2.
  const double e = std::erf(1 / std::sqrt(2.0));
  for (DType dtype : kDTypes)
    expect_y(run(one_expert(dtype, Activation::GeluGated)), one_expert_y((1 + e) / 2, -(1 - e) / 2),
             dtype);
}

TEST(Reference, GeluTanhActivation) {
  // gelu_tanh(v) = v/2 (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))); at v = +-1 the tanh
  // argument is +-sqrt(2/pi) * 1.044715.
  const double t = std::tanh(std::sqrt(2 / kPi) * 1.044715);
  for (DType dtype : kDTypes)
    expect_y(run(one_expert(dtype, Activation::GeluTanhGated)),
             one_expert_y((1 + t) / 2, -(1 - t) / 2), dtype);
  // It really is the approximation: differs from erf GELU at 1 by about 1.5e-4.
  EXPECT_GT(std::abs((1 + t) / 2 - (1 + std::erf(1 / std::sqrt(2.0))) / 2), 1e-4);
}

// Two experts, H = I = 1, x = 2:
//   expert 0: W1 = 1, W3 = 1, W2 = 1  -> silu(2) * 2 * 1 = 4 sigma(2)
//   expert 1: W1 = -1, W3 = 1, W2 = 2 -> silu(-2) * 2 * 2 = -8 sigma(-2)
// Router (0.5, 0): logits (1, 0) -> experts 0, 1 with weights sigma(1), sigma(-1).
Host two_experts() {
  Host h(1, 1, /*experts=*/2, /*top_k=*/2);
  h.set(h.router, {0.5f, 0});
  h.set(h.w13, {1, 1, -1, 1});
  h.set(h.w2, {1, 2});
  h.set(h.x, {2});
  return h;
}

TEST(Reference, RoutedOutputsAreWeighted) {
  // The routing weights are rounded to float (as the GPU keeps them) before they scale the
  // double expert outputs.
  const double w0 = static_cast<float>(sigma(1)), w1 = static_cast<float>(sigma(-1));
  expect_y(run(two_experts()), {w0 * 4 * sigma(2) - w1 * 8 * sigma(-2)}, DType::BF16);
}

TEST(Reference, OutTopkReportsComputedRouting) {
  std::vector<std::int32_t> ids(2, -1);
  std::vector<float> weights(2, -1.0f);
  ForwardOptions options;
  options.out_topk_ids = ids.data();
  options.out_topk_weights = weights.data();
  ASSERT_TRUE(run(two_experts(), options).status.ok());
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
  EXPECT_FLOAT_EQ(weights[0], static_cast<float>(sigma(1)));
  EXPECT_FLOAT_EQ(weights[1], static_cast<float>(sigma(-1)));
}

TEST(Reference, CallerSuppliedRouting) {
  Host h = two_experts();
  h.router.clear();  // not needed when the routing is given
  const std::vector<std::int32_t> given_ids = {1, 0};
  const std::vector<float> given_weights = {2.0f, -0.5f};
  std::vector<std::int32_t> ids(2, -1);
  std::vector<float> weights(2, 0.0f);
  ForwardOptions options;
  options.topk_ids = given_ids.data();
  options.topk_weights = given_weights.data();
  options.out_topk_ids = ids.data();
  options.out_topk_weights = weights.data();
  // Weights used verbatim: 2 * (-8 sigma(-2)) - 0.5 * 4 sigma(2).
  expect_y(run(h, options), {-16 * sigma(-2) - 2 * sigma(2)}, DType::BF16);
  EXPECT_EQ(ids, given_ids);
  EXPECT_EQ(weights, given_weights);
}

// One routed expert plus two shared experts (Is = 2), H = 2, x = (1, 2), SiLU.
//   routed: W1 = (1, 0), W3 = (1, 0), W2 = (1, 1)^T: silu(1) * 1 -> (sigma(1), sigma(1)).
//   shared 0: gate rows (1, 0), (0, 1); up rows (0, 1), (1, 0); down = identity:
//     g = (1, 2), u = (2, 1) -> h = (2 silu(1), silu(2)) = (2 sigma(1), 2 sigma(2)).
//   shared 1: gate rows (-1, 0), (0, 0); up rows (1, 0), (0, 0); down rows (0, 0), (1, 0):
//     h = (silu(-1) * 1, 0) = (-sigma(-1), 0) -> (0, -sigma(-1)).
//   shared sum: (2 sigma(1), 2 sigma(2) - sigma(-1)).
Host with_shared(bool gated) {
  Host h(2, 1, 1, 1);
  h.config.shared = {/*count=*/2, /*intermediate=*/2, gated};
  h.set(h.router, {0, 0});
  h.set(h.w13, {1, 0, 1, 0});
  h.set(h.w2, {1, 1});
  h.set(h.shared_w13, {1, 0, 0, 1, 0, 1, 1, 0,  // shared 0: gate rows, then up rows
                       -1, 0, 0, 0, 1, 0, 0, 0});
  h.set(h.shared_w2, {1, 0, 0, 1,  // shared 0: [H, Is]
                      0, 0, 1, 0});
  if (gated) h.set(h.shared_gate, {1, -1});
  h.set(h.x, {1, 2});
  return h;
}

TEST(Reference, SharedExpertsUngated) {
  // routed + shared = (3 sigma(1), sigma(1) + 2 sigma(2) - sigma(-1)).
  expect_y(run(with_shared(false)), {3 * sigma(1), sigma(1) + 2 * sigma(2) - sigma(-1)},
           DType::BF16);
}

TEST(Reference, SharedExpertsGated) {
  // The gate x . (1, -1) = 1 - 2 = -1 scales the shared sum by sigma(-1).
  const double g = sigma(-1);
  expect_y(run(with_shared(true)),
           {sigma(1) + g * 2 * sigma(1), sigma(1) + g * (2 * sigma(2) - sigma(-1))}, DType::BF16);
}

TEST(Reference, BetaAccumulates) {
  for (DType dtype : kDTypes) {
    // y = moe(x) + 2 * y_in with y_in = (0.5, -1, 4, 0): moe is one_expert_y(silu).
    ForwardOptions options;
    options.beta = 2.0f;
    const double a = 2 * sigma(1), b = -0.5 * sigma(-1);
    expect_y(
        run(one_expert(dtype, Activation::SiluGated), options, to_bits({0.5, -1, 4, 0}, dtype)),
        {a + 1, -a - 2, b + 8, -b}, dtype);
  }
}

TEST(Reference, BetaZeroNeverReadsY) {
  for (DType dtype : kDTypes) {
    // y starts as NaN everywhere; beta = 0 must overwrite it, not compute NaN * 0.
    const std::uint16_t nan_bits = dtype == DType::BF16 ? 0x7FC0 : 0x7E00;
    const Output out =
        run(one_expert(dtype, Activation::SiluGated), {}, std::vector<std::uint16_t>(4, nan_bits));
    for (std::uint16_t bits : out.y) EXPECT_TRUE(std::isfinite(to_float(bits, dtype)));
    expect_y(out, one_expert_y(sigma(1), -sigma(-1)), dtype);
  }
}

TEST(Reference, ZeroTokensIsANoOp) {
  Host h = one_expert(DType::BF16, Activation::SiluGated);
  std::vector<std::uint16_t> y(4, 0x1234);
  std::vector<std::int32_t> ids(2, -1);
  ForwardOptions options;
  options.out_topk_ids = ids.data();
  EXPECT_TRUE(reference::forward(h.config, h.weights(), h.x.data(), y.data(), 0, options).ok());
  EXPECT_EQ(y, std::vector<std::uint16_t>(4, 0x1234));
  EXPECT_EQ(ids, std::vector<std::int32_t>(2, -1));
  // With no tokens, x and y are not needed.
  EXPECT_TRUE(reference::forward(h.config, h.weights(), nullptr, nullptr, 0).ok());
  EXPECT_TRUE(reference::route(h.config, h.weights(), nullptr, 0, nullptr, nullptr).ok());
}

// ---------------------------------------------------------------------------------------------
// ReferenceValidation: every bad argument gives InvalidArgument and leaves y untouched.

// A valid layer that needs every pointer: 4 experts in 2 groups, sigmoid with bias, one gated
// shared expert. All weights zero: only the checks matter.
Host full_layer() {
  Host h(/*hidden=*/2, /*intermediate=*/1, /*experts=*/4, /*top_k=*/2);
  Routing& r = h.config.routing;
  r.scoring = Scoring::Sigmoid;
  r.n_group = 2;
  r.topk_group = 1;
  r.use_correction_bias = true;
  h.config.shared = {1, 1, true};
  h.set(h.router, std::vector<float>(4 * 2, 0));
  h.set(h.w13, std::vector<float>(4 * 2 * 2, 0));
  h.set(h.w2, std::vector<float>(4 * 2, 0));
  h.bias.assign(4, 0);
  h.set(h.shared_w13, std::vector<float>(2 * 2, 0));
  h.set(h.shared_w2, std::vector<float>(2, 0));
  h.set(h.shared_gate, std::vector<float>(2, 0));
  h.set(h.x, {1, 1});
  return h;
}

struct Call {
  Host host = full_layer();
  const void* x = nullptr;
  void* y = nullptr;
  std::int64_t tokens = 1;
  ForwardOptions options;
  Weights weights;
};

TEST(ReferenceValidation, FullLayerIsValid) {
  Host h = full_layer();
  std::vector<std::uint16_t> y(2, 0x1234);
  const Status s = reference::forward(h.config, h.weights(), h.x.data(), y.data(), 1);
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(ReferenceValidation, BadArgumentsLeaveYUntouched) {
  const std::vector<std::int32_t> bad_low = {-1, 0}, bad_high = {0, 4}, good = {0, 1};
  const std::vector<float> weights = {1, 1};
  const std::vector<std::pair<std::string, std::function<void(Call&)>>> cases = {
      {"null x", [](Call& c) { c.x = nullptr; }},
      {"null y", [](Call& c) { c.y = nullptr; }},
      {"null router", [](Call& c) { c.weights.router = nullptr; }},
      {"null w13", [](Call& c) { c.weights.w13 = nullptr; }},
      {"null w2", [](Call& c) { c.weights.w2 = nullptr; }},
      {"null correction_bias", [](Call& c) { c.weights.correction_bias = nullptr; }},
      {"null shared_w13", [](Call& c) { c.weights.shared_w13 = nullptr; }},
      {"null shared_w2", [](Call& c) { c.weights.shared_w2 = nullptr; }},
      {"null shared_gate", [](Call& c) { c.weights.shared_gate = nullptr; }},
      {"negative tokens", [](Call& c) { c.tokens = -1; }},
      {"hidden 0", [](Call& c) { c.host.config.hidden = 0; }},
      {"intermediate 0", [](Call& c) { c.host.config.intermediate = 0; }},
      {"experts 0", [](Call& c) { c.host.config.experts = 0; }},
      {"top_k 0", [](Call& c) { c.host.config.top_k = 0; }},
      {"top_k > experts", [](Call& c) { c.host.config.top_k = 5; }},
      {"n_group 0", [](Call& c) { c.host.config.routing.n_group = 0; }},
      {"n_group 3 !| 4", [](Call& c) { c.host.config.routing.n_group = 3; }},
      {"topk_group > n_group", [](Call& c) { c.host.config.routing.topk_group = 3; }},
      {"topk_group 0", [](Call& c) { c.host.config.routing.topk_group = 0; }},
      // One group of two experts is kept, so three cannot be chosen.
      {"top_k > kept experts", [](Call& c) { c.host.config.top_k = 3; }},
      {"shared intermediate 0", [](Call& c) { c.host.config.shared.intermediate = 0; }},
      {"negative shared count", [](Call& c) { c.host.config.shared.count = -1; }},
      {"weights dtype", [](Call& c) { c.weights.dtype = DType::FP16; }},
      {"config dtype", [](Call& c) { c.host.config.dtype = DType::FP16; }},
      {"id -1",
       [&](Call& c) {
         c.options.topk_ids = bad_low.data();
         c.options.topk_weights = weights.data();
       }},
      {"id == experts",
       [&](Call& c) {
         c.options.topk_ids = bad_high.data();
         c.options.topk_weights = weights.data();
       }},
      {"ids without weights", [&](Call& c) { c.options.topk_ids = good.data(); }},
      {"weights without ids", [&](Call& c) { c.options.topk_weights = weights.data(); }},
  };
  for (const auto& [name, mutate] : cases) {
    std::vector<std::uint16_t> y(2, 0x1234);
    std::vector<std::int32_t> out_ids(2, -9);
    Call c;
    c.x = c.host.x.data();
    c.y = y.data();
    c.weights = c.host.weights();
    c.options.out_topk_ids = out_ids.data();
    mutate(c);
    double y_f64[2] = {-9, -9};
    const Status s =
        reference::forward(c.host.config, c.weights, c.x, c.y, c.tokens, c.options, y_f64);
    EXPECT_EQ(s.code(), StatusCode::InvalidArgument) << name;
    EXPECT_FALSE(s.message().empty()) << name;
    EXPECT_EQ(y, std::vector<std::uint16_t>(2, 0x1234)) << name;
    EXPECT_EQ(out_ids, std::vector<std::int32_t>(2, -9)) << name;
    EXPECT_EQ(y_f64[0], -9) << name;
  }
}

TEST(ReferenceValidation, MessagesNameTheArgument) {
  Host h = full_layer();
  h.config.hidden = 0;
  std::vector<std::uint16_t> y(2);
  Status s = reference::forward(h.config, h.weights(), h.x.data(), y.data(), 1);
  EXPECT_NE(s.message().find("hidden = 0"), std::string::npos) << s.message();
  h = full_layer();
  const std::vector<std::int32_t> ids = {0, 7};
  const std::vector<float> weights = {1, 1};
  ForwardOptions options;
  options.topk_ids = ids.data();
  options.topk_weights = weights.data();
  s = reference::forward(h.config, h.weights(), h.x.data(), y.data(), 1, options);
  EXPECT_NE(s.message().find("topk_ids[1] = 7"), std::string::npos) << s.message();
}

TEST(ReferenceValidation, ConfigIsCheckedEvenWithZeroTokens) {
  Host h = full_layer();
  h.config.experts = 0;
  std::vector<std::uint16_t> y(2);
  EXPECT_EQ(reference::forward(h.config, h.weights(), h.x.data(), y.data(), 0).code(),
            StatusCode::InvalidArgument);
}

TEST(ReferenceValidation, RouteChecksItsArguments) {
  Host h = full_layer();
  std::vector<std::int32_t> ids(2, -9);
  std::vector<float> weights(2, -9);
  const Weights w = h.weights();
  auto code = [&](const Config& config, const Weights& wt, const void* x, std::int64_t t,
                  std::int32_t* i,
                  float* f) { return reference::route(config, wt, x, t, i, f).code(); };
  // Zero weights: all scores 0.5, the groups tie -> group 0 -> experts 0, 1.
  EXPECT_EQ(code(h.config, w, h.x.data(), 1, ids.data(), weights.data()), StatusCode::Ok);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
  ids.assign(2, -9);
  EXPECT_EQ(code(h.config, w, nullptr, 1, ids.data(), weights.data()), StatusCode::InvalidArgument);
  EXPECT_EQ(code(h.config, w, h.x.data(), 1, nullptr, weights.data()), StatusCode::InvalidArgument);
  EXPECT_EQ(code(h.config, w, h.x.data(), 1, ids.data(), nullptr), StatusCode::InvalidArgument);
  EXPECT_EQ(code(h.config, w, h.x.data(), -1, ids.data(), weights.data()),
            StatusCode::InvalidArgument);
  Weights no_router = w;
  no_router.router = nullptr;
  EXPECT_EQ(code(h.config, no_router, h.x.data(), 1, ids.data(), weights.data()),
            StatusCode::InvalidArgument);
  Weights no_bias = w;
  no_bias.correction_bias = nullptr;
  EXPECT_EQ(code(h.config, no_bias, h.x.data(), 1, ids.data(), weights.data()),
            StatusCode::InvalidArgument);
  EXPECT_EQ(ids, std::vector<std::int32_t>(2, -9));  // failed calls wrote nothing
  // route() needs no expert weights.
  Weights router_only = no_router;
  router_only.router = w.router;
  router_only.w13 = router_only.w2 = nullptr;
  EXPECT_EQ(code(h.config, router_only, h.x.data(), 1, ids.data(), weights.data()), StatusCode::Ok);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
}

}  // namespace
}  // namespace flashmoe
