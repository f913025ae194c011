#include "flashmoe/layer.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
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
  if (workspace != nullptr || trace_buffer != nullptr) {
    int previous = 0;
    const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device &&
                          cudaSetDevice(device) == cudaSuccess;
    if (workspace != nullptr) (void)cudaFree(workspace);
    if (trace_buffer != nullptr) (void)cudaFree(trace_buffer);
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
std::size_t Layer::workspace_bytes() const noexcept { return impl_ ? impl_->layout.total : 0; }
int Layer::device() const noexcept { return impl_ ? impl_->device : -1; }

std::size_t workspace_bytes(const Config& config) noexcept {
  try {
    if (!detail::validate_config(config).ok()) return 0;
    return detail::plan_workspace(config).total;
  } catch (...) {
    return 0;
  }
}

Status Layer::create(const Config& config, const Weights& weights, Layer& out,
                     const LayerOptions& options) {
  if (Status s = detail::validate_config(config); !s.ok()) return s;
  if (options.max_blocks < 0) {
    return {
        StatusCode::InvalidArgument,
        fmt::format("options.max_blocks = {} must be 0 (auto) or positive", options.max_blocks)};
  }
  if (options.watchdog_ms == 0) {
    return {StatusCode::InvalidArgument, "options.watchdog_ms = 0 must be positive"};
  }
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
  impl->layout = detail::plan_workspace(config);
  if (impl->layout.total > kMaxWorkspaceBytes) {
    return {StatusCode::InvalidArgument,
            fmt::format("max_tokens = {} needs a {} byte workspace, above the 1 TiB limit",
                        config.max_tokens, impl->layout.total)};
  }
  if (Status s = detail::prepare_kernels(*impl); !s.ok()) return s;

  if (cudaError_t err = cudaMalloc(&impl->workspace, impl->layout.total); err != cudaSuccess) {
    (void)cudaGetLastError();
    impl->workspace = nullptr;
    return {StatusCode::OutOfMemory,
            fmt::format("cudaMalloc of the {} byte workspace (max_tokens = {}) failed: {}",
                        impl->layout.total, config.max_tokens, cudaGetErrorString(err))};
  }
  // Counters start at zero once; afterwards the kernel resets them itself.
  if (cudaError_t err = cudaMemset(impl->workspace, 0, impl->layout.total); err != cudaSuccess) {
    return cuda_status(err, "cudaMemset of the workspace");
  }
  if (cudaError_t err = cudaDeviceSynchronize(); err != cudaSuccess) {
    return cuda_status(err, "cudaDeviceSynchronize after workspace set-up");
  }
  out.impl_ = std::move(impl);
  return {};
}

Status Layer::device_status(cudaStream_t stream) {
  if (!impl_) return {StatusCode::InvalidArgument, "layer is empty (not created)"};
  if (cudaError_t err = cudaStreamSynchronize(stream); err != cudaSuccess) {
    return cuda_status(err, "cudaStreamSynchronize");
  }
  auto* control = static_cast<std::uint32_t*>(impl_->workspace) + impl_->layout.control / 4;
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
  (void)cudaMemset(word(detail::kStickyError), 0, 4);
  (void)cudaMemset(word(detail::kErrorSite), 0, 4);
  if (cudaError_t err = cudaDeviceSynchronize(); err != cudaSuccess) {
    return cuda_status(err, "clearing the device status");
  }
  const char* where = site == detail::kSiteTasksTotal  ? "waiting for routing to publish the tiles"
                      : site == detail::kSiteMTileDone ? "a down tile waiting for its gate/up tiles"
                      : site == detail::kSiteRoutingIds
                          ? "a caller-supplied routing id outside [0, experts)"
                      : site == detail::kSiteWeightCopy ? "a tile waiting for its weight copies"
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
  int blocks_per_sm = impl_->prefill.blocks_per_sm;
  for (const auto& height : impl_->decode)
    for (const KernelVariantInfo& v : height)
      blocks_per_sm = std::max(blocks_per_sm, v.blocks_per_sm);
  const int grid = blocks_per_sm * impl_->sm_count;
  const std::size_t bytes = detail::trace_buffer_bytes(grid, events_per_block);
  if (cudaError_t err = cudaMalloc(&impl_->trace_buffer, bytes); err != cudaSuccess) {
    (void)cudaGetLastError();
    impl_->trace_buffer = nullptr;
    return {StatusCode::OutOfMemory,
            fmt::format("cudaMalloc of the {} byte trace buffer failed: {}", bytes,
                        cudaGetErrorString(err))};
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
  t.down_k_slices = last.down_k_slices;
  t.variant = last.decode ? "decode" : "prefill";
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
