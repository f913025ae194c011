// FlashMoE CPU reference: float64 throughout, written to be obviously right rather than fast.
//
// Precision: every intermediate (logits, scores, FFN activations, expert sums) stays in double;
// only y (double -> float -> dtype) and the routing weights (to float, the type the GPU and the
// caller hold them in) are rounded. The GPU also rounds intermediates (e.g. the FFN hidden
// activations to 16-bit); tests compare it to this reference with a tolerance that covers that.
#include "flashmoe/reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace flashmoe::reference {
namespace {

using Bits = std::uint16_t;

std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

Bits float_to_bf16(float value) {
  const std::uint32_t bits = float_bits(value);
  // NaN: keep sign and top payload bits, force quiet so truncation cannot turn it into inf.
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<Bits>((bits >> 16) | 0x0040u);
  // Round to nearest even on the 16 dropped bits; a carry out of the mantissa bumps the
  // exponent, which also gives inf on overflow.
  return static_cast<Bits>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

Bits float_to_fp16(float value) {
  const std::uint32_t bits = float_bits(value);
  const auto sign = static_cast<Bits>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;   // NaN, quiet
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 (ties past 65504) or inf
  std::uint32_t mantissa;
  std::uint32_t shift;
  if (magnitude >= 0x38800000u) {
    // Normal half (>= 2^-14): rebias the exponent 127 -> 15 and drop 13 mantissa bits.
    mantissa = magnitude - 0x38000000u;
    shift = 13;
  } else {
    // Subnormal half: count units of 2^-24. value = m * 2^(e - 150) = (m >> (126 - e)) units.
    const std::uint32_t exponent = magnitude >> 23;
    if (exponent < 102) return sign;  // below 2^-25 (half the smallest subnormal): zero
    mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    shift = 126 - exponent;
  }
  std::uint32_t rounded = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1u << shift) - 1);
  const std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (rounded & 1u))) ++rounded;  // a carry is still right
  return static_cast<Bits>(sign | rounded);
}

float fp16_to_float(Bits h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf, NaN
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

template <typename... Args>
Status invalid(fmt::format_string<Args...> format, Args&&... args) {
  return Status(StatusCode::InvalidArgument, fmt::format(format, std::forward<Args>(args)...));
}

Status check_config(const Config& c) {
  const Routing& r = c.routing;
  if (c.dtype != DType::BF16 && c.dtype != DType::FP16)
    return invalid("dtype = {} is not a DType", static_cast<int>(c.dtype));
  if (c.activation != Activation::SiluGated && c.activation != Activation::GeluGated &&
      c.activation != Activation::GeluTanhGated)
    return invalid("activation = {} is not an Activation", static_cast<int>(c.activation));
  if (r.scoring != Scoring::Softmax && r.scoring != Scoring::Sigmoid)
    return invalid("routing.scoring = {} is not a Scoring", static_cast<int>(r.scoring));
  if (c.hidden <= 0) return invalid("hidden = {} must be positive", c.hidden);
  if (c.intermediate <= 0) return invalid("intermediate = {} must be positive", c.intermediate);
  if (c.experts <= 0) return invalid("experts = {} must be positive", c.experts);
  if (c.top_k <= 0) return invalid("top_k = {} must be positive", c.top_k);
  if (c.top_k > c.experts)
    return invalid("top_k = {} must not exceed experts = {}", c.top_k, c.experts);
  if (r.n_group <= 0) return invalid("routing.n_group = {} must be positive", r.n_group);
  if (c.experts % r.n_group != 0)
    return invalid("routing.n_group = {} must divide experts = {}", r.n_group, c.experts);
  if (r.topk_group <= 0 || r.topk_group > r.n_group)
    return invalid("routing.topk_group = {} must lie in [1, n_group = {}]", r.topk_group,
                   r.n_group);
  if (c.top_k > r.topk_group * (c.experts / r.n_group))
    return invalid("top_k = {} exceeds the {} experts of topk_group = {} groups", c.top_k,
                   r.topk_group * (c.experts / r.n_group), r.topk_group);
  if (c.shared.count < 0) return invalid("shared.count = {} must be >= 0", c.shared.count);
  if (c.shared.count > 0 && c.shared.intermediate <= 0)
    return invalid("shared.intermediate = {} must be positive when shared.count = {}",
                   c.shared.intermediate, c.shared.count);
  return Status();
}

// The router (and bias) are needed only when the routing is computed; the expert weights only
// by forward.
Status check_weights(const Config& c, const Weights& w, bool need_router, bool need_experts) {
  if (w.dtype != c.dtype)
    return invalid("weights.dtype = {} must equal config.dtype = {}", static_cast<int>(w.dtype),
                   static_cast<int>(c.dtype));
  if (need_router && w.router == nullptr) return invalid("weights.router is null");
  if (need_router && c.routing.use_correction_bias && w.correction_bias == nullptr)
    return invalid("weights.correction_bias is null but routing.use_correction_bias is set");
  if (!need_experts) return Status();
  if (w.w13 == nullptr) return invalid("weights.w13 is null");
  if (w.w2 == nullptr) return invalid("weights.w2 is null");
  if (c.shared.count > 0 && (w.shared_w13 == nullptr || w.shared_w2 == nullptr))
    return invalid("weights.shared_w13/shared_w2 are null but shared.count = {}", c.shared.count);
  if (c.shared.count > 0 && c.shared.gated && w.shared_gate == nullptr)
    return invalid("weights.shared_gate is null but shared.gated is set");
  return Status();
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

double activate(double g, Activation act) {
  constexpr double kPi = 3.14159265358979323846;
  switch (act) {
    case Activation::GeluGated:
      return 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)));
    case Activation::GeluTanhGated:
      return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / kPi) * (g + 0.044715 * g * g * g)));
    case Activation::SiluGated:
      break;
  }
  return g * sigmoid(g);
}

// sum_i row[i] * x[i], row stored in dtype.
double dot(const Bits* row, const std::vector<double>& x, DType dtype) {
  double sum = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i)
    sum += static_cast<double>(to_float(row[i], dtype)) * x[i];
  return sum;
}

// Indices of the n largest values among the allowed ones, best first, ties to the lower index.
// NaN ranks last so the comparison stays a strict weak order.
std::vector<int> top_n(const std::vector<double>& values, const std::vector<bool>& allowed, int n) {
  std::vector<int> order;
  for (int i = 0; i < static_cast<int>(values.size()); ++i)
    if (allowed[i]) order.push_back(i);
  const auto key = [&](int i) {
    return std::isnan(values[i]) ? -std::numeric_limits<double>::infinity() : values[i];
  };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
  order.resize(std::min<std::size_t>(static_cast<std::size_t>(n), order.size()));
  return order;
}

// The steps of Routing (config.hpp) for one token given as float64.
void route_token(const Config& c, const Weights& w, const std::vector<double>& x, std::int32_t* ids,
                 float* weights) {
  const Routing& r = c.routing;
  const int experts = c.experts;
  const auto* router = static_cast<const Bits*>(w.router);
  std::vector<double> score(experts);
  for (int e = 0; e < experts; ++e)
    score[e] = dot(router + static_cast<std::size_t>(e) * c.hidden, x, c.dtype);  // logits
  if (r.scoring == Scoring::Softmax) {
    const double max = *std::max_element(score.begin(), score.end());
    double sum = 0.0;
    for (double& s : score) sum += (s = std::exp(s - max));
    for (double& s : score) s /= sum;
  } else {
    for (double& s : score) s = sigmoid(s);
  }
  std::vector<double> choice = score;
  if (r.use_correction_bias)
    for (int e = 0; e < experts; ++e) choice[e] += static_cast<double>(w.correction_bias[e]);

  std::vector<bool> kept(experts, true);
  if (r.n_group > 1) {
    const int size = experts / r.n_group;
    std::vector<double> group_score(r.n_group, 0.0);
    for (int g = 0; g < r.n_group; ++g) {
      std::vector<bool> in_group(experts, false);
      std::fill(in_group.begin() + g * size, in_group.begin() + (g + 1) * size, true);
      for (int e : top_n(choice, in_group, r.use_correction_bias ? 2 : 1))
        group_score[g] += choice[e];
    }
    std::fill(kept.begin(), kept.end(), false);
    for (int g : top_n(group_score, std::vector<bool>(r.n_group, true), r.topk_group))
      std::fill(kept.begin() + g * size, kept.begin() + (g + 1) * size, true);
  }

  const std::vector<int> chosen = top_n(choice, kept, c.top_k);
  double sum = 0.0;
  for (int e : chosen) sum += score[e];
  for (int k = 0; k < c.top_k; ++k) {
    const double weight = r.renormalize ? score[chosen[k]] / sum : score[chosen[k]];
    ids[k] = chosen[k];
    weights[k] = static_cast<float>(weight * static_cast<double>(r.routed_scaling_factor));
  }
}

std::vector<double> load_token(const void* x, std::int64_t t, int hidden, DType dtype) {
  const Bits* row = static_cast<const Bits*>(x) + static_cast<std::size_t>(t) * hidden;
  std::vector<double> out(hidden);
  for (int h = 0; h < hidden; ++h) out[h] = to_float(row[h], dtype);
  return out;
}

// out += scale * W2 (act(W1 x) * (W3 x)) for one expert: w13 [2I, H], w2 [H, I].
void ffn(const Bits* w13, const Bits* w2, int inter, const Config& c, const std::vector<double>& x,
         double scale, std::vector<double>& out) {
  const std::size_t hidden = static_cast<std::size_t>(c.hidden);
  std::vector<double> act(inter);
  for (int i = 0; i < inter; ++i) {
    const double gate = dot(w13 + i * hidden, x, c.dtype);
    const double up = dot(w13 + (inter + i) * hidden, x, c.dtype);
    act[i] = activate(gate, c.activation) * up;
  }
  for (std::size_t h = 0; h < hidden; ++h) {
    double sum = 0.0;
    for (int i = 0; i < inter; ++i)
      sum += static_cast<double>(to_float(w2[h * inter + i], c.dtype)) * act[i];
    out[h] += scale * sum;
  }
}

}  // namespace

float to_float(std::uint16_t bits, DType dtype) noexcept {
  return dtype == DType::FP16 ? fp16_to_float(bits)
                              : bits_float(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t from_float(float value, DType dtype) noexcept {
  return dtype == DType::FP16 ? float_to_fp16(value) : float_to_bf16(value);
}

Status route(const Config& config, const Weights& host_weights, const void* x,
             std::int64_t num_tokens, std::int32_t* ids, float* weights) {
  if (Status s = check_config(config); !s.ok()) return s;
  if (Status s = check_weights(config, host_weights, true, false); !s.ok()) return s;
  if (num_tokens < 0) return invalid("num_tokens = {} must be >= 0", num_tokens);
  if (num_tokens == 0) return Status();
  if (x == nullptr) return invalid("x is null");
  if (ids == nullptr || weights == nullptr) return invalid("ids/weights output is null");
  const std::size_t k = static_cast<std::size_t>(config.top_k);
  for (std::int64_t t = 0; t < num_tokens; ++t)
    route_token(config, host_weights, load_token(x, t, config.hidden, config.dtype), ids + t * k,
                weights + t * k);
  return Status();
}

Status forward(const Config& config, const Weights& host_weights, const void* x, void* y,
               std::int64_t num_tokens, const ForwardOptions& options, double* y_f64) {
  const bool given = options.topk_ids != nullptr || options.topk_weights != nullptr;
  if (Status s = check_config(config); !s.ok()) return s;
  if (Status s = check_weights(config, host_weights, !given, true); !s.ok()) return s;
  if (given && (options.topk_ids == nullptr || options.topk_weights == nullptr))
    return invalid("options.topk_ids and options.topk_weights must be both set or both null");
  if (num_tokens < 0) return invalid("num_tokens = {} must be >= 0", num_tokens);
  if (num_tokens == 0) return Status();
  if (x == nullptr) return invalid("x is null");
  if (y == nullptr) return invalid("y is null");

  // The routing weights are floats here whichever way they came, as they are on the GPU.
  const Config& c = config;
  const Weights& w = host_weights;
  const std::size_t count = static_cast<std::size_t>(num_tokens) * c.top_k;
  std::vector<std::int32_t> ids(count);
  std::vector<float> weights(count);
  if (given) {
    for (std::size_t i = 0; i < count; ++i) {
      if (options.topk_ids[i] < 0 || options.topk_ids[i] >= c.experts)
        return invalid("options.topk_ids[{}] = {} is outside [0, experts = {})", i,
                       options.topk_ids[i], c.experts);
    }
    std::copy(options.topk_ids, options.topk_ids + count, ids.begin());
    std::copy(options.topk_weights, options.topk_weights + count, weights.begin());
  } else if (Status s = route(c, w, x, num_tokens, ids.data(), weights.data()); !s.ok()) {
    return s;
  }
  if (options.out_topk_ids != nullptr) std::copy(ids.begin(), ids.end(), options.out_topk_ids);
  if (options.out_topk_weights != nullptr)
    std::copy(weights.begin(), weights.end(), options.out_topk_weights);

  const std::size_t hidden = static_cast<std::size_t>(c.hidden);
  const std::size_t inter = static_cast<std::size_t>(c.intermediate);
  const std::size_t shared_inter = static_cast<std::size_t>(c.shared.intermediate);
  const auto* w13 = static_cast<const Bits*>(w.w13);
  const auto* w2 = static_cast<const Bits*>(w.w2);
  Bits* y_bits = static_cast<Bits*>(y);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const std::vector<double> xt = load_token(x, t, c.hidden, c.dtype);
    std::vector<double> out(hidden, 0.0);
    for (int k = 0; k < c.top_k; ++k) {
      const std::size_t e = static_cast<std::size_t>(ids[t * c.top_k + k]);
      ffn(w13 + e * 2 * inter * hidden, w2 + e * hidden * inter, c.intermediate, c, xt,
          weights[t * c.top_k + k], out);
    }
    if (c.shared.count > 0) {
      std::vector<double> shared(hidden, 0.0);
      for (std::size_t s = 0; s < static_cast<std::size_t>(c.shared.count); ++s)
        ffn(static_cast<const Bits*>(w.shared_w13) + s * 2 * shared_inter * hidden,
            static_cast<const Bits*>(w.shared_w2) + s * hidden * shared_inter,
            c.shared.intermediate, c, xt, 1.0, shared);
      const double gate =
          c.shared.gated ? sigmoid(dot(static_cast<const Bits*>(w.shared_gate), xt, c.dtype)) : 1.0;
      for (std::size_t h = 0; h < hidden; ++h) out[h] += gate * shared[h];
    }
    for (std::size_t h = 0; h < hidden; ++h) {
      const std::size_t i = static_cast<std::size_t>(t) * hidden + h;
      double value = out[h];
      // beta == 0 must not read y: it may be uninitialised (and NaN * 0 is NaN).
      if (options.beta != 0.0f)
        value += static_cast<double>(options.beta) * to_float(y_bits[i], c.dtype);
      if (y_f64 != nullptr) y_f64[i] = value;
      y_bits[i] = from_float(static_cast<float>(value), c.dtype);
    }
  }
  return Status();
}

}  // namespace flashmoe::reference
