// The unfused cuBLAS MoE forward (see cublas_baseline.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "bench_check.hpp"
#include "cublas_baseline.cuh"

namespace flashmoe_bench {
namespace {

#define BASELINE_CUBLAS(expr)                                         \
  do {                                                                \
    const cublasStatus_t s_ = (expr);                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                  \
      return fmt::format("{}: {}", #expr, cublasGetStatusString(s_)); \
  } while (0)

constexpr int kWarp = 32;
constexpr int kRouteWarps = 4;              // tokens per block of the routing kernel
constexpr int kRowThreads = 128;            // threads of the gather and combine blocks
constexpr int kMaxSharedBytes = 48 * 1024;  // dynamic shared memory without an opt-in
constexpr int kVec = 8;                     // 16-bit elements per 16-byte access

__device__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ T from_float(float v);
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// One warp per token: softmax over the E logits, top-k (by logit, which orders the experts as
// the softmax scores do without their rounding ties; equal logits go to the lower id), then the
// chosen softmax probabilities, divided by their sum when renormalizing.
__global__ void route_kernel(const float* __restrict__ logits, int tokens, int experts, int top_k,
                             bool renormalize, std::int32_t* __restrict__ ids,
                             float* __restrict__ weights) {
  extern __shared__ float route_shared[];  // [kRouteWarps][E]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int t = blockIdx.x * kRouteWarps + warp;
  if (t >= tokens) return;  // whole warps leave; the kernel has no block barrier
  float* s = route_shared + static_cast<std::size_t>(warp) * experts;
  const float* row = logits + static_cast<std::size_t>(t) * experts;

  float max_logit = -INFINITY;
  for (int e = lane; e < experts; e += kWarp) {
    s[e] = isnan(row[e]) ? -INFINITY : row[e];  // NaN marks a taken expert below
    max_logit = fmaxf(max_logit, s[e]);
  }
  for (int d = kWarp / 2; d > 0; d /= 2)
    max_logit = fmaxf(max_logit, __shfl_xor_sync(0xffffffffu, max_logit, d));
  float sum = 0.0f;
  for (int e = lane; e < experts; e += kWarp) sum += expf(s[e] - max_logit);
  for (int d = kWarp / 2; d > 0; d /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, d);
  __syncwarp();

  std::int32_t* token_ids = ids + static_cast<std::size_t>(t) * top_k;
  float* token_weights = weights + static_cast<std::size_t>(t) * top_k;
  float chosen_sum = 0.0f;
  for (int k = 0; k < top_k; ++k) {
    float best = -INFINITY;
    int best_e = experts;
    for (int e = lane; e < experts; e += kWarp) {
      // Ascending e: strict > keeps the lower id on ties. best_e == experts: none yet.
      if (!isnan(s[e]) && (best_e == experts || s[e] > best)) {
        best = s[e];
        best_e = e;
      }
    }
    // (value descending, id ascending) is a total order, so every lane ends with the same
    // pair; K <= E leaves some expert untaken, so it is a real one.
    for (int d = kWarp / 2; d > 0; d /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, d);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, d);
      if (other_e != experts &&
          (best_e == experts || other > best || (other == best && other_e < best_e))) {
        best = other;
        best_e = other_e;
      }
    }
    const float p = expf(best - max_logit) / sum;
    chosen_sum += p;
    if (lane == 0) {
      token_ids[k] = best_e;
      token_weights[k] = p;
      s[best_e] = NAN;  // taken
    }
    __syncwarp();
  }
  if (renormalize && lane == 0) {
    for (int k = 0; k < top_k; ++k) token_weights[k] /= chosen_sum;
  }
}

// One block: a stable counting sort of the T*K pairs by expert. Warp w owns a contiguous
// segment of the pairs; pass 1 counts each warp's pairs per expert, the counts become
// exclusive offsets (over experts, then over warps), pass 2 gives each pair its row. Rows of
// one expert keep pair order, so the result does not depend on scheduling.
__global__ void sort_kernel(const std::int32_t* __restrict__ ids, int pairs, int experts,
                            std::int32_t* __restrict__ offsets,
                            std::int32_t* __restrict__ pair_row) {
  extern __shared__ std::int32_t sort_shared[];  // [warps][E] counts, then [E + 1] offsets
  const int warps = blockDim.x / kWarp, warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  std::int32_t* mine = sort_shared + static_cast<std::size_t>(warp) * experts;
  std::int32_t* expert_offset = sort_shared + static_cast<std::size_t>(warps) * experts;
  for (int i = threadIdx.x; i < warps * experts; i += blockDim.x) sort_shared[i] = 0;
  __syncthreads();

  const int segment = (pairs + warps - 1) / warps;
  const int begin = min(pairs, warp * segment), end = min(pairs, begin + segment);
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int base = begin; base < end; base += kWarp) {
    const int p = base + lane;
    const int e = p < end ? ids[p] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0 && (peers & lower_lanes) == 0) mine[e] += __popc(peers);
    __syncwarp();  // the next step's leader for e may be another lane
  }
  __syncthreads();

  // Each expert's warp counts become the rows its earlier warps hold; the totals go to
  // expert_offset and are scanned by warp 0.
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int run = 0;
    for (int w = 0; w < warps; ++w) {
      const int c = sort_shared[static_cast<std::size_t>(w) * experts + e];
      sort_shared[static_cast<std::size_t>(w) * experts + e] = run;
      run += c;
    }
    expert_offset[e] = run;
  }
  __syncthreads();
  if (warp == 0) {
    int carry = 0;
    for (int base = 0; base < experts; base += kWarp) {
      const int e = base + lane;
      const int count = e < experts ? expert_offset[e] : 0;
      int inclusive = count;
      for (int d = 1; d < kWarp; d *= 2) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      if (e < experts) expert_offset[e] = carry + inclusive - count;
      carry += __shfl_sync(0xffffffffu, inclusive, kWarp - 1);
    }
    if (lane == 0) expert_offset[experts] = carry;
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= experts; e += blockDim.x) offsets[e] = expert_offset[e];

  for (int base = begin; base < end; base += kWarp) {
    const int p = base + lane;
    const int e = p < end ? ids[p] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int before = e >= 0 ? mine[e] : 0;
    __syncwarp();  // every peer has read mine[e] before the leader moves it on
    if (e >= 0) {
      pair_row[p] = expert_offset[e] + before + __popc(peers & lower_lanes);
      if ((peers & lower_lanes) == 0) mine[e] = before + __popc(peers);
    }
    __syncwarp();
  }
}

// xs[pair_row[p]] = x[p / K]: one block per pair, 16-byte copies.
__global__ void gather_kernel(const uint4* __restrict__ x,
                              const std::int32_t* __restrict__ pair_row, int top_k, int row_vecs,
                              uint4* __restrict__ xs) {
  const int p = blockIdx.x;
  const uint4* src = x + static_cast<std::size_t>(p / top_k) * row_vecs;
  uint4* dst = xs + static_cast<std::size_t>(pair_row[p]) * row_vecs;
  for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) dst[i] = src[i];
}

// h[r] = SiLU(gate[r]) * up[r] for every permuted row r, gate and up being the two halves of
// gate_up[r]; fp32 math, stored in T as the next GEMM reads it.
template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, std::size_t rows, int inter,
                                T* __restrict__ h) {
  const std::size_t row_vecs = static_cast<std::size_t>(inter) / kVec;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
       i < rows * row_vecs; i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t r = i / row_vecs, c = (i % row_vecs) * kVec;
    const T* gate = gate_up + r * 2 * inter + c;
    alignas(16) T g[kVec], u[kVec], out[kVec];
    *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(gate);
    *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(gate + inter);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float gv = to_float(g[j]);
      out[j] = from_float<T>(gv / (1.0f + expf(-gv)) * to_float(u[j]));
    }
    *reinterpret_cast<uint4*>(h + r * inter + c) = *reinterpret_cast<const uint4*>(out);
  }
}

// y[t] = sum over k, in k order, of weight[t, k] * out[pair_row[t, k]], accumulated in fp32.
template <typename T>
__global__ void combine_kernel(const T* __restrict__ out, const std::int32_t* __restrict__ pair_row,
                               const float* __restrict__ weights, int top_k, int hidden,
                               T* __restrict__ y) {
  const std::size_t t = blockIdx.x;
  for (int c = threadIdx.x * kVec; c < hidden; c += blockDim.x * kVec) {
    float acc[kVec] = {};
    for (int k = 0; k < top_k; ++k) {
      const float w = weights[t * top_k + k];
      alignas(16) T v[kVec];
      *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(
          out + static_cast<std::size_t>(pair_row[t * top_k + k]) * hidden + c);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += w * to_float(v[j]);
    }
    alignas(16) T result[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) result[j] = from_float<T>(acc[j]);
    *reinterpret_cast<uint4*>(y + t * hidden + c) = *reinterpret_cast<const uint4*>(result);
  }
}

template <typename T>
cudaError_t launch_silu_mul(const void* gate_up, std::size_t rows, int inter, void* h,
                            cudaStream_t stream) {
  const std::size_t vecs = rows * static_cast<std::size_t>(inter) / kVec;
  const int blocks = static_cast<int>(std::min<std::size_t>((vecs + 255) / 256, 4096));
  silu_mul_kernel<T>
      <<<blocks, 256, 0, stream>>>(static_cast<const T*>(gate_up), rows, inter, static_cast<T*>(h));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_combine(const void* out, const std::int32_t* pair_row, const float* weights,
                           int tokens, int top_k, int hidden, void* y, cudaStream_t stream) {
  combine_kernel<T><<<tokens, kRowThreads, 0, stream>>>(static_cast<const T*>(out), pair_row,
                                                        weights, top_k, hidden, static_cast<T*>(y));
  return cudaGetLastError();
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

CublasBaseline::~CublasBaseline() { release(); }

void CublasBaseline::release() noexcept {
  for (void* p : allocations_) (void)cudaFree(p);
  allocations_.clear();
  if (host_offsets_) (void)cudaFreeHost(host_offsets_);
  host_offsets_ = nullptr;
  if (host_ptrs_) (void)cudaFreeHost(static_cast<void*>(host_ptrs_));
  host_ptrs_ = nullptr;
  ptrs_ = nullptr;
  if (handle_) (void)cublasDestroy(handle_);
  handle_ = nullptr;
  logits_ = nullptr;
  topk_ids_ = nullptr;
  topk_weights_ = nullptr;
  offsets_ = nullptr;
  pair_row_ = nullptr;
  xs_ = gate_up_ = h_ = out_ = nullptr;
  shape_ = BaselineShape{};
}

std::string CublasBaseline::alloc(void** p, std::size_t bytes, const char* what) {
  *p = nullptr;
  const cudaError_t e = cudaMalloc(p, bytes);
  if (e != cudaSuccess) {
    *p = nullptr;
    return fmt::format("cudaMalloc of {} ({} bytes): {}", what, bytes, cudaGetErrorString(e));
  }
  allocations_.push_back(*p);
  return {};
}

std::string CublasBaseline::create(const BaselineShape& shape, const void* router, const void* w13,
                                   const void* w2) {
  release();
  const BaselineShape& s = shape;
  if (s.hidden <= 0 || s.hidden % kVec != 0)
    return fmt::format("hidden = {} must be a positive multiple of {}", s.hidden, kVec);
  if (s.intermediate <= 0 || s.intermediate % kVec != 0)
    return fmt::format("intermediate = {} must be a positive multiple of {}", s.intermediate, kVec);
  if (s.experts <= 0 || s.top_k <= 0 || s.top_k > s.experts)
    return fmt::format("experts = {}, top_k = {}: need 0 < top_k <= experts", s.experts, s.top_k);
  if (s.max_tokens <= 0) return fmt::format("max_tokens = {} must be positive", s.max_tokens);
  if (!router || !w13 || !w2) return "a weight pointer is null";
  if (!aligned16(w13) || !aligned16(w2)) return "w13 and w2 must be 16-byte aligned";
  // The sort keeps a [warps][E] table and E + 1 offsets in shared memory.
  const int table_ints = kMaxSharedBytes / 4 - (s.experts + 1);
  sort_warps_ = std::min(1024 / kWarp, table_ints / s.experts);
  if (sort_warps_ < 1)
    return fmt::format("experts = {} too many for the sort's shared memory", s.experts);
  const std::size_t route_shared = static_cast<std::size_t>(kRouteWarps) * s.experts * 4;
  if (route_shared > kMaxSharedBytes)
    return fmt::format("experts = {} too many for the routing's shared memory", s.experts);

  const std::size_t T = s.max_tokens, E = s.experts, K = s.top_k, H = s.hidden, I = s.intermediate,
                    pairs = T * K;
  std::string err;
  const auto step = [&](void** p, std::size_t bytes, const char* what) {
    if (err.empty()) err = alloc(p, bytes, what);
  };
  step(reinterpret_cast<void**>(&logits_), T * E * sizeof(float), "logits");
  step(reinterpret_cast<void**>(&topk_ids_), pairs * sizeof(std::int32_t), "top-k ids");
  step(reinterpret_cast<void**>(&topk_weights_), pairs * sizeof(float), "top-k weights");
  step(reinterpret_cast<void**>(&offsets_), (E + 1) * sizeof(std::int32_t), "expert offsets");
  step(reinterpret_cast<void**>(&pair_row_), pairs * sizeof(std::int32_t), "pair rows");
  step(&xs_, pairs * H * 2, "permuted x");
  step(&gate_up_, pairs * 2 * I * 2, "gate/up outputs");
  step(&h_, pairs * I * 2, "activations");
  step(&out_, pairs * H * 2, "expert outputs");
  step(reinterpret_cast<void**>(&ptrs_), 6 * E * sizeof(void*), "grouped GEMM pointers");
  if (err.empty()) {
    const cudaError_t e =
        cudaMallocHost(reinterpret_cast<void**>(&host_offsets_), (E + 1) * sizeof(std::int32_t));
    if (e != cudaSuccess) {
      host_offsets_ = nullptr;
      err = fmt::format("cudaMallocHost of the expert offsets: {}", cudaGetErrorString(e));
    }
  }
  if (err.empty()) {
    const cudaError_t e =
        cudaMallocHost(reinterpret_cast<void**>(&host_ptrs_), 6 * E * sizeof(void*));
    if (e != cudaSuccess) {
      host_ptrs_ = nullptr;
      err = fmt::format("cudaMallocHost of the grouped GEMM pointers: {}", cudaGetErrorString(e));
    }
  }
  for (auto* v :
       {&group_m_, &group_n_, &group_k_, &group_lda_, &group_ldb_, &group_ldc_, &group_size_}) {
    v->assign(E, 0);
  }
  group_transa_.assign(E, CUBLAS_OP_T);
  group_transb_.assign(E, CUBLAS_OP_N);
  group_alpha_.assign(E, 1.0f);
  group_beta_.assign(E, 0.0f);
  group_size_.assign(E, 1);
  if (err.empty()) {
    const cublasStatus_t st = cublasCreate(&handle_);
    if (st != CUBLAS_STATUS_SUCCESS) {
      handle_ = nullptr;
      err = fmt::format("cublasCreate: {}", cublasGetStatusString(st));
    }
  }
  if (!err.empty()) {
    release();
    return err;
  }
  shape_ = s;
  router_ = router;
  w13_ = w13;
  w2_ = w2;
  return {};
}

std::string CublasBaseline::forward(const void* x, void* y, int num_tokens, cudaStream_t stream,
                                    ExpertGemms gemms) {
  if (!handle_) return "the cuBLAS baseline was not created";
  if (num_tokens < 1 || num_tokens > shape_.max_tokens)
    return fmt::format("num_tokens = {} must lie in [1, {}]", num_tokens, shape_.max_tokens);
  if (!aligned16(x) || !aligned16(y)) return "x and y must be 16-byte aligned";
  const int T = num_tokens, E = shape_.experts, K = shape_.top_k, H = shape_.hidden,
            I = shape_.intermediate;
  const int pairs = T * K;
  const bool bf16 = shape_.dtype == flashmoe::DType::BF16;
  const cudaDataType_t dt = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const float one = 1.0f, zero = 0.0f;
  BASELINE_CUBLAS(cublasSetStream(handle_, stream));

  // (a) logits [T, E] = x R^T in fp32; column-major that is logits^T = R^T(op T) x.
  BASELINE_CUBLAS(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, E, T, H, &one, router_, dt, H, x,
                               dt, H, &zero, logits_, CUDA_R_32F, E, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
  // (b) softmax, top-k, renormalization.
  route_kernel<<<(T + kRouteWarps - 1) / kRouteWarps, kRouteWarps * kWarp,
                 static_cast<std::size_t>(kRouteWarps) * E * sizeof(float), stream>>>(
      logits_, T, E, K, shape_.renormalize, topk_ids_, topk_weights_);
  BENCH_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  // (c) per-expert offsets and each pair's row, then x rows into expert order.
  sort_kernel<<<1, sort_warps_ * kWarp,
                (static_cast<std::size_t>(sort_warps_) * E + E + 1) * sizeof(std::int32_t),
                stream>>>(topk_ids_, pairs, E, offsets_, pair_row_);
  BENCH_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  gather_kernel<<<pairs, kRowThreads, 0, stream>>>(static_cast<const uint4*>(x), pair_row_, K,
                                                   H / kVec, static_cast<uint4*>(xs_));
  BENCH_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  // (d) Host round trip: cublasGemmEx takes each expert's row count as a host argument, so the
  // host waits for the routing here (as llama.cpp-style engines do). This is also why the
  // baseline cannot be captured in a CUDA graph.
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(
      host_offsets_, offsets_, (E + 1) * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  BENCH_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));

  // (e) Per expert with rows: gate/up [n_e, 2I] = xs_e W13_e^T, i.e. column-major
  // C^T [2I, n_e] = W13_e(op T, lda H) xs_e(op N, ldb H).
  const char* w13 = static_cast<const char*>(w13_);
  const char* w2 = static_cast<const char*>(w2_);
  char* xs = static_cast<char*>(xs_);
  char* gate_up = static_cast<char*>(gate_up_);
  char* h = static_cast<char*>(h_);
  char* out = static_cast<char*>(out_);
  constexpr std::size_t kBytes = 2;  // bf16 and fp16
  // Down: out_e [n_e, H] = h_e W2_e^T, column-major C^T [H, n_e] = W2_e(op T, lda I) h_e(op N).
  if (gemms == ExpertGemms::Grouped) {
    // One group per expert with rows; the pointer arrays go to the device in one copy.
    const void** a_gu = host_ptrs_;
    const void** b_gu = host_ptrs_ + E;
    const void** c_gu = host_ptrs_ + 2 * E;
    const void** a_d = host_ptrs_ + 3 * E;
    const void** b_d = host_ptrs_ + 4 * E;
    const void** c_d = host_ptrs_ + 5 * E;
    int groups = 0;
    for (int e = 0; e < E; ++e) {
      const int n = host_offsets_[e + 1] - host_offsets_[e];
      if (n == 0) continue;
      const std::size_t row0 = static_cast<std::size_t>(host_offsets_[e]);
      a_gu[groups] = w13 + static_cast<std::size_t>(e) * 2 * I * H * kBytes;
      b_gu[groups] = xs + row0 * H * kBytes;
      c_gu[groups] = gate_up + row0 * 2 * I * kBytes;
      a_d[groups] = w2 + static_cast<std::size_t>(e) * H * I * kBytes;
      b_d[groups] = h + row0 * I * kBytes;
      c_d[groups] = out + row0 * H * kBytes;
      group_n_[groups] = n;
      ++groups;
    }
    BENCH_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(ptrs_, host_ptrs_, 6 * E * sizeof(void*), cudaMemcpyHostToDevice, stream));
    const auto grouped = [&](int m, int k, int phase) {
      for (int g = 0; g < groups; ++g) {
        group_m_[g] = m;
        group_k_[g] = k;
        group_lda_[g] = k;
        group_ldb_[g] = k;
        group_ldc_[g] = m;
      }
      return cublasGemmGroupedBatchedEx(
          handle_, group_transa_.data(), group_transb_.data(), group_m_.data(), group_n_.data(),
          group_k_.data(), group_alpha_.data(), ptrs_ + 3 * phase * E, dt, group_lda_.data(),
          ptrs_ + (3 * phase + 1) * E, dt, group_ldb_.data(), group_beta_.data(),
          const_cast<void**>(ptrs_ + (3 * phase + 2) * E), dt, group_ldc_.data(), groups,
          group_size_.data(), CUBLAS_COMPUTE_32F);
    };
    BASELINE_CUBLAS(grouped(2 * I, H, 0));
    BENCH_RETURN_IF_CUDA_ERROR(bf16 ? launch_silu_mul<__nv_bfloat16>(gate_up_, pairs, I, h_, stream)
                                    : launch_silu_mul<__half>(gate_up_, pairs, I, h_, stream));
    BASELINE_CUBLAS(grouped(H, I, 1));
  } else {
    for (int e = 0; e < E; ++e) {
      const int n = host_offsets_[e + 1] - host_offsets_[e];
      if (n == 0) continue;
      const std::size_t row0 = static_cast<std::size_t>(host_offsets_[e]);
      BASELINE_CUBLAS(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, 2 * I, n, H, &one,
                                   w13 + static_cast<std::size_t>(e) * 2 * I * H * kBytes, dt, H,
                                   xs + row0 * H * kBytes, dt, H, &zero,
                                   gate_up + row0 * 2 * I * kBytes, dt, 2 * I, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    }
    BENCH_RETURN_IF_CUDA_ERROR(bf16 ? launch_silu_mul<__nv_bfloat16>(gate_up_, pairs, I, h_, stream)
                                    : launch_silu_mul<__half>(gate_up_, pairs, I, h_, stream));
    for (int e = 0; e < E; ++e) {
      const int n = host_offsets_[e + 1] - host_offsets_[e];
      if (n == 0) continue;
      const std::size_t row0 = static_cast<std::size_t>(host_offsets_[e]);
      BASELINE_CUBLAS(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, H, n, I, &one,
                                   w2 + static_cast<std::size_t>(e) * H * I * kBytes, dt, I,
                                   h + row0 * I * kBytes, dt, I, &zero, out + row0 * H * kBytes, dt,
                                   H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
  // (f) Weighted sum of each token's K expert outputs.
  BENCH_RETURN_IF_CUDA_ERROR(
      bf16 ? launch_combine<__nv_bfloat16>(out_, pair_row_, topk_weights_, T, K, H, y, stream)
           : launch_combine<__half>(out_, pair_row_, topk_weights_, T, K, H, y, stream));
  return {};
}

}  // namespace flashmoe_bench
