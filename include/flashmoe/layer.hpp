// FlashMoE: the layer object and the forward call.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "flashmoe/config.hpp"
#include "flashmoe/status.hpp"
#include "flashmoe/trace.hpp"

namespace flashmoe {

// Knobs an engine rarely needs; the defaults suit production.
struct LayerOptions {
  // Upper bound on the persistent grid (0: as many blocks as fit on the device). Results are
  // bitwise identical for every grid size.
  int max_blocks = 0;
  // A device-side wait longer than this ends the forward with DeviceTimeout. It must exceed
  // the longest legitimate wait: routing of the largest T (one block builds the tile table,
  // O(T * K / 256) steps) and the gate/up tiles of one m-tile. Keep it at 100 ms or more.
  std::uint32_t watchdog_ms = 2000;
  // Caller-owned scratch: device memory of at least scratch_bytes(config) bytes, 256-byte
  // aligned, on the Layer's device. When set, the Layer allocates only its own state (a few
  // KB) and every forward runs in this scratch, so one buffer of the largest size any of them
  // needs can serve all the Layers of a model. Layer::create zeroes its first 256 bytes (the
  // owner word) and waits for that, so create no Layer on a scratch while a forward using it
  // may be running. When null, the Layer allocates a scratch of its own.
  void* scratch = nullptr;
  std::size_t scratch_bytes = 0;
  // Tokens one kernel launch processes (0, or anything above max_tokens: max_tokens). The
  // scratch is sized for this many tokens, and a forward of more runs one launch per chunk of
  // this many rows (the last one shorter), in order on its stream. Less memory for long
  // prefills, at a cost: each launch reads its experts' weights again (bench/NOTES.md has the
  // numbers). tokens_per_launch_for picks the largest value a scratch budget allows. Results
  // depend on it (the chunks are routed and tiled separately) but, for a given value, stay
  // bitwise identical from run to run and for every grid size.
  int tokens_per_launch = 0;
};

// One MoE layer: validated config, borrowed weights, its own small device state and a scratch
// (its own, or one shared through LayerOptions::scratch). Move-only.
// Forwards that use the same scratch (one Layer's, or several Layers sharing one) must be
// stream-ordered: one stream, or streams synchronised with events. Two that overlap are caught
// by the kernel: the later one writes nothing and fails with WorkspaceBusy, and the scratch then
// refuses every forward until Layer::device_status has reported and cleared it. Two overlapping
// forwards of one Layer also share its task queue, so the earlier one may then end in
// DeviceTimeout (both are reported; neither result is silently wrong). Layers with distinct
// scratches may run concurrently.
class Layer {
 public:
  Layer() noexcept;
  ~Layer();
  Layer(Layer&&) noexcept;
  Layer& operator=(Layer&&) noexcept;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  // Validates config and weights on the current CUDA device and allocates the workspace.
  // On error `out` is left as it was.
  [[nodiscard]] static Status create(const Config& config, const Weights& weights, Layer& out,
                                     const LayerOptions& options = {});

  [[nodiscard]] bool valid() const noexcept { return impl_ != nullptr; }
  [[nodiscard]] const Config& config() const noexcept;
  [[nodiscard]] const Weights& weights() const noexcept;
  [[nodiscard]] const LayerOptions& options() const noexcept;
  // Device bytes this Layer allocated itself: its state, plus its scratch unless the caller
  // gave one.
  [[nodiscard]] std::size_t workspace_bytes() const noexcept;
  // Scratch bytes its forwards need (flashmoe::scratch_bytes of its config and
  // tokens_per_launch).
  [[nodiscard]] std::size_t scratch_bytes() const noexcept;
  // Tokens per kernel launch (LayerOptions::tokens_per_launch resolved: 1 .. max_tokens).
  [[nodiscard]] int tokens_per_launch() const noexcept;
  [[nodiscard]] int device() const noexcept;

  // Replaces the weights (reload, offload, LoRA merges, expert remaps) without re-creating the
  // Layer: validates them as create does and re-encodes what depends on the pointers, on the
  // host, with no allocation and no device synchronisation. Forwards enqueued before keep the
  // weights they were launched with; so do CUDA graphs captured before (capture again). On
  // error the Layer keeps its old weights.
  [[nodiscard]] Status set_weights(const Weights& weights);

  // Waits for `stream`, then reports (and clears) an error the kernel recorded in an earlier
  // forward: DeviceTimeout, InvalidArgument for a caller-supplied routing id out of range, or
  // WorkspaceBusy for overlapping forwards. After WorkspaceBusy it waits for the whole device
  // and then frees the scratch for later forwards.
  [[nodiscard]] Status device_status(cudaStream_t stream);

  // Scheduling trace (see trace.hpp). events_per_block > 0 turns it on for the following
  // forwards, allocating the trace buffer now (never in forward); 0 turns it off and frees it.
  // NotSupported when the library was built with FLASHMOE_ENABLE_TRACE=OFF.
  [[nodiscard]] Status set_tracing(int events_per_block);
  [[nodiscard]] bool tracing() const noexcept;
  // Waits for `stream`, then copies out what the last traced forward recorded.
  [[nodiscard]] Status read_trace(cudaStream_t stream, Trace& out);

  struct Impl;
  [[nodiscard]] Impl* impl() noexcept { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
};

// Bytes of scratch the forwards of a Layer with this config and LayerOptions::tokens_per_launch
// need (0 if the config is invalid or tokens_per_launch negative). A scratch shared by several
// Layers needs the largest of their sizes.
[[nodiscard]] std::size_t scratch_bytes(const Config& config, int tokens_per_launch = 0) noexcept;
// Bytes of device memory a Layer with this config allocates when it owns its scratch: its
// state plus scratch_bytes(config, tokens_per_launch) (0 if either argument is invalid).
[[nodiscard]] std::size_t workspace_bytes(const Config& config, int tokens_per_launch = 0) noexcept;
// The largest tokens_per_launch (at most max_tokens) whose scratch fits in scratch_bytes: one
// launch per forward when it returns max_tokens. 0 if not even one token's fits, or the config
// is invalid.
[[nodiscard]] int tokens_per_launch_for(const Config& config, std::size_t scratch_bytes) noexcept;

// y[T, H] = MoE(x[T, H]) (+ beta * y). Enqueues exactly one kernel on `stream` (one per chunk
// of Layer::tokens_per_launch() rows when T is larger); no host synchronisation and no
// allocation, so it can be captured in a CUDA graph. x and y are device pointers in the layer's
// dtype, 16-byte aligned. T = 0 returns Ok and does nothing. On any error found before the
// first launch nothing is enqueued and y is untouched (a launch that fails after earlier chunks
// were enqueued leaves their rows written). A CUDA error that the caller left pending (one
// cudaGetLastError would return) is not reported as this call's: forward clears it first.
[[nodiscard]] Status forward(Layer& layer, const void* x, void* y, std::int64_t num_tokens,
                             cudaStream_t stream, const ForwardOptions& options = {});

// "0.1.0"
[[nodiscard]] const char* version() noexcept;

}  // namespace flashmoe
