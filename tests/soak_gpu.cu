// flashmoe_soak: a randomized soak of the GPU forward against the float64 CPU reference.
//
//   flashmoe_soak --seconds N [--seed S] [--max-weight-mb M] [--shape I]
//
// Until N seconds are spent it draws a shape (H, I, E, K, dtype, activation, routing options,
// max_tokens; weights bounded by M MB so that the loop sees many shapes), runs several forwards
// on it with random engine options (token counts near the kernel switches, a device token
// count, caller routing with repeated experts, beta, x == y, programmatic dependent launch, a
// scratch shared with a Layer of another shape, weights re-bound with set_weights, a scratch for
// fewer tokens than max_tokens so that long forwards run as several launches), and checks each
// forward: the device status, every live row of y written, padding rows and their routing rows
// untouched, and a sample of tokens against the reference run with the routing the GPU chose
// (near-ties in the routing make the GPU's choice, not the reference's, the one to check the
// output against; the choice itself is checked up to those near-ties). Shape I of a seed is drawn
// from the seed and I alone: `--seed S --shape I` replays a failure from that shape on.
// Exit status: 0 when every check passed (or there is no GPU), 1 on any mismatch or device
// error, 2 on bad arguments.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "flashmoe/flashmoe.hpp"
#include "test_util.hpp"
#include "testing.hpp"
#include "tile_choice.hpp"

namespace {

using flashmoe::Activation;
using flashmoe::Config;
using flashmoe::DType;
using flashmoe::ForwardOptions;
using flashmoe::Layer;
using flashmoe::Scoring;
using flashmoe::Status;
using flashmoe::StatusCode;
using flashmoe_test::DeviceBuffer;
using flashmoe_test::Model;
using Clock = std::chrono::steady_clock;
using Rng = std::mt19937_64;

// Every Layer gets this watchdog, so that a hang inside the kernel ends as DeviceTimeout.
constexpr std::uint32_t kWatchdogMs = 2000;
// A GPU section (create, forward, device_status, copies) that outlasts this is a hang the
// kernel's watchdog missed: the soak says what it was doing and exits.
constexpr int kHangSeconds = 120;
constexpr int kMaxSampled = 8;  // tokens per forward checked against the reference
constexpr std::size_t kMaxScratchBytes = std::size_t{8} << 30;
constexpr double kCompanionWeightBytes = 64.0 * (1 << 20);
constexpr double kSmallWeightBytes = 128.0 * (1 << 20);  // few-block grids and re-binding
constexpr int kMaxPrintedProblems = 6;
constexpr std::int32_t kIdSentinel = -7;  // routing rows of padding tokens must keep these
constexpr float kWeightSentinel = -7.0f;

// ---- Arguments ------------------------------------------------------------------------------

struct Args {
  double seconds = 0;
  std::uint64_t seed = 0;
  double max_weight_mb = 768;
  int first_shape = 0;
};

void usage() {
  std::fprintf(stderr,
               "usage: flashmoe_soak --seconds N [--seed S] [--max-weight-mb M] [--shape I]\n"
               "  --seconds N        time budget (required)\n"
               "  --seed S           seed of the run (decimal or 0x hex; default: random)\n"
               "  --max-weight-mb M  bound on one shape's weights in MB (default 768)\n"
               "  --shape I          start at shape I of the seed (replays a failure)\n");
}

bool parse_args(int argc, char** argv, Args& a) {
  bool have_seconds = false, have_seed = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (arg == "-h" || arg == "--help") {
      usage();
      std::exit(0);
    }
    const std::size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    if (arg != "--seconds" && arg != "--seed" && arg != "--max-weight-mb" && arg != "--shape") {
      std::fprintf(stderr, "flashmoe_soak: unknown argument '%s'\n", argv[i]);
      usage();
      return false;
    }
    if (eq == std::string::npos && i + 1 < argc) value = argv[++i];
    char* end = nullptr;
    errno = 0;
    if (arg == "--seconds") {
      a.seconds = std::strtod(value.c_str(), &end);
      have_seconds = true;
      if (!(a.seconds > 0) || !std::isfinite(a.seconds)) end = nullptr;
    } else if (arg == "--seed") {
      a.seed = std::strtoull(value.c_str(), &end, 0);
      have_seed = true;
    } else if (arg == "--max-weight-mb") {
      a.max_weight_mb = std::strtod(value.c_str(), &end);
      if (!(a.max_weight_mb >= 1) || !std::isfinite(a.max_weight_mb)) end = nullptr;
    } else {  // --shape
      const long v = std::strtol(value.c_str(), &end, 10);
      if (v < 0 || v > INT_MAX) end = nullptr;
      a.first_shape = static_cast<int>(v);
    }
    if (value.empty() || end == nullptr || *end != '\0' || errno != 0) {
      std::fprintf(stderr, "flashmoe_soak: bad value '%s' for %s\n", value.c_str(), arg.c_str());
      usage();
      return false;
    }
  }
  if (!have_seconds) {
    std::fprintf(stderr, "flashmoe_soak: --seconds is required\n");
    usage();
    return false;
  }
  if (!have_seed) a.seed = flashmoe_test::fresh_seed();
  return true;
}

// ---- Hang guard -----------------------------------------------------------------------------

// The kernel's watchdog turns a wait that never ends into DeviceTimeout; anything it cannot
// catch (a spin outside its waits, a driver hang) would stall the soak forever. This thread
// ends the process instead, naming what was running and how to replay it.
class HangGuard {
 public:
  HangGuard() : thread_([this] { run(); }) {}
  ~HangGuard() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  HangGuard(const HangGuard&) = delete;
  HangGuard& operator=(const HangGuard&) = delete;

  void arm(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    what_ = what;
    deadline_ = Clock::now() + std::chrono::seconds(kHangSeconds);
    armed_ = true;
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::milliseconds(500));
      if (armed_ && Clock::now() > deadline_) {
        std::fprintf(stderr, "flashmoe_soak: FAIL: HANG: no progress for %d s during %s\n",
                     kHangSeconds, what_.c_str());
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(1);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false, armed_ = false;
  Clock::time_point deadline_{};
  std::string what_;
  std::thread thread_;  // last: starts once the members above exist
};

// ---- Random draws ---------------------------------------------------------------------------

std::uint64_t splitmix(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

int uniform_int(Rng& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

float uniform_float(Rng& rng, float lo, float hi) {
  return std::uniform_real_distribution<float>(lo, hi)(rng);
}

// lo..hi with every octave equally likely: small values are drawn as often as large ones.
int log_uniform(Rng& rng, int lo, int hi) {
  const double v =
      std::exp(std::uniform_real_distribution<double>(std::log(lo), std::log(hi + 1.0))(rng));
  return std::clamp(static_cast<int>(v), lo, hi);
}

template <typename T>
T pick(Rng& rng, const std::vector<T>& values) {
  return values[static_cast<std::size_t>(uniform_int(rng, 0, static_cast<int>(values.size()) - 1))];
}

// H or I: a multiple of 8 in [8, 4096]; a quarter of them model sizes.
int draw_dim(Rng& rng) {
  if (chance(rng, 0.25)) return pick<int>(rng, {64, 128, 256, 512, 768, 1024, 1408, 2048, 4096});
  return 8 * log_uniform(rng, 1, 512);
}

int draw_experts(Rng& rng) {
  if (chance(rng, 0.1)) return 1;
  if (chance(rng, 0.3)) return pick<int>(rng, {2, 4, 8, 16, 32, 64, 128, 256, 512});
  return log_uniform(rng, 1, 512);
}

double weight_bytes(const Config& c) {
  return 2.0 * c.experts * c.hidden * (1.0 + 3.0 * c.intermediate);
}

// One layer's configuration plus how its weights are drawn.
struct ShapeDraw {
  Config config;
  float router_scale = 1.0f;  // router logits of std ~2 * router_scale
  int masked = 0;             // experts whose correction bias is -inf
  int max_blocks = 0;
  int tokens_per_launch = 0;  // LayerOptions::tokens_per_launch (0: max_tokens)
};

ShapeDraw draw_shape(Rng& rng, double max_weight_bytes) {
  ShapeDraw s;
  Config& c = s.config;
  c.hidden = draw_dim(rng);
  c.intermediate = draw_dim(rng);
  c.experts = draw_experts(rng);
  const int kmax = std::min(c.experts, 16);
  c.top_k = chance(rng, 0.15) ? kmax : uniform_int(rng, 1, kmax);
  c.dtype = chance(rng, 0.5) ? DType::BF16 : DType::FP16;
  c.activation = static_cast<Activation>(uniform_int(rng, 0, 2));
  // The routing options the GPU runs: no grouped top-k, no shared experts (check_gpu_support).
  c.routing.scoring = chance(rng, 0.5) ? Scoring::Softmax : Scoring::Sigmoid;
  c.routing.renormalize = chance(rng, 0.5);
  c.routing.routed_scaling_factor = chance(rng, 0.5) ? 1.0f : uniform_float(rng, 0.25f, 3.0f);
  c.routing.use_correction_bias = chance(rng, 1.0 / 3.0);
  const double u = std::uniform_real_distribution<double>(0, 1)(rng);
  if (u < 0.4) {  // past the prefill switch (32 rows per expert), so every kernel can run
    const double switch_t = 32.0 * c.experts / c.top_k + 1;
    const double f =
        std::exp(std::uniform_real_distribution<double>(std::log(0.7), std::log(4))(rng));
    c.max_tokens = std::clamp(static_cast<int>(switch_t * f), 1, 8192);
  } else {
    c.max_tokens = u < 0.45 ? log_uniform(rng, 4097, 8192) : log_uniform(rng, 1, 4096);
  }
  // Bounded weights keep shapes coming: halve E or I (at random) until they fit.
  while (weight_bytes(c) > max_weight_bytes) {
    const bool can_e = c.experts > 1, can_i = c.intermediate > 8;
    if (!can_e && !can_i) break;
    if (can_e && (!can_i || chance(rng, 0.5))) {
      c.experts /= 2;
      c.top_k = std::min(c.top_k, c.experts);
    } else {
      c.intermediate = std::max(8, c.intermediate / 16 * 8);
    }
  }
  while (flashmoe::scratch_bytes(c) > kMaxScratchBytes && c.max_tokens > 1) c.max_tokens /= 2;
  s.router_scale = chance(rng, 0.7) ? 1.0f : pick<float>(rng, {0.25f, 3.0f});
  if (c.routing.use_correction_bias && c.experts > 1 && chance(rng, 0.25)) {
    s.masked = uniform_int(rng, 1, c.experts - 1);  // may leave fewer than K selectable
  }
  if (weight_bytes(c) <= kSmallWeightBytes && chance(rng, 0.1)) {
    s.max_blocks = pick<int>(rng, {1, 2, 3, 7, 17, 50});
  }
  // Sometimes a smaller scratch: forwards longer than this run as several launches.
  if (c.max_tokens > 1 && chance(rng, 0.15)) {
    s.tokens_per_launch = log_uniform(rng, 1, c.max_tokens - 1);
  }
  return s;
}

const char* dtype_name(DType d) { return d == DType::BF16 ? "bf16" : "fp16"; }

std::string describe(const ShapeDraw& s) {
  const Config& c = s.config;
  static const char* const acts[] = {"silu", "gelu", "gelu_tanh"};
  std::string out =
      fmt::format("{} H={} I={} E={} K={} {} {} {} scale={:.3g}", dtype_name(c.dtype), c.hidden,
                  c.intermediate, c.experts, c.top_k, acts[static_cast<int>(c.activation)],
                  c.routing.scoring == Scoring::Softmax ? "softmax" : "sigmoid",
                  c.routing.renormalize ? "renorm" : "no-renorm", c.routing.routed_scaling_factor);
  if (c.routing.use_correction_bias) {
    out += s.masked > 0 ? fmt::format(" bias(-inf x{})", s.masked) : std::string(" bias");
  }
  if (s.router_scale != 1.0f) out += fmt::format(" router*{:g}", s.router_scale);
  out += fmt::format(" max_tokens={}", c.max_tokens);
  if (s.max_blocks > 0) out += fmt::format(" max_blocks={}", s.max_blocks);
  if (s.tokens_per_launch > 0) out += fmt::format(" tokens_per_launch={}", s.tokens_per_launch);
  out += fmt::format(" weights={:.1f}MB", weight_bytes(c) / (1 << 20));
  return out;
}

// ---- A Layer under test ---------------------------------------------------------------------

struct Subject {
  std::string name;  // "main" or "companion"
  ShapeDraw draw;
  Model model;
  Layer layer;
  bool shared_scratch = false, rebound = false;
  // Kernel switch points of this Layer (tile_choice.hpp), and T values near tile boundaries.
  std::int64_t thin_max = 0, tall_min = 0, prefill_min = 0;
  std::vector<int> boundaries;
  DeviceBuffer x, y, ids_out, wts_out, ids_in, wts_in, words;  // words: [count, status]
  // What its forwards saw.
  int forwards = 0, failures = 0, t_min = INT_MAX, t_max = 0;
  double max_err = 0;
  std::set<std::string> kernels;

  const Config& config() const { return model.config; }
  std::string kernel_of(int T) const {
    const Config& c = config();
    if (T >= prefill_min) return "prefill";
    static const char* const decode[] = {"d16", "d32", "d48"};
    return decode[flashmoe::detail::decode_variant(T, thin_max, tall_min)];
  }
};

// Builds the model, the Layer and the per-forward buffers. Returns an error message or "".
std::string create_subject(Subject& s, const ShapeDraw& draw, Rng& rng, void* scratch,
                           std::size_t scratch_bytes) {
  s.draw = draw;
  const Config& c = draw.config;
  s.model = flashmoe_test::make_model(c, rng, draw.router_scale);
  if (draw.masked > 0) {
    std::vector<int> ids(c.experts);
    for (int e = 0; e < c.experts; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int i = 0; i < draw.masked; ++i) s.model.bias[ids[i]] = -INFINITY;
    s.model.d_bias = flashmoe_test::upload(s.model.bias);
  }
  if (s.model.d_router.get() == nullptr || s.model.d_w13.get() == nullptr ||
      s.model.d_w2.get() == nullptr || s.model.d_bias.get() == nullptr) {
    (void)cudaGetLastError();
    return "cudaMalloc of the weights failed";
  }
  flashmoe::LayerOptions options;
  options.watchdog_ms = kWatchdogMs;
  options.max_blocks = draw.max_blocks;
  options.tokens_per_launch = draw.tokens_per_launch;
  options.scratch = scratch;
  options.scratch_bytes = scratch_bytes;
  s.shared_scratch = scratch != nullptr;
  if (const Status st = Layer::create(c, s.model.device_weights(), s.layer, options); !st.ok()) {
    return "Layer::create: " + st.to_string();
  }
  const std::size_t cells = static_cast<std::size_t>(c.max_tokens) * c.hidden;
  const std::size_t pairs = static_cast<std::size_t>(c.max_tokens) * c.top_k;
  s.x = DeviceBuffer(cells * 2);
  s.y = DeviceBuffer(cells * 2);
  s.ids_out = DeviceBuffer(pairs * 4);
  s.wts_out = DeviceBuffer(pairs * 4);
  s.ids_in = DeviceBuffer(pairs * 4);
  s.wts_in = DeviceBuffer(pairs * 4);
  s.words = DeviceBuffer(256);
  for (const DeviceBuffer* b :
       {&s.x, &s.y, &s.ids_out, &s.wts_out, &s.ids_in, &s.wts_in, &s.words}) {
    if (b->get() == nullptr) {
      (void)cudaGetLastError();
      return "cudaMalloc of the forward buffers failed";
    }
  }

  using namespace flashmoe::detail;
  const int E = c.experts, K = c.top_k;
  s.thin_max = thin_decode_max_tokens(c.max_tokens, K, E, c.hidden, c.intermediate);
  s.tall_min = tall_decode_min_tokens(c.max_tokens, K, E);
  // The first prefill T (runs_prefill_kernel), on every device.
  s.prefill_min = static_cast<std::int64_t>(kDecodeTileM) * E / K + 1;
  std::set<std::int64_t> b = {s.thin_max,  s.thin_max + 1,     s.tall_min - 1,
                              s.tall_min,  s.prefill_min - 1, s.prefill_min};
  // Where experts average j full m-tiles of each height under uniform routing.
  for (int tile_m : {kThinDecodeTileM, kDecodeTileM, kTallDecodeTileM, kMaxTileM}) {
    for (int j = 1; j <= 3; ++j) b.insert((static_cast<std::int64_t>(j) * tile_m * E + K - 1) / K);
  }
  s.boundaries.clear();
  for (std::int64_t t : b) {
    if (t >= 1 && t <= c.max_tokens) s.boundaries.push_back(static_cast<int>(t));
  }
  return {};
}

// Fresh copies of the weights at new addresses, bound with set_weights: the Layer must
// re-encode everything that depends on the pointers. The old copies are freed afterwards.
std::string rebind_weights(Subject& s, cudaStream_t stream) {
  Model& m = s.model;
  DeviceBuffer router(m.d_router.bytes()), w13(m.d_w13.bytes()), w2(m.d_w2.bytes()),
      bias(m.d_bias.bytes());
  for (auto [dst, src] : {std::pair{&router, &m.d_router}, std::pair{&w13, &m.d_w13},
                          std::pair{&w2, &m.d_w2}, std::pair{&bias, &m.d_bias}}) {
    if (dst->get() == nullptr || cudaMemcpyAsync(dst->get(), src->get(), src->bytes(),
                                                 cudaMemcpyDeviceToDevice, stream) != cudaSuccess) {
      (void)cudaGetLastError();
      return "copying the weights for set_weights failed";
    }
  }
  if (cudaStreamSynchronize(stream) != cudaSuccess) return "cudaStreamSynchronize failed";
  flashmoe::Weights w = m.device_weights();
  w.router = router.get();
  w.w13 = w13.get();
  w.w2 = w2.get();
  if (m.config.routing.use_correction_bias) w.correction_bias = bias.get<float>();
  if (const Status st = s.layer.set_weights(w); !st.ok()) return "set_weights: " + st.to_string();
  if (s.layer.weights().w13 != w.w13) return "set_weights kept the old w13 pointer";
  // Earlier forwards are complete (each was synchronised): the old copies can go.
  std::swap(m.d_router, router);
  std::swap(m.d_w13, w13);
  std::swap(m.d_w2, w2);
  std::swap(m.d_bias, bias);
  s.rebound = true;
  return {};
}

// ---- One forward ----------------------------------------------------------------------------

struct ForwardDraw {
  int T = 0, live = 0;
  bool has_count = false;
  int count = 0;  // the device token count (clamped to [0, T] by the kernel)
  bool caller = false, repeats = false, inplace = false, programmatic = false;
  float beta = 0.0f;

  std::string describe() const {
    std::string out = fmt::format("T={}", T);
    if (has_count) out += fmt::format(" count={} (live {})", count, live);
    if (caller) out += repeats ? " caller-routing(repeats)" : " caller-routing";
    if (beta != 0.0f) out += fmt::format(" beta={:.3g}", beta);
    if (inplace) out += " in-place";
    if (programmatic) out += " programmatic";
    return out;
  }
};

// Skewed toward small T, toward each kernel's range of T (the 48-row and prefill kernels need
// the larger T that a log-uniform draw rarely reaches), toward the kernel switches and tile
// boundaries, and toward max_tokens.
int draw_tokens(const Subject& s, Rng& rng) {
  const int M = s.config().max_tokens;
  const double u = std::uniform_real_distribution<double>(0, 1)(rng);
  int T = 1;
  if (u < 0.25) {
    T = log_uniform(rng, 1, std::min(M, 64));
  } else if (u < 0.40) {
    T = log_uniform(rng, 1, M);
  } else if (u < 0.60) {
    std::vector<std::pair<int, int>> ranges;  // non-empty [lo, hi] of each kernel, within M
    const std::int64_t bounds[] = {1, s.thin_max + 1, s.tall_min, s.prefill_min, M + 1};
    for (int k = 0; k < 4; ++k) {
      const std::int64_t lo = std::max<std::int64_t>(bounds[k], 1);
      const std::int64_t hi = std::min<std::int64_t>(bounds[k + 1] - 1, M);
      if (lo <= hi) ranges.emplace_back(static_cast<int>(lo), static_cast<int>(hi));
    }
    const auto [lo, hi] = ranges.empty() ? std::pair{1, M} : pick(rng, ranges);
    T = uniform_int(rng, lo, hi);
  } else if (u < 0.80 && !s.boundaries.empty()) {
    T = pick(rng, s.boundaries) + uniform_int(rng, -1, 1);
  } else if (u < 0.90) {  // router chunks (4, 64 tokens) and m-tile heights
    const int q = pick<int>(rng, {4, 16, 32, 48, 64});
    T = q * uniform_int(rng, 1, std::max(1, M / q)) + uniform_int(rng, -1, 1);
  } else {
    T = M - uniform_int(rng, 0, std::min(M - 1, 2));
  }
  return std::clamp(T, 1, M);
}

ForwardDraw draw_forward(const Subject& s, Rng& rng) {
  ForwardDraw d;
  d.T = draw_tokens(s, rng);
  d.live = d.T;
  if (chance(rng, 0.2)) {
    const int T = d.T;
    d.has_count = true;
    d.count = pick<int>(rng, {0, 1, T / 2, T - 1, T, T + 1, T + 2, uniform_int(rng, 0, T + 2)});
    d.live = std::clamp(d.count, 0, T);
  }
  d.caller = chance(rng, 0.15);
  d.repeats = d.caller && s.config().top_k >= 2 && chance(rng, 0.4);
  if (chance(rng, 0.25)) {
    d.beta = pick<float>(rng, {1.0f, -1.0f, 0.5f, uniform_float(rng, -2.0f, 2.0f)});
    if (d.beta == 0.0f) d.beta = 0.75f;
  }
  d.inplace = chance(rng, 0.15);
  d.programmatic = chance(rng, 0.3);
  return d;
}

std::vector<int> sample_tokens(int live, Rng& rng) {
  std::set<int> pick = {0, live - 1};  // first and last live token always
  while (static_cast<int>(pick.size()) < std::min(live, kMaxSampled)) {
    pick.insert(uniform_int(rng, 0, live - 1));
  }
  return {pick.begin(), pick.end()};
}

// "" when the GPU's routing of one token is the reference's up to near-ties; else what differs.
// Experts may differ only where their choice scores (score + bias) are within rounding of the
// K-th best; -inf (masked) experts tie exactly and go to the lower id. The weights are checked
// against the reference's scores of the experts the GPU chose.
std::string check_routing_token(const Model& m, const std::uint16_t* x, const std::int32_t* ids,
                                const float* weights) {
  const Config& c = m.config;
  const int E = c.experts, K = c.top_k;
  Config all = c;  // the full ranking with raw scores
  all.top_k = E;
  all.routing.renormalize = false;
  all.routing.routed_scaling_factor = 1.0f;
  std::vector<std::int32_t> order(E);
  std::vector<float> sorted_score(E);
  if (const Status st = flashmoe::reference::route(all, m.host_weights(), x, 1, order.data(),
                                                   sorted_score.data());
      !st.ok()) {
    return "reference route: " + st.to_string();
  }
  std::vector<double> score(E), choice(E);
  for (int j = 0; j < E; ++j) {
    const int e = order[j];
    score[e] = sorted_score[j];
    choice[e] = score[e] + (c.routing.use_correction_bias ? m.bias[e] : 0.0);
  }
  const std::set<int> ref(order.begin(), order.begin() + K), gpu(ids, ids + K);
  const int kth = order[K - 1];
  for (int e = 0; e < E; ++e) {
    if (gpu.count(e) == ref.count(e)) continue;
    const double a = choice[e], b = choice[kth];
    const bool tie = std::isfinite(a) && std::isfinite(b) &&
                     std::abs(a - b) <= 1e-6 + 2e-4 * std::max(score[e], score[kth]);
    if (!tie) {
      return fmt::format(
          "routing: expert {} {} by the GPU, choice score {:.9g} vs the K-th best {:.9g} "
          "(expert {}): not a near-tie",
          e, gpu.count(e) ? "chosen" : "left out", a, b, kth);
    }
  }
  double sum = 0.0;
  for (int k = 0; k < K; ++k) sum += score[ids[k]];
  if (c.routing.renormalize && !(sum > 0.0)) return {};
  for (int k = 0; k < K; ++k) {
    const double s = score[ids[k]];
    const double want = (c.routing.renormalize ? s / sum : s) * c.routing.routed_scaling_factor;
    if (!(std::abs(weights[k] - want) <= 1e-5 + 2e-4 * std::abs(want))) {
      return fmt::format("routing: expert {} weight {:.7g}, expected {:.7g}", ids[k], weights[k],
                         want);
    }
  }
  return {};
}

// One token's error: ||y - ref|| / max(||ref||, sqrt(H) * n_min), with ref the float64
// reference and n_min the dtype's smallest normal (fp16 2^-14 = 6.1e-5, bf16 2^-126). Where
// ||ref|| is at least this floor (the norm of a row of n_min) it is the plain relative L2 error
// of the tests. Below it the dtype's spacing is fixed (2^-24 in fp16), so even the exact result
// rounded correctly has any relative error, 1 where it flushes to 0. Such rows are real: a
// chosen expert's weight is its score without the correction bias, so with a bias, peaked
// scores (router*3) and no renormalisation all of a token's experts can weigh 1e-9 and y is
// subnormal in fp16. There the floor makes the measure absolute, at a level where correct
// rounding costs at most sqrt(2) * 2^-11 < 7e-4 (fp16); a row off by O(1) of a normal-range
// value (stale, a wrong expert or a missing part on a token of normal size) still fails, and
// unwritten rows are NaN. `tiny` says whether the floor applied.
double output_error(const std::uint16_t* y, const double* ref, int H, DType dt, bool& tiny) {
  const double floor_norm =
      std::sqrt(static_cast<double>(H)) * std::ldexp(1.0, dt == DType::BF16 ? -126 : -14);
  double num = 0, den = 0;
  for (int i = 0; i < H; ++i) {
    const double g = flashmoe::reference::to_float(y[i], dt);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - ref[i]) * (g - ref[i]);
    den += ref[i] * ref[i];
  }
  tiny = std::sqrt(den) < floor_norm;
  return std::sqrt(num) / std::max(std::sqrt(den), floor_norm);
}

// The soak's bound on output_error: the tests' tolerance, doubled for rows of fewer than 16
// elements. A token's relative L2 error over H elements spreads more as H shrinks (the row's
// norm can be small by chance while each element's rounding is not): correct bf16 rounding of
// h and y, emulated on the CPU with the soak's distributions, gave at most 4.7e-3 over 1e5
// tokens at H = 32 and 6.2e-3 at H = 16, but 1.4e-2 over 2e5 tokens at H = 8 (2 in 1e5 over
// 1e-2). A wrong or missing expert part is still an error of O(1 / sqrt(K)).
double soak_tolerance(DType dt, int H) {
  return flashmoe_test::tolerance(dt) * (H < 16 ? 2.0 : 1.0);
}

struct Stats {
  long shapes = 0, shared_shapes = 0, forwards = 0, tokens_checked = 0;
  long tokens_tiny = 0;  // tokens whose reference y is under output_error's floor
  long mismatches = 0, device_errors = 0;
  double max_err[2] = {0, 0};  // bf16, fp16
};

enum class Outcome { Ok, Failed, Fatal };

bool cuda_ok(cudaError_t err, std::vector<std::string>& problems, const char* what) {
  if (err == cudaSuccess) return true;
  problems.push_back(fmt::format("{}: {}", what, cudaGetErrorString(err)));
  return false;
}

void report(const std::string& where, const std::vector<std::string>& problems) {
  fmt::print("FAIL {}: {} problem{}\n", where, problems.size(), problems.size() == 1 ? "" : "s");
  for (std::size_t i = 0; i < problems.size() && i < kMaxPrintedProblems; ++i) {
    fmt::print("    {}\n", problems[i]);
  }
  if (problems.size() > kMaxPrintedProblems) {
    fmt::print("    ... and {} more\n", problems.size() - kMaxPrintedProblems);
  }
  std::fflush(stdout);
}

Outcome run_forward(Subject& s, Rng& rng, cudaStream_t stream, HangGuard& guard,
                    const std::string& where_shape, Stats& st) {
  const Config& c = s.config();
  const int H = c.hidden, K = c.top_k, E = c.experts;
  const ForwardDraw d = draw_forward(s, rng);
  const int T = d.T, live = d.live;
  const std::size_t cells = static_cast<std::size_t>(T) * H,
                    pairs = static_cast<std::size_t>(T) * K;
  const std::size_t live_cells = static_cast<std::size_t>(live) * H;
  const std::size_t live_pairs = static_cast<std::size_t>(live) * K;
  const std::string where = fmt::format("{} {} forward {} [{} {}]", where_shape, s.name, s.forwards,
                                        d.describe(), s.kernel_of(T));
  std::vector<std::string> problems;
  ++s.forwards;
  ++st.forwards;
  s.kernels.insert(s.kernel_of(T));
  s.t_min = std::min(s.t_min, T);
  s.t_max = std::max(s.t_max, T);

  // Inputs. y: poison (NaN) on live rows, so every one must be written, unless beta or x == y
  // needs its values; padding rows hold finite values that must stay bitwise.
  const std::vector<std::uint16_t> x = flashmoe_test::random_values(cells, 1.0f, c.dtype, rng);
  std::vector<std::uint16_t> y_in =
      d.inplace ? x : flashmoe_test::random_values(cells, 1.0f, c.dtype, rng);
  if (!d.inplace && d.beta == 0.0f) {
    std::fill(y_in.begin(), y_in.begin() + static_cast<std::ptrdiff_t>(live_cells),
              flashmoe_test::kPoison);
  }
  std::vector<std::int32_t> cids;
  std::vector<float> cwts;
  if (d.caller) {
    cids.resize(pairs);
    cwts.resize(pairs);
    for (int t = 0; t < T; ++t) {
      std::int32_t* row = &cids[static_cast<std::size_t>(t) * K];
      float* wrow = &cwts[static_cast<std::size_t>(t) * K];
      if (t >= live) {  // padding: never read, so ids out of range must not be reported
        for (int k = 0; k < K; ++k) {
          row[k] = (t + k) % 2 ? -1 : E + 7;
          wrow[k] = std::numeric_limits<float>::quiet_NaN();
        }
        continue;
      }
      if (d.repeats && chance(rng, 0.5)) {
        for (int k = 0; k < K; ++k) row[k] = uniform_int(rng, 0, E - 1);
        row[1] = row[0];
      } else {
        std::set<int> used;
        for (int k = 0; k < K; ++k) {
          int e;
          do e = uniform_int(rng, 0, E - 1);
          while (!used.insert(e).second);
          row[k] = e;
        }
      }
      for (int k = 0; k < K; ++k) wrow[k] = uniform_float(rng, 0.05f, 1.0f);
    }
  }

  guard.arm(where);
  void* dx = s.x.get();
  void* dy = d.inplace ? dx : s.y.get();
  const std::vector<std::int32_t> id_sentinel(pairs, kIdSentinel);
  const std::vector<float> weight_sentinel(pairs, kWeightSentinel);
  const std::int32_t words[2] = {d.count, 0};
  const auto h2d = [&](void* dst, const void* src, std::size_t bytes) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream);
  };
  bool ok = cuda_ok(h2d(dx, x.data(), cells * 2), problems, "upload x") &&
            (d.inplace || cuda_ok(h2d(dy, y_in.data(), cells * 2), problems, "upload y")) &&
            cuda_ok(h2d(s.ids_out.get(), id_sentinel.data(), pairs * 4), problems, "upload ids") &&
            cuda_ok(h2d(s.wts_out.get(), weight_sentinel.data(), pairs * 4), problems,
                    "upload weights") &&
            cuda_ok(h2d(s.words.get(), words, sizeof words), problems, "upload words") &&
            (!d.caller ||
             (cuda_ok(h2d(s.ids_in.get(), cids.data(), pairs * 4), problems, "upload ids in") &&
              cuda_ok(h2d(s.wts_in.get(), cwts.data(), pairs * 4), problems, "upload weights in")));
  if (!ok) {
    guard.disarm();
    report(where, problems);
    return Outcome::Fatal;
  }
  ForwardOptions o;
  o.out_topk_ids = s.ids_out.get<std::int32_t>();
  o.out_topk_weights = s.wts_out.get<float>();
  o.beta = d.beta;
  o.device_status = s.words.get<std::int32_t>() + 1;
  o.programmatic_launch = d.programmatic;
  if (d.has_count) o.device_num_tokens = s.words.get<std::int32_t>();
  if (d.caller) {
    o.topk_ids = s.ids_in.get<std::int32_t>();
    o.topk_weights = s.wts_in.get<float>();
  }
  if (const Status fs = flashmoe::forward(s.layer, dx, dy, T, stream, o); !fs.ok()) {
    guard.disarm();
    ++st.device_errors;
    ++s.failures;
    report(where, {"forward refused valid arguments: " + fs.to_string()});
    return Outcome::Failed;
  }
  const Status ds = s.layer.device_status(stream);
  std::int32_t word = 0;
  if (!cuda_ok(cudaMemcpyAsync(&word, s.words.get<std::int32_t>() + 1, 4, cudaMemcpyDeviceToHost,
                               stream),
               problems, "download status word") ||
      !cuda_ok(cudaStreamSynchronize(stream), problems, "cudaStreamSynchronize")) {
    guard.disarm();
    if (!ds.ok()) problems.push_back("device_status: " + ds.to_string());
    report(where, problems);
    return Outcome::Fatal;
  }
  if (!ds.ok()) {
    problems.push_back("device_status: " + ds.to_string());
    if (word != static_cast<std::int32_t>(ds.code())) {
      problems.push_back(fmt::format("device status word = {}, device_status reported {}", word,
                                     static_cast<int>(ds.code())));
    }
    const cudaError_t sticky = cudaDeviceSynchronize();
    guard.disarm();
    ++st.device_errors;
    ++s.failures;
    report(where, problems);
    return ds.code() == StatusCode::CudaError || sticky != cudaSuccess ? Outcome::Fatal
                                                                       : Outcome::Failed;
  }
  if (word != 0) problems.push_back(fmt::format("device status word = {} after Ok", word));
  std::vector<std::uint16_t> y(cells);
  std::vector<std::int32_t> ids(pairs);
  std::vector<float> wts(pairs);
  ok = cuda_ok(cudaMemcpyAsync(y.data(), dy, cells * 2, cudaMemcpyDeviceToHost, stream), problems,
               "download y") &&
       cuda_ok(
           cudaMemcpyAsync(ids.data(), s.ids_out.get(), pairs * 4, cudaMemcpyDeviceToHost, stream),
           problems, "download ids") &&
       cuda_ok(
           cudaMemcpyAsync(wts.data(), s.wts_out.get(), pairs * 4, cudaMemcpyDeviceToHost, stream),
           problems, "download weights") &&
       cuda_ok(cudaStreamSynchronize(stream), problems, "cudaStreamSynchronize");
  guard.disarm();
  if (!ok) {
    report(where, problems);
    return Outcome::Fatal;
  }

  // Padding rows (tokens past the device count): y and routing rows bitwise untouched.
  for (int t = live; t < T; ++t) {
    const std::size_t r = static_cast<std::size_t>(t) * H;
    if (std::memcmp(&y[r], &y_in[r], static_cast<std::size_t>(H) * 2) != 0) {
      problems.push_back(fmt::format("padding row {} of y was written", t));
      break;
    }
  }
  for (std::size_t q = live_pairs; q < pairs; ++q) {
    if (ids[q] != kIdSentinel || std::memcmp(&wts[q], &kWeightSentinel, 4) != 0) {
      problems.push_back(fmt::format("routing output of padding token {} was written", q / K));
      break;
    }
  }
  // Every live row written, and finite.
  std::size_t bad = 0, first_bad = 0;
  for (std::size_t i = 0; i < live_cells; ++i) {
    if (!std::isfinite(flashmoe::reference::to_float(y[i], c.dtype)) && bad++ == 0) first_bad = i;
  }
  if (bad > 0) {
    problems.push_back(
        fmt::format("{} live elements of y not written or not finite, first y[{}, {}] "
                    "= 0x{:04x}",
                    bad, first_bad / H, first_bad % H, y[first_bad]));
  }
  // Routing outputs of every live token: ids in range; the caller's routing verbatim, or
  // distinct experts.
  bool ids_sane = true;
  for (int t = 0; t < live && ids_sane; ++t) {
    const std::size_t r = static_cast<std::size_t>(t) * K;
    std::set<int> seen;
    for (int k = 0; k < K; ++k) {
      const int e = ids[r + k];
      if (e < 0 || e >= E) {
        problems.push_back(fmt::format("token {}: routing id {} out of range", t, e));
        ids_sane = false;
        break;
      }
      if (d.caller ? (e != cids[r + k] || std::memcmp(&wts[r + k], &cwts[r + k], 4) != 0)
                   : !seen.insert(e).second) {
        problems.push_back(
            fmt::format("token {}: routing output ({}, {:.7g}) at k = {}: {}", t, e, wts[r + k], k,
                        d.caller ? fmt::format("caller gave ({}, {:.7g})", cids[r + k], cwts[r + k])
                                 : std::string("expert repeated")));
        ids_sane = false;
        break;
      }
    }
  }

  // A sample of live tokens against the reference with the GPU's routing.
  if (live > 0 && ids_sane) {
    const std::vector<int> sample = sample_tokens(live, rng);
    struct Result {
      double err = 0.0;
      bool tiny = false;
      std::string routing;
    };
    std::vector<Result> res(sample.size());
    const flashmoe::Weights hw = s.model.host_weights();
    flashmoe_test::parallel_for(static_cast<int>(sample.size()), [&](int j) {
      const std::size_t t = static_cast<std::size_t>(sample[j]);
      const std::uint16_t* xr = &x[t * H];
      if (!d.caller) res[j].routing = check_routing_token(s.model, xr, &ids[t * K], &wts[t * K]);
      ForwardOptions ro;
      ro.topk_ids = &ids[t * K];
      ro.topk_weights = &wts[t * K];
      ro.beta = d.beta;
      std::vector<std::uint16_t> yr(y_in.begin() + static_cast<std::ptrdiff_t>(t * H),
                                    y_in.begin() + static_cast<std::ptrdiff_t>((t + 1) * H));
      std::vector<double> ref(H);
      const Status rs = flashmoe::reference::forward(c, hw, xr, yr.data(), 1, ro, ref.data());
      res[j].err =
          rs.ok() ? output_error(&y[t * H], ref.data(), H, c.dtype, res[j].tiny) : INFINITY;
    });
    const double tol = soak_tolerance(c.dtype, H);
    for (std::size_t j = 0; j < sample.size(); ++j) {
      ++st.tokens_checked;
      st.tokens_tiny += res[j].tiny ? 1 : 0;
      if (!res[j].routing.empty()) {
        problems.push_back(fmt::format("token {}: {}", sample[j], res[j].routing));
      }
      if (!(res[j].err < tol)) {
        problems.push_back(fmt::format("token {}: {} L2 error {:.3g} over tolerance {:.1e}",
                                       sample[j], res[j].tiny ? "floored" : "relative", res[j].err,
                                       tol));
      }
      if (std::isfinite(res[j].err)) {
        s.max_err = std::max(s.max_err, res[j].err);
        double& m = st.max_err[c.dtype == DType::BF16 ? 0 : 1];
        m = std::max(m, res[j].err);
      }
    }
  }
  if (problems.empty()) return Outcome::Ok;
  ++st.mismatches;
  ++s.failures;
  report(where, problems);
  return Outcome::Failed;
}

std::string summary_of(const Subject& s) {
  return fmt::format("{} fwd T {}..{} {} | max err {:.2e} | {}", s.forwards,
                     s.forwards ? s.t_min : 0, s.t_max,
                     fmt::join(s.kernels.begin(), s.kernels.end(), ","), s.max_err,
                     s.failures ? fmt::format("{} FAILED", s.failures) : std::string("ok"));
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, args)) return 2;
  if (!flashmoe_test::has_gpu()) {
    fmt::print("flashmoe_soak: no CUDA GPU on this machine, nothing to soak (exit 0)\n");
    return 0;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    fmt::print("flashmoe_soak: cudaGetDeviceProperties failed, nothing to soak (exit 0)\n");
    return 0;
  }
  if (prop.major < 8) {
    fmt::print(
        "flashmoe_soak: {} is sm_{}{}; FlashMoE needs compute capability 8.0 or newer, "
        "nothing to soak (exit 0)\n",
        prop.name, prop.major, prop.minor);
    return 0;
  }
  const std::string replay = fmt::format("--seed {:#x}", args.seed);
  fmt::print(
      "flashmoe_soak: seed {:#x} on {} ({} SMs), {:g} s, weights up to {:g} MB; replay "
      "shape I with: flashmoe_soak --seconds N {} --shape I\n",
      args.seed, prop.name, prop.multiProcessorCount, args.seconds, args.max_weight_mb, replay);
  std::fflush(stdout);

  HangGuard guard;
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    fmt::print("flashmoe_soak: FAIL: cudaStreamCreate failed\n");
    return 1;
  }
  Stats st;
  bool fatal = false;
  const auto start = Clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  const double max_weight_bytes = args.max_weight_mb * (1 << 20);

  for (int index = args.first_shape; !fatal && elapsed() < args.seconds; ++index) {
    const auto shape_start = Clock::now();
    // Shape `index` depends on the seed and the index alone, so --shape replays it.
    Rng rng(splitmix(args.seed ^ splitmix(static_cast<std::uint64_t>(index))));
    const std::string where = fmt::format("shape {} ({} --shape {})", index, replay, index);
    const ShapeDraw main_draw = draw_shape(rng, max_weight_bytes);
    // Sometimes a second Layer of another shape shares the caller-owned scratch, and its
    // forwards interleave with the main Layer's on the same stream.
    const bool share = chance(rng, 0.25);
    ShapeDraw comp_draw;
    if (share) {
      do {
        comp_draw = draw_shape(rng, std::min(max_weight_bytes, kCompanionWeightBytes));
      } while (comp_draw.config.hidden == main_draw.config.hidden &&
               comp_draw.config.experts == main_draw.config.experts &&
               comp_draw.config.intermediate == main_draw.config.intermediate);
    }
    DeviceBuffer scratch;  // outlives both Layers (declared first)
    Subject main_s, comp_s;
    main_s.name = "main";
    comp_s.name = "companion";
    guard.arm(where + " create");
    std::string error;
    if (share) {
      const std::size_t need =
          std::max(flashmoe::scratch_bytes(main_draw.config, main_draw.tokens_per_launch),
                   flashmoe::scratch_bytes(comp_draw.config, comp_draw.tokens_per_launch));
      scratch = DeviceBuffer(need);
      // Garbage everywhere (create zeroes only the owner line): nothing may depend on it.
      if (scratch.get() == nullptr || cudaMemset(scratch.get(), 0xA5, need) != cudaSuccess ||
          cudaDeviceSynchronize() != cudaSuccess) {
        (void)cudaGetLastError();
        error = fmt::format("allocating a {} byte scratch failed", need);
      }
      if (error.empty()) error = create_subject(main_s, main_draw, rng, scratch.get(), need);
      if (error.empty()) error = create_subject(comp_s, comp_draw, rng, scratch.get(), need);
    } else {
      error = create_subject(main_s, main_draw, rng, nullptr, 0);
    }
    guard.disarm();
    ++st.shapes;
    st.shared_shapes += share ? 1 : 0;
    if (!error.empty()) {
      ++st.device_errors;
      report(fmt::format("{} [{}{}]", where, describe(main_draw),
                         share ? " + companion " + describe(comp_draw) : std::string()),
             {error});
      if (cudaDeviceSynchronize() != cudaSuccess) fatal = true;
      continue;
    }

    const int n_forwards = uniform_int(rng, 3, 12);
    const int rebind_at = weight_bytes(main_draw.config) <= kSmallWeightBytes && chance(rng, 0.15)
                              ? n_forwards / 2
                              : -1;
    for (int f = 0; f < n_forwards && !fatal && elapsed() < args.seconds; ++f) {
      if (f == rebind_at) {
        guard.arm(where + " set_weights");
        error = rebind_weights(main_s, stream);
        guard.disarm();
        if (!error.empty()) {
          ++st.device_errors;
          ++main_s.failures;
          report(where + " set_weights", {error});
          break;
        }
      }
      if (share && chance(rng, 0.5)) {
        fatal = run_forward(comp_s, rng, stream, guard, where, st) == Outcome::Fatal;
      }
      if (!fatal) fatal = run_forward(main_s, rng, stream, guard, where, st) == Outcome::Fatal;
    }
    fmt::print("[shape {}] {}{}{} | {} | {:.1f} s\n", index, describe(main_draw),
               share ? " shared-scratch" : "", main_s.rebound ? " set_weights" : "",
               summary_of(main_s),
               std::chrono::duration<double>(Clock::now() - shape_start).count());
    if (share) fmt::print("    + companion {} | {}\n", describe(comp_draw), summary_of(comp_s));
    std::fflush(stdout);
  }
  (void)cudaStreamDestroy(stream);

  const bool pass = !fatal && st.mismatches == 0 && st.device_errors == 0;
  fmt::print(
      "flashmoe_soak: {} | {} | {:.1f} s | {} shapes ({} with a shared scratch) | {} forwards | "
      "{} tokens checked ({} under the dtype's normal range) | {} mismatches | {} device errors | "
      "max error bf16 {:.2e} (tolerance {:.0e}), fp16 {:.2e} (tolerance {:.0e}; both doubled "
      "below H = 16){}\n",
      pass ? "PASS" : "FAIL", replay, elapsed(), st.shapes, st.shared_shapes, st.forwards,
      st.tokens_checked, st.tokens_tiny, st.mismatches, st.device_errors, st.max_err[0],
      flashmoe_test::tolerance(DType::BF16), st.max_err[1], flashmoe_test::tolerance(DType::FP16),
      fatal ? " | stopped early: the CUDA context is unusable" : "");
  return pass ? 0 : 1;
}
