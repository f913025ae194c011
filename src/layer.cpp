#include "flashmoe/layer.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "layer_impl.hpp"
#include "trace_layout.hpp"
#include "validate.hpp"

namespace flashmoe {
namespace {

using detail::cuda_status;

// Workspace regions larger than this are refused rather than attempted.
constexpr std::size_t kMaxWorkspaceBytes = std::size_t{1} << 40;

}  // namespace

Layer::Impl::~Impl() {
  if (state != nullptr || owned_scratch != nullptr || trace_buffer != nullptr) {
    int previous = 0;
    const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device &&
                          cudaSetDevice(device) == cudaSuccess;
    for (void* p : {state, owned_scratch, trace_buffer}) {
      if (p != nullptr) (void)cudaFree(p);
    }
    if (switched) (void)cudaSetDevice(previous);
  }
}

Layer::Layer() noexcept = default;
Layer::~Layer() = default;
Layer::Layer(Layer&&) noexcept = default;
Layer& Layer::operator=(Layer&&) noexcept = default;

const Config& Layer::config() const noexcept { return impl_->config; }
const Weights& Layer::weights() const noexcept { return impl_->weights; }
const LayerOptions& Layer::options() const noexcept { return impl_->options; }
std::size_t Layer::workspace_bytes() const noexcept {
  if (!impl_) return 0;
  return impl_->state_layout.total +
         (impl_->owned_scratch != nullptr ? impl_->scratch_layout.total : 0);
}
std::size_t Layer::scratch_bytes() const noexcept {
  return impl_ ? impl_->scratch_layout.total : 0;
}
int Layer::tokens_per_launch() const noexcept { return impl_ ? impl_->tokens_per_launch : 0; }

int Layer::device() const noexcept { return impl_ ? impl_->device : -1; }

std::size_t scratch_bytes(const Config& config, int tokens_per_launch) noexcept {
  try {
    if (tokens_per_launch < 0 || !detail::validate_config(config).ok()) return 0;
    return detail::plan_launch_scratch(config,
                                       detail::resolve_tokens_per_launch(config, tokens_per_launch))
        .total;
  } catch (...) {
    return 0;
  }
}

std::size_t workspace_bytes(const Config& config, int tokens_per_launch) noexcept {
  const std::size_t scratch = scratch_bytes(config, tokens_per_launch);
  return scratch == 0 ? 0 : detail::plan_state(config).total + scratch;
}

int tokens_per_launch_for(const Config& config, std::size_t bytes) noexcept {
  try {
    if (!detail::validate_config(config).ok()) return 0;
    // The scratch grows with the tokens per launch: the largest that fits, by bisection.
    auto fits = [&](int tokens) {
      return detail::plan_launch_scratch(config, tokens).total <= bytes;
    };
    if (!fits(1)) return 0;
    int lo = 1, hi = config.max_tokens;
    while (lo < hi) {
      const int mid = lo + (hi - lo + 1) / 2;
      if (fits(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  } catch (...) {
    return 0;
  }
}

namespace {

Status allocate(void*& out, std::size_t bytes, const char* what, int max_tokens) {
  if (cudaError_t err = cudaMalloc(&out, bytes); err != cudaSuccess) {
    (void)cudaGetLastError();
    out = nullptr;
    return {StatusCode::OutOfMemory,
            fmt::format("cudaMalloc of the {} byte {} (max_tokens = {}) failed: {}", bytes, what,
                        max_tokens, cudaGetErrorString(err))};
  }
  return {};
}

// What needs no device: before anything touches CUDA.
Status check_options(const LayerOptions& options) {
  if (options.max_blocks < 0) {
    return {
        StatusCode::InvalidArgument,
        fmt::format("options.max_blocks = {} must be 0 (auto) or positive", options.max_blocks)};
  }
  if (options.watchdog_ms == 0) {
    return {StatusCode::InvalidArgument, "options.watchdog_ms = 0 must be positive"};
  }
  if (options.tokens_per_launch < 0) {
    return {StatusCode::InvalidArgument,
            fmt::format("options.tokens_per_launch = {} must be 0 (max_tokens) or positive",
                        options.tokens_per_launch)};
  }
  if (options.scratch == nullptr && options.scratch_bytes != 0) {
    return {StatusCode::InvalidArgument,
            fmt::format("options.scratch is null but options.scratch_bytes = {}",
                        options.scratch_bytes)};
  }
  return {};
}

Status check_scratch(const LayerOptions& options, const Config& config, int device) {
  if (options.scratch == nullptr) return {};
  if (Status s = detail::check_device_pointer(options.scratch, "options.scratch", device, 256);
      !s.ok()) {
    return s;
  }
  const int tokens = detail::resolve_tokens_per_launch(config, options.tokens_per_launch);
  const std::size_t needed = detail::plan_launch_scratch(config, tokens).total;
  if (options.scratch_bytes < needed) {
    return {StatusCode::InvalidArgument,
            fmt::format("options.scratch_bytes = {} is less than the {} bytes this config needs "
                        "(flashmoe::scratch_bytes; {} tokens per launch{})",
                        options.scratch_bytes, needed, tokens,
                        tokens < config.max_tokens
                            ? std::string()
                            : fmt::format(", or fewer: flashmoe::tokens_per_launch_for gives {}",
                                          tokens_per_launch_for(config, options.scratch_bytes)))};
  }
  return {};
}

}  // namespace

Status Layer::create(const Config& config, const Weights& weights, Layer& out,
                     const LayerOptions& options) {
  if (Status s = detail::validate_config(config); !s.ok()) return s;
  // Valid configurations the GPU kernel does not run fail here, before anything is allocated.
  if (Status s = detail::check_gpu_support(config); !s.ok()) return s;
  if (Status s = check_options(options); !s.ok()) return s;
  int count = 0;
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return {StatusCode::NotSupported,
            fmt::format("no CUDA device is available ({})",
                        err == cudaSuccess ? "0 devices" : cudaGetErrorString(err))};
  }
  auto impl = std::make_unique<Impl>();
  if (cudaError_t err = cudaGetDevice(&impl->device); err != cudaSuccess) {
    return cuda_status(err, "cudaGetDevice");
  }
  if (Status s = check_scratch(options, config, impl->device); !s.ok()) return s;
  if (Status s = detail::validate_weights(config, weights, impl->device); !s.ok()) return s;

  cudaDeviceProp prop{};
  if (cudaError_t err = cudaGetDeviceProperties(&prop, impl->device); err != cudaSuccess) {
    return cuda_status(err, "cudaGetDeviceProperties");
  }
  if (prop.major < 8) {
    return {StatusCode::NotSupported,
            fmt::format("device {} ({}) has compute capability {}.{}; FlashMoE needs 8.0 or newer",
                        impl->device, prop.name, prop.major, prop.minor)};
  }
  impl->config = config;
  impl->weights = weights;
  impl->options = options;
  impl->sm_count = prop.multiProcessorCount;
  impl->state_layout = detail::plan_state(config);
  impl->tokens_per_launch = detail::resolve_tokens_per_launch(config, options.tokens_per_launch);
  impl->scratch_layout = detail::plan_launch_scratch(config, impl->tokens_per_launch);
  if (impl->scratch_layout.total > kMaxWorkspaceBytes) {
    return {StatusCode::InvalidArgument,
            fmt::format("{} tokens per launch need a {} byte scratch, above the 1 TiB limit",
                        impl->tokens_per_launch, impl->scratch_layout.total)};
  }
  if (Status s = detail::prepare_kernels(*impl); !s.ok()) return s;

  if (Status s = allocate(impl->state, impl->state_layout.total, "layer state", config.max_tokens);
      !s.ok()) {
    return s;
  }
  // Counters start at zero once; afterwards the kernel resets them itself.
  if (cudaError_t err = cudaMemset(impl->state, 0, impl->state_layout.total); err != cudaSuccess) {
    return cuda_status(err, "cudaMemset of the layer state");
  }
  if (options.scratch != nullptr) {
    impl->scratch = options.scratch;
  } else {
    if (Status s =
            allocate(impl->owned_scratch, impl->scratch_layout.total, "scratch", config.max_tokens);
        !s.ok()) {
      return s;
    }
    impl->scratch = impl->owned_scratch;
  }
  // The owner word starts idle; nothing else in the scratch needs a value.
  if (cudaError_t err = cudaMemset(impl->scratch, 0, detail::kScratchHeaderBytes);
      err != cudaSuccess) {
    return cuda_status(err, "cudaMemset of the scratch owner word");
  }
  if (cudaError_t err = cudaDeviceSynchronize(); err != cudaSuccess) {
    return cuda_status(err, "cudaDeviceSynchronize after workspace set-up");
  }
  out.impl_ = std::move(impl);
  return {};
}

Status Layer::set_weights(const Weights& weights) {
  if (!impl_) return {StatusCode::InvalidArgument, "layer is empty (not created)"};
  if (Status s = detail::validate_weights(impl_->config, weights, impl_->device); !s.ok()) {
    return s;
  }
  if (Status s = detail::encode_weight_maps(*impl_, weights); !s.ok()) return s;
  impl_->weights = weights;
  return {};
}

Status Layer::device_status(cudaStream_t stream) {
  if (!impl_) return {StatusCode::InvalidArgument, "layer is empty (not created)"};
  if (cudaError_t err = cudaStreamSynchronize(stream); err != cudaSuccess) {
    return cuda_status(err, "cudaStreamSynchronize");
  }
  auto* control = static_cast<std::uint32_t*>(impl_->state) + impl_->state_layout.control / 4;
  std::uint32_t code = 0, site = 0;
  const auto word = [control](int w) { return control + w * detail::kControlStride; };
  if (cudaError_t err = cudaMemcpy(&code, word(detail::kStickyError), 4, cudaMemcpyDeviceToHost);
      err != cudaSuccess) {
    return cuda_status(err, "cudaMemcpy of the device status");
  }
  if (code == 0) return {};
  if (cudaError_t err = cudaMemcpy(&site, word(detail::kErrorSite), 4, cudaMemcpyDeviceToHost);
      err != cudaSuccess) {
    return cuda_status(err, "cudaMemcpy of the device status");
  }
  if (code == static_cast<std::uint32_t>(StatusCode::WorkspaceBusy)) {
    // The launch that overlapped may have blocks still to come on another stream: the scratch
    // is freed only once the whole device is idle.
    if (cudaError_t err = cudaDeviceSynchronize(); err != cudaSuccess) {
      return cuda_status(err, "cudaDeviceSynchronize before freeing the scratch");
    }
    (void)cudaMemset(static_cast<unsigned char*>(impl_->scratch) + impl_->scratch_layout.owner, 0,
                     sizeof(std::uint64_t));
    // A refused block took a ticket of this Layer's queue before it found out: the counters
    // start over.
    (void)cudaMemset(impl_->state, 0, impl_->state_layout.total);
  }
  (void)cudaMemset(word(detail::kStickyError), 0, 4);
  (void)cudaMemset(word(detail::kErrorSite), 0, 4);
  if (cudaError_t err = cudaDeviceSynchronize(); err != cudaSuccess) {
    return cuda_status(err, "clearing the device status");
  }
  const char* where =
      site == detail::kSiteTasksTotal    ? "waiting for routing to publish the tiles"
      : site == detail::kSiteMTileDone   ? "a down tile waiting for its gate/up tiles"
      : site == detail::kSiteRoutingIds  ? "a caller-supplied routing id outside [0, experts)"
      : site == detail::kSiteWeightCopy  ? "a tile waiting for its weight copies"
      : site == detail::kSiteScratchBusy ? "its scratch in use by another launch"
      : site == detail::kSiteJobRing
          ? "a prefill block's producer and consumers waiting for each other"
      : site == detail::kSiteRouterDone ? "a top-k selection waiting for its tokens' router logits"
      : site == detail::kSiteRowMap     ? "a prefill tile waiting for the tile table's row map"
      : site == detail::kSiteSelectsDone
          ? "a prefill row map waiting for every token's top-k selection"
      : site == detail::kSiteRoutingDone
          ? "a decode tile waiting for routing to choose its tokens' experts"
          : "an unknown site";
  if (code == static_cast<std::uint32_t>(StatusCode::DeviceTimeout)) {
    return {StatusCode::DeviceTimeout,
            fmt::format("a device-side wait exceeded watchdog_ms = {} ({}); that forward's "
                        "output is incomplete",
                        impl_->options.watchdog_ms, where)};
  }
  if (code == static_cast<std::uint32_t>(StatusCode::InvalidArgument)) {
    return {StatusCode::InvalidArgument, fmt::format("forward found {}; y was not written", where)};
  }
  if (code == static_cast<std::uint32_t>(StatusCode::WorkspaceBusy)) {
    return {StatusCode::WorkspaceBusy,
            "a forward found its scratch in use by another launch (two forwards of this Layer, "
            "or of Layers sharing its scratch, overlapped: order them on one stream or with "
            "events); it wrote nothing. The scratch has been freed for later forwards"};
  }
  return {StatusCode::Internal, fmt::format("device recorded status code {} ({})", code, where)};
}

bool Layer::tracing() const noexcept { return impl_ && impl_->trace_buffer != nullptr; }

Status Layer::set_tracing(int events_per_block) {
  if (!impl_) return {StatusCode::InvalidArgument, "layer is empty (not created)"};
  if (events_per_block < 0 || events_per_block > (1 << 20)) {
    return {StatusCode::InvalidArgument,
            fmt::format("events_per_block = {} must lie in [0, 1048576]", events_per_block)};
  }
  if (events_per_block > 0 && !detail::trace_compiled_in()) {
    return {StatusCode::NotSupported, "this build has FLASHMOE_ENABLE_TRACE=OFF"};
  }
  if (impl_->trace_buffer != nullptr) {
    if (cudaError_t err = cudaFree(impl_->trace_buffer); err != cudaSuccess) {
      return cuda_status(err, "cudaFree of the trace buffer");
    }
    impl_->trace_buffer = nullptr;
    impl_->trace_capacity = 0;
  }
  impl_->last_trace.valid = false;
  if (events_per_block == 0) return {};
  // The most blocks a traced launch has (forward_typed.cuh's resident_grid).
  int blocks_per_sm = impl_->prefill.traced_blocks_per_sm;
  for (const auto& height : impl_->decode)
    for (const KernelVariantInfo& v : height)
      blocks_per_sm = std::max(blocks_per_sm, v.traced_blocks_per_sm);
  for (const KernelVariantInfo& v : impl_->ws)
    blocks_per_sm = std::max(blocks_per_sm, v.traced_blocks_per_sm);
  const int grid = blocks_per_sm * impl_->sm_count;
  const std::size_t bytes = detail::trace_buffer_bytes(grid, events_per_block);
  if (cudaError_t err = cudaMalloc(&impl_->trace_buffer, bytes); err != cudaSuccess) {
    (void)cudaGetLastError();
    impl_->trace_buffer = nullptr;
    return {StatusCode::OutOfMemory,
            fmt::format("cudaMalloc of the {} byte trace buffer failed: {}", bytes,
                        cudaGetErrorString(err))};
  }
  // read_trace copies whole per-block slices, most of them past the events a launch wrote:
  // zeros there keep those bytes defined (compute-sanitizer's initcheck reports them otherwise).
  if (cudaError_t err = cudaMemset(impl_->trace_buffer, 0, bytes); err != cudaSuccess) {
    (void)cudaFree(impl_->trace_buffer);
    impl_->trace_buffer = nullptr;
    return cuda_status(err, "clearing the trace buffer");
  }
  impl_->trace_capacity = events_per_block;
  impl_->trace_max_grid = grid;
  return {};
}

Status Layer::read_trace(cudaStream_t stream, Trace& out) {
  if (!impl_) return {StatusCode::InvalidArgument, "layer is empty (not created)"};
  const auto& last = impl_->last_trace;
  if (impl_->trace_buffer == nullptr || !last.valid) {
    return {StatusCode::InvalidArgument,
            "no traced forward to read: call set_tracing(n > 0), then forward"};
  }
  if (cudaError_t err = cudaStreamSynchronize(stream); err != cudaSuccess) {
    return cuda_status(err, "cudaStreamSynchronize");
  }
  const std::size_t grid = static_cast<std::size_t>(last.grid);
  const std::size_t cap = static_cast<std::size_t>(impl_->trace_capacity);
  std::vector<detail::RawTraceBlock> blocks(grid);
  std::vector<detail::RawTraceEvent> events(grid * cap);
  const auto* base = static_cast<const unsigned char*>(impl_->trace_buffer);
  const std::size_t events_offset = detail::trace_events_offset(impl_->trace_max_grid);
  if (cudaError_t err = cudaMemcpy(blocks.data(), base, grid * sizeof(detail::RawTraceBlock),
                                   cudaMemcpyDeviceToHost);
      err != cudaSuccess) {
    return cuda_status(err, "cudaMemcpy of the trace");
  }
  if (cudaError_t err =
          cudaMemcpy(events.data(), base + events_offset,
                     grid * cap * sizeof(detail::RawTraceEvent), cudaMemcpyDeviceToHost);
      err != cudaSuccess) {
    return cuda_status(err, "cudaMemcpy of the trace");
  }
  Trace t;
  t.num_tokens = last.num_tokens;
  t.grid_blocks = last.grid;
  t.sm_count = impl_->sm_count;
  t.tile_m = last.tile_m;
  t.tile_n_gateup = last.tile_n_gateup;
  t.tile_n_down = last.tile_n_down;
  t.router_tasks = last.router_tasks;
  t.router_k_slices = last.router_k_slices;
  t.router_tile_m = last.router_tile_m;
  t.router_tile_n = last.router_tile_n;
  t.down_k_slices = last.down_k_slices;
  t.gather_parts = last.gather_parts;
  t.variant = last.variant;
  for (std::size_t b = 0; b < grid; ++b) {
    const detail::RawTraceBlock& rb = blocks[b];
    const std::uint32_t kept =
        std::min<std::uint32_t>(rb.recorded, static_cast<std::uint32_t>(cap));
    t.blocks.push_back(
        {static_cast<std::uint32_t>(b), rb.sm, rb.entry_ns, rb.exit_ns, rb.recorded - kept});
    for (std::uint32_t i = 0; i < kept; ++i) {
      const detail::RawTraceEvent& e = events[b * cap + i];
      t.events.push_back({e.start_ns, e.end_ns, e.sm, static_cast<std::uint32_t>(b),
                          static_cast<TraceKind>(e.kind), e.expert, e.tile});
    }
  }
  out = std::move(t);
  return {};
}

const char* version() noexcept { return "0.1.0"; }

}  // namespace flashmoe
