// FlashMoE: layer configuration, weight views and per-call options.
#pragma once

#include <cstdint>

namespace flashmoe {

// Element type of activations and weights. Accumulation is always fp32 on the GPU.
enum class DType : int { BF16 = 0, FP16 = 1 };

// Expert FFN: out = W2 * (act(W1 x) * (W3 x)), W1 = gate rows, W3 = up rows of w13.
enum class Activation : int {
  SiluGated = 0,      // SwiGLU: silu(g) * u
  GeluGated = 1,      // GeGLU with exact (erf) GELU
  GeluTanhGated = 2,  // GeGLU with the tanh approximation
};

enum class Scoring : int {
  Softmax = 0,  // scores = softmax(logits) over all experts
  Sigmoid = 1,  // scores = sigmoid(logits) (DeepSeek-V3)
};

// How a token picks its experts. Follows vLLM's fused_topk / grouped_topk:
//  1. scores from logits (Scoring);
//  2. choice scores = scores + correction_bias (when use_correction_bias);
//  3. with n_group > 1: a group's score is the sum of its two best choice scores when a
//     correction bias is used, else its best score; keep the topk_group best groups;
//  4. top-k of the choice scores among kept experts (ties go to the lower expert id);
//  5. weights = scores (without bias) of the chosen experts, divided by their sum when
//     renormalize, then multiplied by routed_scaling_factor.
struct Routing {
  Scoring scoring = Scoring::Softmax;
  bool renormalize = true;
  int n_group = 1;
  int topk_group = 1;
  float routed_scaling_factor = 1.0f;
  bool use_correction_bias = false;
};

// Experts every token uses, added to the routed output (DeepSeek, Qwen2-MoE).
struct SharedExperts {
  int count = 0;         // 0: none
  int intermediate = 0;  // intermediate size of each shared expert
  bool gated = false;    // Qwen2-MoE: shared output scaled by sigmoid(x . shared_gate)
};

struct Config {
  int hidden = 0;        // H
  int intermediate = 0;  // I, per routed expert
  int experts = 0;       // E
  int top_k = 0;         // K
  DType dtype = DType::BF16;
  Activation activation = Activation::SiluGated;
  Routing routing{};
  SharedExperts shared{};
  int max_tokens = 0;  // largest T a forward may be called with; sizes the workspace
};

// Non-owning views of weights already on the device, in the layouts engines hold
// (row-major, the last index contiguous). All 16-bit tensors are in `dtype`, which must
// equal Config::dtype. Every pointer must be 16-byte aligned.
struct Weights {
  DType dtype = DType::BF16;
  const void* router = nullptr;            // [E, H]
  const void* w13 = nullptr;               // [E, 2I, H]: the I gate rows, then the I up rows
  const void* w2 = nullptr;                // [E, H, I]
  const float* correction_bias = nullptr;  // [E] fp32, when Routing::use_correction_bias
  const void* shared_w13 = nullptr;        // [S, 2Is, H], when SharedExperts::count > 0
  const void* shared_w2 = nullptr;         // [S, H, Is]
  const void* shared_gate = nullptr;       // [H], when SharedExperts::gated
};

// Per-call options for engines. All pointers are device pointers.
struct ForwardOptions {
  // Caller-supplied routing [T, K]: skips the router. Ids must lie in [0, E); a bad id is
  // reported as InvalidArgument by Layer::device_status and y is left untouched. Weights are
  // used as given (no renormalisation or scaling).
  const int32_t* topk_ids = nullptr;
  const float* topk_weights = nullptr;
  // When non-null, the routing used is written here [T, K].
  int32_t* out_topk_ids = nullptr;
  float* out_topk_weights = nullptr;
  // y = moe(x) + beta * y. With beta == 0, y is only written, never read.
  float beta = 0.0f;
  // Padded batches (a CUDA graph captured at a fixed num_tokens): when non-null, the kernel
  // reads the number of live tokens n here when it starts, clamped to [0, num_tokens]. Tokens
  // n and later are not routed and touch no expert; their rows of y and of the routing outputs
  // are left untouched (neither read nor written). num_tokens stays the capacity that sizes
  // the launch.
  const int32_t* device_num_tokens = nullptr;
  // Errors without a host synchronisation: when non-null, a forward that fails on the device
  // (DeviceTimeout, a bad caller routing id, WorkspaceBusy) stores its StatusCode here if the
  // word still holds 0. A forward that succeeds never writes it, so one word zeroed by the
  // engine collects the first failure of any number of forwards, of any Layers, until the
  // engine reads and re-zeroes it at a synchronisation point of its own.
  int32_t* device_status = nullptr;
  // Programmatic dependent launch (sm_90 and newer; elsewhere the launch is an ordinary one):
  // the kernel may be scheduled while the previous kernel on the stream is still finishing. Its
  // blocks wait (griddepcontrol.wait) for that kernel to complete, and for its writes to be
  // visible, before they read or write any memory, so the result is that of an ordinary launch;
  // what is gained is the launch latency and the block start-up, behind the previous kernel's
  // tail. The kernel, in turn, lets the next kernel on the stream be scheduled as its blocks run
  // out of work. Works inside CUDA graphs (the capture records a programmatic edge).
  bool programmatic_launch = false;
};

}  // namespace flashmoe
