// The unfused MoE forward an inference engine writes when it has no fused MoE kernel: cuBLAS
// for the router and for each expert's GEMMs, small kernels for routing, permutation,
// activation and combine. The benchmark times it beside FlashMoE on the same inputs.
//
// Not capturable in a CUDA graph: forward() copies the per-expert row counts to the host and
// waits for them, because each expert's GEMM needs its row count as a host argument (the
// grouped API too: its sizes are host arrays); llama.cpp-style engines that launch one GEMM per
// expert make the same round trip.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashmoe/config.hpp"

namespace flashmoe_bench {

// Softmax scoring, no correction bias, no groups, SiLU-gated experts and a routed scaling
// factor of 1: the configuration of every shape the benchmark runs.
struct BaselineShape {
  int hidden = 0;        // H, a multiple of 8 (16-byte row accesses)
  int intermediate = 0;  // I, a multiple of 8
  int experts = 0;       // E
  int top_k = 0;         // K
  bool renormalize = true;
  flashmoe::DType dtype = flashmoe::DType::BF16;
  int max_tokens = 0;  // largest T of a forward; every scratch buffer is sized for it
};

// How the expert GEMMs are issued after the host has the per-expert row counts: one
// cublasGemmEx per expert and phase, or one cublasGemmGroupedBatchedEx per phase (every expert
// with rows a group of one), as an engine on cuBLAS's grouped API would.
enum class ExpertGemms { PerExpert, Grouped };

class CublasBaseline {
 public:
  CublasBaseline() = default;
  ~CublasBaseline();
  CublasBaseline(const CublasBaseline&) = delete;
  CublasBaseline& operator=(const CublasBaseline&) = delete;

  // Weights in FlashMoE's layouts (router [E, H], w13 [E, 2I, H], w2 [E, H, I]), on the device
  // and not owned. Creates the cuBLAS handle and allocates all scratch. Returns "" on success,
  // else what failed (the object then holds nothing).
  [[nodiscard]] std::string create(const BaselineShape& shape, const void* router, const void* w13,
                                   const void* w2);

  // y [T, H] = MoE(x [T, H]) for 1 <= T <= max_tokens, enqueued on `stream`, which it also
  // synchronizes once (the host needs the per-expert counts). Returns "" on success.
  [[nodiscard]] std::string forward(const void* x, void* y, int num_tokens, cudaStream_t stream,
                                    ExpertGemms gemms = ExpertGemms::PerExpert);

  // Device buffers of the last forward, for validation: top-k ids [T, K] in descending score
  // order, router logits [T, E].
  [[nodiscard]] const std::int32_t* topk_ids() const noexcept { return topk_ids_; }
  [[nodiscard]] const float* logits() const noexcept { return logits_; }

 private:
  void release() noexcept;
  [[nodiscard]] std::string alloc(void** p, std::size_t bytes, const char* what);

  BaselineShape shape_{};
  const void* router_ = nullptr;
  const void* w13_ = nullptr;
  const void* w2_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  int sort_warps_ = 0;  // warps of the counting-sort block, sized to its shared memory

  float* logits_ = nullptr;               // [T, E] fp32
  std::int32_t* topk_ids_ = nullptr;      // [T, K]
  float* topk_weights_ = nullptr;         // [T, K]
  std::int32_t* offsets_ = nullptr;       // [E + 1]: exclusive offsets of each expert's rows
  std::int32_t* pair_row_ = nullptr;      // [T, K]: row of pair (t, k) in the permuted order
  void* xs_ = nullptr;                    // [T * K, H]: x rows grouped by expert
  void* gate_up_ = nullptr;               // [T * K, 2I]
  void* h_ = nullptr;                     // [T * K, I]
  void* out_ = nullptr;                   // [T * K, H]: each pair's expert output
  std::int32_t* host_offsets_ = nullptr;  // pinned [E + 1]
  // Grouped GEMMs: the A, B and C pointers of the gate/up then the down groups, [6][E], written
  // on the host (pinned) and copied to the device before the calls; the per-group arguments.
  const void** host_ptrs_ = nullptr;
  const void** ptrs_ = nullptr;
  std::vector<int> group_m_, group_n_, group_k_, group_lda_, group_ldb_, group_ldc_, group_size_;
  std::vector<cublasOperation_t> group_transa_, group_transb_;
  std::vector<float> group_alpha_, group_beta_;
  std::vector<void*> allocations_;
};

}  // namespace flashmoe_bench
