// Writes the scheduling timeline of one forward of a layer with random weights (by default
// Qwen3-30B-A3B-shaped) at T = 1 and T = 256: trace_T<n>.json (Perfetto / chrome://tracing),
// trace_T<n>.svg (open in any browser) and trace_T<n>.txt (the summary, also printed).
//
// Usage: flashmoe_trace [--shape=H,I,E,K] [output directory [T ...]]
//   defaults: H,I,E,K = 2048,768,128,8; the current directory; T = 1 256
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <flashmoe/flashmoe.hpp>
#include <fstream>
#include <string>
#include <vector>

namespace {

constexpr int kMaxTokens = 4096;

bool ok(const flashmoe::Status& s, const char* what) {
  if (!s.ok()) std::fprintf(stderr, "%s: %s\n", what, s.to_string().c_str());
  return s.ok();
}
bool ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

// Uniform bf16 values in [-scale, scale) from a 64-bit LCG (the high bits).
std::vector<std::uint16_t> random_bf16(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<std::uint16_t> v(n);
  for (auto& e : v) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    const float u = static_cast<float>(seed >> 40) * (1.0f / 16777216.0f);
    e = flashmoe::reference::from_float((2.0f * u - 1.0f) * scale, flashmoe::DType::BF16);
  }
  return v;
}

struct Device {
  void* p = nullptr;
  Device(const std::vector<std::uint16_t>& host) {
    if (ok(cudaMalloc(&p, host.size() * 2), "cudaMalloc")) {
      (void)ok(cudaMemcpy(p, host.data(), host.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
  }
  ~Device() { (void)cudaFree(p); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
};

bool write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  int hidden = 2048, inter = 768, experts = 128, top_k = 8;
  int arg = 1;
  if (arg < argc && std::string(argv[arg]).rfind("--shape=", 0) == 0) {
    if (std::sscanf(argv[arg] + 8, "%d,%d,%d,%d", &hidden, &inter, &experts, &top_k) != 4 ||
        hidden < 1 || inter < 1 || experts < 1 || top_k < 1) {
      std::fprintf(stderr, "--shape=H,I,E,K expects four positive integers, got '%s'\n",
                   argv[arg] + 8);
      return 1;
    }
    ++arg;
  }
  const std::string dir = arg < argc ? argv[arg] : ".";
  std::vector<int> token_counts;
  for (int i = arg + 1; i < argc; ++i) token_counts.push_back(std::atoi(argv[i]));
  if (token_counts.empty()) token_counts = {1, 256};
  for (int T : token_counts) {
    if (T < 1 || T > kMaxTokens) {
      std::fprintf(stderr, "T = %d must lie in [1, %d]\n", T, kMaxTokens);
      return 1;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("No CUDA GPU found: the trace needs one. Nothing was written.\n");
    return 0;
  }
  flashmoe::Config c;
  c.hidden = hidden;
  c.intermediate = inter;
  c.experts = experts;
  c.top_k = top_k;
  c.max_tokens = kMaxTokens;
  const Device router(random_bf16(static_cast<std::size_t>(experts) * hidden, 0.05f, 1));
  const Device w13(random_bf16(static_cast<std::size_t>(experts) * 2 * inter * hidden, 0.04f, 2));
  const Device w2(random_bf16(static_cast<std::size_t>(experts) * hidden * inter, 0.06f, 3));
  const Device x(random_bf16(static_cast<std::size_t>(kMaxTokens) * hidden, 1.0f, 4));
  const Device y(std::vector<std::uint16_t>(static_cast<std::size_t>(kMaxTokens) * hidden));
  flashmoe::Weights w;
  w.router = router.p;
  w.w13 = w13.p;
  w.w2 = w2.p;
  flashmoe::Layer layer;
  if (!ok(flashmoe::Layer::create(c, w, layer), "Layer::create")) return 1;
  if (!ok(layer.set_tracing(4096), "set_tracing")) return 1;

  for (int T : token_counts) {
    // Warm-up first (module load, caches), then the traced forward.
    for (int i = 0; i < 3; ++i) {
      if (!ok(flashmoe::forward(layer, x.p, y.p, T, nullptr), "forward")) return 1;
    }
    flashmoe::Trace trace;
    if (!ok(layer.read_trace(nullptr, trace), "read_trace")) return 1;
    if (!ok(layer.device_status(nullptr), "device_status")) return 1;
    const std::string base = dir + "/trace_T" + std::to_string(T);
    const std::string summary = flashmoe::trace_summary_text(trace);
    if (!write(base + ".json", flashmoe::trace_to_chrome_json(trace)) ||
        !write(base + ".svg", flashmoe::trace_to_svg(trace)) || !write(base + ".txt", summary)) {
      std::fprintf(stderr, "cannot write %s.*\n", base.c_str());
      return 1;
    }
    std::printf("== T = %d: %s.{json,svg,txt}\n%s\n", T, base.c_str(), summary.c_str());
  }
  return 0;
}
