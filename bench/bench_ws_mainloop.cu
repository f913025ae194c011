// Times the warp-specialised gathered GEMM (tests/ws_gather_gemm.cuh) with each way of loading
// the token rows, at expert-GEMM shapes, in TFLOP/s: the measurement that picks the prefill
// engine's A path (issue 20); and issue 21's decode stream (tests/ws_decode_stream.cuh) at the
// T = 1 selections of the benchmark shapes, in us and TB/s of expert weights, and its routing
// prelude (tests/ws_decode_prelude.cuh) beside an empty kernel's launch, and both as one layer
// (tests/ws_decode_layer.cuh), timed as bench_moe times a forward. Run on an H100/H200;
// elsewhere every row is skipped.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_fill.cuh"
#include "stream_paths.cuh"
#include "ws_decode_layer.cuh"
#include "ws_decode_prelude.cuh"
#include "ws_decode_stream.cuh"
#include "ws_gather_gemm.cuh"

namespace {

using flashmoe_test::AGather;

struct Buffer {
  explicit Buffer(std::size_t n) : bytes(n) {
    if (cudaMalloc(&ptr, n) != cudaSuccess) ptr = nullptr;
  }
  ~Buffer() { (void)cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr);
  }
  void* ptr = nullptr;
  std::size_t bytes;
};

struct Shape {
  const char* name;
  int tokens, top_k, hidden, n_total;  // n_total: gate + up rows of one expert GEMM
  int experts;                         // the "/dram_w" rows' copies of W
};

// Gate/up of Qwen3-30B-A3B at T = 4096 (2 x 768 rows) and of Mixtral-8x7B (2 x 14336).
constexpr Shape kShapes[] = {{"Qwen3_gateup", 4096, 8, 2048, 1536, 128},
                             {"Mixtral_gateup", 4096, 2, 4096, 28672, 8}};

// The expert-sorted copy of x as routing's gathers would write it: row i is x[rows[i]] (zeros
// for padding rows), so that the Contiguous rows multiply real data (an all-zero A runs the
// tensor cores at a power, and so a clock, that real data does not).
__global__ void gather_rows_kernel(__nv_bfloat16* sorted, const __nv_bfloat16* x, const int* rows,
                                   int n_rows, int hidden) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       i < static_cast<std::int64_t>(n_rows) * hidden;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int r = rows[i / hidden];
    sorted[i] =
        r < 0 ? __float2bfloat16(0.0f) : x[static_cast<std::int64_t>(r) * hidden + i % hidden];
  }
}

template <int BN, int Stages, AGather G, int InFlight, bool Gated, bool Multicast,
          flashmoe_test::WsGemmWork Work = flashmoe_test::WsGemmWork::MmaStore>
// copies > 1: that many copies of W, m-tile mt on copy mt % copies (weights from DRAM).
void BM_WsGatherGemm(benchmark::State& state, Shape s, int copies) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      major != 9) {
    state.SkipWithError("needs an sm_90 GPU");
    return;
  }
  const int m = s.tokens * s.top_k, mtiles = (m + flashmoe_test::kWsBM - 1) / flashmoe_test::kWsBM;
  std::vector<__nv_bfloat16> x(static_cast<std::size_t>(s.tokens) * s.hidden),
      w(static_cast<std::size_t>(s.n_total) * s.hidden);
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = __float2bfloat16(u(rng));
  for (auto& v : w) v = __float2bfloat16(u(rng));
  // Rows in m-tile order as routing would give them: each token K times, shuffled.
  std::vector<int> rows(static_cast<std::size_t>(mtiles) * flashmoe_test::kWsBM, -1);
  for (int i = 0; i < m; ++i) rows[i] = i / s.top_k;
  std::shuffle(rows.begin(), rows.begin() + m, rng);
  const int out_cols = Gated ? s.n_total / 2 : s.n_total;
  Buffer dx(x.size() * 2), dw(w.size() * 2), drows(rows.size() * 4),
      dsorted(rows.size() * s.hidden * 2), dc(rows.size() * s.n_total * 4),
      dh(rows.size() * out_cols * 2), dw_all(copies > 1 ? w.size() * 2 * copies : 0), words(4096);
  if (!dx.ptr || !dw.ptr || !drows.ptr || !dsorted.ptr || !dc.ptr || !dh.ptr || !words.ptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  cudaMemcpy(dx.get(), x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dw.get(), w.data(), w.size() * 2, cudaMemcpyHostToDevice);
  if (copies > 1) {
    if (!dw_all.ptr) {
      state.SkipWithError("cudaMalloc failed");
      return;
    }
    for (int i = 0; i < copies; ++i) {
      cudaMemcpy(dw_all.get<char>() + i * w.size() * 2, dw.get(), w.size() * 2,
                 cudaMemcpyDeviceToDevice);
    }
  }
  cudaMemcpy(drows.get(), rows.data(), rows.size() * 4, cudaMemcpyHostToDevice);
  gather_rows_kernel<<<1024, 256>>>(dsorted.get<__nv_bfloat16>(), dx.get<__nv_bfloat16>(),
                                    drows.get<int>(), static_cast<int>(rows.size()), s.hidden);
  cudaMemset(words.get(), 0, words.bytes);
  CUtensorMap x_map, w_map, h_map;
  const bool ok =
      flashmoe_test::encode_bf16_map(h_map, dh.get(), static_cast<int>(rows.size()), out_cols,
                                     64) &&
      (G == AGather::Contiguous
           ? flashmoe_test::encode_bf16_map(x_map, dsorted.get(), static_cast<int>(rows.size()),
                                            s.hidden, flashmoe_test::kWsBM)
           : flashmoe_test::encode_bf16_map(x_map, dx.get(), s.tokens, s.hidden, 1)) &&
      flashmoe_test::encode_bf16_map(w_map, copies > 1 ? dw_all.get() : dw.get(),
                                     s.n_total * copies, s.hidden,
                                     Gated || Multicast ? BN / 2 : BN);
  if (!ok) {
    state.SkipWithError("cuTensorMapEncodeTiled failed");
    return;
  }
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const flashmoe_test::WsGemmArgs args{
      drows.get<int>(),
      dx.get<__nv_bfloat16>(),
      s.tokens,
      mtiles,
      (s.n_total + BN - 1) / BN,  // gated: n_total / 2 columns, BN / 2 a tile
      s.hidden,
      dc.get<float>(),
      out_cols,
      {{words.get<std::uint32_t>(), nullptr}, 2'000'000'000ull},
      dh.get<__nv_bfloat16>(),
      copies};
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  int clusters = 0;
  auto launch = [&] {
    if constexpr (Multicast) {
      return flashmoe_test::launch_ws_multicast_gemm<BN, Stages, InFlight, Gated>(
          x_map, w_map, args, sms, nullptr, clusters);
    } else {
      return flashmoe_test::launch_ws_gather_gemm<BN, Stages, G, InFlight, Gated, Work>(
          x_map, w_map, args, sms, nullptr, &h_map);
    }
  };
  for (int i = 0; i < 2; ++i) {
    if (launch() != cudaSuccess) {
      state.SkipWithError("launch failed");
      return;
    }
  }
  for (auto _ : state) {
    cudaEventRecord(start);
    (void)launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  if (cudaDeviceSynchronize() != cudaSuccess) state.SkipWithError("kernel failed");
  const double flops = 2.0 * rows.size() * s.n_total * s.hidden;
  state.counters["TFLOPs"] =
      benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  if (Multicast) state.counters["blocks"] = 2 * clusters;
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

// The reference for the mainloop rows: cuBLAS's bf16 GEMM (fp32 accumulate, bf16 out) of the
// same expert-GEMM shape on random data, C [tokens x top_k, n_total] = A W^T, as one GEMM.
void BM_CublasGemm(benchmark::State& state, Shape s) {
  const std::int64_t m = static_cast<std::int64_t>(s.tokens) * s.top_k, n = s.n_total, k = s.hidden;
  Buffer a(m * k * 2), w(n * k * 2), c(m * n * 2);
  cublasHandle_t handle = nullptr;
  if (!a.ptr || !w.ptr || !c.ptr || cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    state.SkipWithError("no GPU, memory or cuBLAS");
    return;
  }
  fill_random<<<1024, 256>>>(a.get<__nv_bfloat16>(), static_cast<std::size_t>(m * k), 1, 1.0f);
  fill_random<<<1024, 256>>>(w.get<__nv_bfloat16>(), static_cast<std::size_t>(n * k), 2, 1.0f);
  const float one = 1.0f, zero = 0.0f;
  auto gemm = [&] {
    return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                        static_cast<int>(k), &one, w.ptr, CUDA_R_16BF, static_cast<int>(k), a.ptr,
                        CUDA_R_16BF, static_cast<int>(k), &zero, c.ptr, CUDA_R_16BF,
                        static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  for (int i = 0; i < 2; ++i) (void)gemm();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    const cublasStatus_t st = gemm();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (st != CUBLAS_STATUS_SUCCESS) {
      state.SkipWithError("cublasGemmEx failed");
      break;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["TFLOPs"] =
      benchmark::Counter(2.0 * m * n * k / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  (void)cublasDestroy(handle);
}

template <int BN, int Stages, AGather G, int InFlight = 0, bool Gated = false,
          bool Multicast = false,
          flashmoe_test::WsGemmWork Work = flashmoe_test::WsGemmWork::MmaStore>
void register_rows(const char* gather, bool dram_w = false) {
  using flashmoe_test::WsGemmWork;
  const char* work = Work == WsGemmWork::MmaOnly     ? "/no_store"
                     : Work == WsGemmWork::NoMma     ? "/no_mma"
                     : Work == WsGemmWork::StoreBf16 ? "/bf16_store"
                     : Work == WsGemmWork::StoreTma  ? "/tma_store"
                                                     : "";
  for (const Shape& s : kShapes) {
    benchmark::RegisterBenchmark((std::string(s.name) + "/BN" + std::to_string(BN) + "/" + gather +
                                  (InFlight ? "/in_flight1" : "") + (Gated ? "/silu" : "") + work +
                                  (dram_w ? "/dram_w/stages" + std::to_string(Stages) : ""))
                                     .c_str(),
                                 BM_WsGatherGemm<BN, Stages, G, InFlight, Gated, Multicast, Work>,
                                 s, dram_w ? s.experts : 1)
        ->UseManualTime()
        ->Iterations(10)
        ->Unit(benchmark::kMicrosecond);
  }
}

// The prototypes' timing, as bench_moe times forwards: `capture` enqueues `launches` launches
// on a stream being captured into a graph (after one memset node zeroing `counters`); the graph
// runs three times, then once per iteration. Returns the median microseconds per launch, or a
// negative value after SkipWithError (a failed launch, or a wait's watchdog in `control`).
template <class Capture>
double time_graph(benchmark::State& state, int launches, const Buffer& counters,
                  const Buffer& control, Capture&& capture) {
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  ok = ok && cudaMemsetAsync(counters.ptr, 0, counters.bytes, stream) == cudaSuccess;
  ok = ok && capture(stream);
  ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok;
  ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  for (int i = 0; i < 3 && ok; ++i) ok = cudaGraphLaunch(exec, stream) == cudaSuccess;
  ok = ok && cudaStreamSynchronize(stream) == cudaSuccess;
  std::uint32_t error = 0;
  cudaMemcpy(&error,
             control.get<std::uint32_t>() +
                 flashmoe::detail::kStickyError * flashmoe::detail::kControlStride,
             4, cudaMemcpyDeviceToHost);
  double median = -1.0;
  if (!ok || error != 0) {
    state.SkipWithError("a launch failed (launch, graph or a wait's watchdog)");
  } else {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    std::vector<float> times;
    for (auto _ : state) {
      cudaEventRecord(start, stream);
      cudaGraphLaunch(exec, stream);
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms / 1e3 / launches);
      times.push_back(ms * 1e3f / launches);
    }
    std::sort(times.begin(), times.end());
    median = times[times.size() / 2];
    state.counters["us_median"] = median;
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  return median;
}

struct StreamShape {
  const char* name;
  int hidden, inter, experts, selected;  // selected: the experts one token chooses (K)
};

constexpr StreamShape kStreamShapes[] = {{"Qwen3-30B-A3B", 2048, 768, 128, 8},
                                         {"OLMoE", 2048, 1024, 64, 8},
                                         {"DeepSeek-V2-Lite", 2048, 1408, 64, 6},
                                         {"Mixtral-8x7B", 4096, 14336, 8, 2}};

// One token's stream: a CUDA graph of 8 launches, each on its own selection of experts (so no
// launch finds its weights in L2) with its own zeroed counters (one memset node first), as
// bench_moe times its forwards. Reports us per launch and the expert weights' rate.
template <class V>
void BM_DecodeStream(benchmark::State& state, StreamShape s) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      major != 9) {
    state.SkipWithError("needs an sm_90 GPU");
    return;
  }
  constexpr int kLaunches = 8;
  constexpr int kSlotRows = V::kTokens;  // token rows of a slot
  const std::size_t H = s.hidden, I = s.inter, E = s.experts, S = s.selected;
  const std::size_t rows = S * kSlotRows;
  Buffer dw13(E * 2 * I * H * 2), dw2(E * H * I * 2), dx(rows * H * 2), dh(rows * I * 2),
      dout(rows * H * 4), dexperts(kLaunches * S * 4), words(kLaunches * (1 + S) * 4),
      control(64 * 4 * 16);
  if (!dw13.ptr || !dw2.ptr || !dx.ptr || !dh.ptr || !dout.ptr || !dexperts.ptr || !words.ptr ||
      !control.ptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  // Weight values do not change the timing; one token row, the rest zeros.
  cudaMemset(dw13.ptr, 0x3c, dw13.bytes);
  cudaMemset(dw2.ptr, 0x3c, dw2.bytes);
  cudaMemset(dx.ptr, 0, dx.bytes);
  cudaMemset(control.ptr, 0, control.bytes);
  std::vector<int> experts(kLaunches * S);
  for (std::size_t i = 0; i < experts.size(); ++i) experts[i] = static_cast<int>(i % E);
  cudaMemcpy(dexperts.ptr, experts.data(), experts.size() * 4, cudaMemcpyHostToDevice);
  flashmoe_test::DecodeStreamMaps maps{};
  const int n = static_cast<int>(rows);
  if (!flashmoe_test::encode_bf16_map(maps.x, dx.ptr, n, s.hidden, kSlotRows) ||
      !flashmoe_test::encode_bf16_map(maps.w13, dw13.ptr, static_cast<int>(E * 2 * I), s.hidden,
                                      flashmoe_test::kDsGateCols) ||
      !flashmoe_test::encode_bf16_map(maps.w2, dw2.ptr, static_cast<int>(E * H), s.inter, 64) ||
      !flashmoe_test::encode_bf16_map(maps.h, dh.ptr, n, s.inter, kSlotRows)) {
    state.SkipWithError("cuTensorMapEncodeTiled failed");
    return;
  }
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  if (flashmoe_test::ws_decode_stream_blocks_per_sm<V>() < V::kBlocksPerSm) {
    state.SkipWithError("the variant's blocks do not fit an SM together");
    return;
  }
  const int grid = sms * V::kBlocksPerSm;
  const double us = time_graph(state, kLaunches, words, control, [&](cudaStream_t stream) {
    for (int l = 0; l < kLaunches; ++l) {
      const flashmoe_test::DecodeStreamArgs args{
          dexperts.get<int>() + l * S,
          s.selected,
          s.hidden,
          s.inter,
          dh.get<__nv_bfloat16>(),
          dout.get<float>(),
          words.get<std::uint32_t>() + l * (1 + S),
          {{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull}};
      if (flashmoe_test::launch_ws_decode_stream<V>(maps, args, grid, stream) != cudaSuccess) {
        return false;
      }
    }
    return true;
  });
  if (us > 0) state.counters["weights_TBps"] = 3.0 * S * H * I * 2 / (us * 1e-6) / 1e12;
}

// The decode stream's copy paths alone (stream_paths.cuh): a CUDA graph of 8 launches, each on
// its own selection of experts, timed as BM_DecodeStream's; every launch's XOR of the bytes it
// read is then checked against the reference kernel's, so a row whose path skipped or repeated
// bytes fails instead of reporting a rate.
template <flashmoe_bench::StreamPath P, int R, int BK, int Stages>
void BM_StreamPath(benchmark::State& state, StreamShape s) {
  using flashmoe_bench::StreamPathArgs;
  using Kernel = flashmoe_bench::StreamPathKernel<P, R, BK, Stages>;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      major != 9) {
    state.SkipWithError("needs an sm_90 GPU");
    return;
  }
  const auto chunks_fit = [](int kdim) {
    return kdim % BK == 0 &&
           (kdim <= flashmoe_bench::kTileCols || kdim % flashmoe_bench::kTileCols == 0);
  };
  if ((2 * s.inter) % R != 0 || s.hidden % R != 0 || !chunks_fit(s.hidden) ||
      !chunks_fit(s.inter)) {
    state.SkipWithError("the shape is not whole tiles and stages of this path");
    return;
  }
  constexpr int kLaunches = 8, kWords = 6;  // per launch: the tile queue, the XOR, the count
  const std::size_t H = s.hidden, I = s.inter, E = s.experts, S = s.selected;
  Buffer dw13(E * 2 * I * H * 2), dw2(E * H * I * 2), dexperts(kLaunches * S * 4),
      words(kLaunches * kWords * 4), ref(kLaunches * 4 * 4), control(64 * 4 * 16);
  if (!dw13.ptr || !dw2.ptr || !dexperts.ptr || !words.ptr || !ref.ptr || !control.ptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  fill_random<<<1024, 256>>>(dw13.get<__nv_bfloat16>(), dw13.bytes / 2, 13, 1.0f);
  fill_random<<<1024, 256>>>(dw2.get<__nv_bfloat16>(), dw2.bytes / 2, 2, 1.0f);
  cudaMemset(control.ptr, 0, control.bytes);
  std::vector<int> experts(kLaunches * S);
  for (std::size_t i = 0; i < experts.size(); ++i) experts[i] = static_cast<int>(i % E);
  cudaMemcpy(dexperts.ptr, experts.data(), experts.size() * 4, cudaMemcpyHostToDevice);
  CUtensorMap m13{}, m2{};
  if (!flashmoe_test::encode_bf16_map(m13, dw13.ptr, static_cast<int>(E * 2 * I), s.hidden, R) ||
      !flashmoe_test::encode_bf16_map(m2, dw2.ptr, static_cast<int>(E * H), s.inter, R)) {
    state.SkipWithError("cuTensorMapEncodeTiled failed");
    return;
  }
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int per_sm = Kernel::blocks_per_sm();
  if (per_sm == 0) {
    state.SkipWithError("the kernel does not fit an SM");
    return;
  }
  auto args = [&](int l, std::uint32_t* w) {
    return StreamPathArgs{dw13.get<__nv_bfloat16>(),
                          dw2.get<__nv_bfloat16>(),
                          dexperts.get<int>() + l * S,
                          s.selected,
                          s.hidden,
                          s.inter,
                          w + l * kWords,
                          w + l * kWords + 1,
                          w + l * kWords + 5};
  };
  const double us = time_graph(state, kLaunches, words, control, [&](cudaStream_t stream) {
    for (int l = 0; l < kLaunches; ++l) {
      if (Kernel::launch(m13, m2, args(l, words.get<std::uint32_t>()), sms * per_sm, stream) !=
          cudaSuccess) {
        return false;
      }
    }
    return true;
  });
  if (us <= 0) return;
  // The reference XOR of each launch's bytes, against what the last graph run's launches read.
  std::vector<std::uint32_t> got(kLaunches * kWords), want(kLaunches * 4);
  cudaMemset(ref.ptr, 0, ref.bytes);
  for (int l = 0; l < kLaunches; ++l) {
    StreamPathArgs a = args(l, words.get<std::uint32_t>());
    a.xor4 = ref.get<std::uint32_t>() + l * 4;
    flashmoe_bench::stream_reference_xor<<<sms * 8, 256>>>(a);
  }
  cudaMemcpy(got.data(), words.ptr, words.bytes, cudaMemcpyDeviceToHost);
  if (cudaMemcpy(want.data(), ref.ptr, ref.bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
    state.SkipWithError("the reference kernel failed");
    return;
  }
  const std::uint64_t expected_words = 3 * S * H * I / 8;
  for (int l = 0; l < kLaunches; ++l) {
    if (got[l * kWords + 5] != expected_words) {
      state.SkipWithError("the path read a different number of words than the experts hold");
      return;
    }
    for (int j = 0; j < 4; ++j) {
      if (got[l * kWords + 1 + j] != want[l * 4 + j]) {
        state.SkipWithError("the path's XOR differs from the reference: bytes skipped or repeated");
        return;
      }
    }
  }
  state.counters["weights_TBps"] = 3.0 * S * H * I * 2 / (us * 1e-6) / 1e12;
  state.counters["blocks_per_sm"] = per_sm;
}

__global__ void empty_kernel() {}

// The prelude (router, one publish, every block's own top-k) for T tokens: a CUDA graph of 256
// launches, each reading its own copy of the router (128 MB of copies for Qwen3's router, so
// mostly from DRAM, as a layer's forward reads it) and its own zeroed counter. tokens = 0: the
// same graph of an empty kernel (the launch's own cost).
void BM_DecodePrelude(benchmark::State& state, StreamShape s, int tokens) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      major != 9) {
    state.SkipWithError("needs an sm_90 GPU");
    return;
  }
  constexpr int kLaunches = 256;
  const std::size_t H = s.hidden, E = s.experts, K = s.selected;
  const std::size_t T = tokens > 0 ? tokens : 1;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  Buffer dx(T * H * 2), drouter(kLaunches * E * H * 2), dlogits(T * E * 4), dpub(kLaunches * 4),
      dids(sms * T * K * 4), dw(sms * T * K * 4), control(64 * 4 * 16);
  if (!dx.ptr || !drouter.ptr || !dlogits.ptr || !dpub.ptr || !dids.ptr || !dw.ptr ||
      !control.ptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  cudaMemset(dx.ptr, 0x3c, dx.bytes);
  cudaMemset(drouter.ptr, 0x3c, drouter.bytes);
  cudaMemset(control.ptr, 0, control.bytes);
  time_graph(state, kLaunches, dpub, control, [&](cudaStream_t stream) {
    for (int l = 0; l < kLaunches; ++l) {
      if (tokens == 0) {
        empty_kernel<<<sms, flashmoe_test::kDpThreads, 0, stream>>>();
      } else {
        const flashmoe_test::DecodePreludeArgs args{
            dx.get<__nv_bfloat16>(),
            drouter.get<__nv_bfloat16>() + l * E * H,
            tokens,
            s.hidden,
            s.experts,
            s.selected,
            dlogits.get<float>(),
            dpub.get<std::uint32_t>() + l,
            dids.get<int>(),
            dw.get<float>(),
            {{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull}};
        flashmoe_test::ws_decode_prelude_kernel<<<sms, flashmoe_test::kDpThreads, 0, stream>>>(
            args);
      }
      if (cudaGetLastError() != cudaSuccess) return false;
    }
    return true;
  });
}

// The decode layer prototype: a CUDA graph of 8 forwards on 8 different random inputs (so the
// routing, and the experts streamed, change from one to the next), each with its own zeroed
// counters (one memset node first), median per forward: bench_moe's method.
template <class V>
void BM_DecodeLayer(benchmark::State& state, StreamShape s, int tokens) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      major != 9) {
    state.SkipWithError("needs an sm_90 GPU");
    return;
  }
  constexpr int kLaunches = 8;
  using flashmoe_test::kDsTokens;
  const std::size_t H = s.hidden, I = s.inter, E = s.experts, K = s.selected, T = tokens;
  const std::size_t slots = std::min(E, T * K), slices = (H + 63) / 64;
  const std::size_t words_per = 1 + flashmoe_test::kDpMaxExperts + slices + 1;  // + published
  Buffer dx(kLaunches * T * H * 2), drouter(E * H * 2), dw13(E * 2 * I * H * 2), dw2(E * H * I * 2),
      dlogits(T * E * 4), dh(slots * kDsTokens * I * 2), dout(slots * kDsTokens * H * 4),
      dy(T * H * 2), words(kLaunches * words_per * 4), control(64 * 4 * 16);
  if (!dx.ptr || !drouter.ptr || !dw13.ptr || !dw2.ptr || !dlogits.ptr || !dh.ptr || !dout.ptr ||
      !dy.ptr || !words.ptr || !control.ptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> host(std::max(kLaunches * T * H, E * H));
  for (std::size_t i = 0; i < kLaunches * T * H; ++i) host[i] = __float2bfloat16(u(rng));
  cudaMemcpy(dx.ptr, host.data(), kLaunches * T * H * 2, cudaMemcpyHostToDevice);
  for (std::size_t i = 0; i < E * H; ++i) host[i] = __float2bfloat16(0.1f * u(rng));
  cudaMemcpy(drouter.ptr, host.data(), E * H * 2, cudaMemcpyHostToDevice);
  cudaMemset(dw13.ptr, 0x3c, dw13.bytes);  // expert weight values do not change the timing
  cudaMemset(dw2.ptr, 0x3c, dw2.bytes);
  cudaMemset(control.ptr, 0, control.bytes);
  std::vector<flashmoe_test::DecodeStreamMaps> maps(kLaunches);
  for (int l = 0; l < kLaunches; ++l) {
    if (!flashmoe_test::encode_bf16_map(maps[l].x, dx.get<__nv_bfloat16>() + l * T * H, tokens,
                                        s.hidden, kDsTokens) ||
        !flashmoe_test::encode_bf16_map(maps[l].w13, dw13.ptr, static_cast<int>(E * 2 * I),
                                        s.hidden, flashmoe_test::kDsGateCols) ||
        !flashmoe_test::encode_bf16_map(maps[l].w2, dw2.ptr, static_cast<int>(E * H), s.inter,
                                        64) ||
        !flashmoe_test::encode_bf16_map(maps[l].h, dh.ptr, static_cast<int>(slots * kDsTokens),
                                        s.inter, kDsTokens)) {
      state.SkipWithError("cuTensorMapEncodeTiled failed");
      return;
    }
  }
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const flashmoe::detail::Watchdog wd{{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull};
  time_graph(state, kLaunches, words, control, [&](cudaStream_t stream) {
    for (int l = 0; l < kLaunches; ++l) {
      std::uint32_t* w = words.get<std::uint32_t>() + l * words_per;
      const flashmoe_test::DecodeLayerArgs args{
          {dx.get<__nv_bfloat16>() + l * T * H, drouter.get<__nv_bfloat16>(), tokens, s.hidden,
           s.experts, s.selected, dlogits.get<float>(), w + words_per - 1, nullptr, nullptr, wd},
          {nullptr, 0, s.hidden, s.inter, dh.get<__nv_bfloat16>(), dout.get<float>(), w, wd},
          dy.get<__nv_bfloat16>(),
          w + 1 + flashmoe_test::kDpMaxExperts};
      if (flashmoe_test::launch_ws_decode_layer<V>(maps[l], args, sms, stream) != cudaSuccess) {
        return false;
      }
    }
    return true;
  });
}

template <class V>
void register_layer_rows(const char* variant) {
  for (const StreamShape& s : kStreamShapes) {
    for (int tokens : {1, 4, 16}) {
      benchmark::RegisterBenchmark(
          (std::string("DecodeLayer/") + s.name + "/T:" + std::to_string(tokens) + "/" + variant)
              .c_str(),
          BM_DecodeLayer<V>, s, tokens)
          ->UseManualTime()
          ->Iterations(30)
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

// One token's experts (T:1) on every shape, and where a token chooses fewer than all of them,
// every expert (all_experts: the bytes of T = 256 on Qwen3, whose experts average 16 rows
// there, as the prototype's slots hold; bench_moe's T = 256 tile phase is its comparison).
template <class V>
void register_stream_rows(const char* variant) {
  for (const StreamShape& s : kStreamShapes) {
    benchmark::RegisterBenchmark(
        (std::string("DecodeStream/") + s.name + "/T:1/" + variant).c_str(), BM_DecodeStream<V>, s)
        ->UseManualTime()
        ->Iterations(50)
        ->Unit(benchmark::kMicrosecond);
    if (s.selected == s.experts) continue;
    StreamShape all = s;
    all.selected = s.experts;
    benchmark::RegisterBenchmark(
        (std::string("DecodeStream/") + s.name + "/all_experts/" + variant).c_str(),
        BM_DecodeStream<V>, all)
        ->UseManualTime()
        ->Iterations(10)
        ->Unit(benchmark::kMicrosecond);
  }
}

template <flashmoe_bench::StreamPath P, int R, int BK, int Stages>
void register_path_rows(const char* variant) {
  // One token's experts on three shapes, and Qwen3's at about T = 4 (32 experts).
  static constexpr StreamShape kPathShapes[] = {{"Qwen3-30B-A3B", 2048, 768, 128, 8},
                                                {"OLMoE", 2048, 1024, 64, 8},
                                                {"Mixtral-8x7B", 4096, 14336, 8, 2},
                                                {"Qwen3-30B-A3B-32experts", 2048, 768, 128, 32}};
  for (const StreamShape& s : kPathShapes) {
    benchmark::RegisterBenchmark((std::string("StreamPath/") + s.name + "/" + variant).c_str(),
                                 BM_StreamPath<P, R, BK, Stages>, s)
        ->UseManualTime()
        ->Iterations(50)
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_rows<128, 6, AGather::RowBoxes>("row_boxes");
  register_rows<128, 6, AGather::CpAsync>("cp_async");
  register_rows<128, 6, AGather::Contiguous>("contiguous");
  register_rows<256, 4, AGather::RowBoxes>("row_boxes");
  register_rows<256, 4, AGather::CpAsync>("cp_async");
  register_rows<256, 4, AGather::Contiguous>("contiguous");
  register_rows<128, 6, AGather::CpAsync, 1>("cp_async");
  register_rows<128, 6, AGather::Contiguous, 1>("contiguous");
  register_rows<256, 4, AGather::CpAsync, 1>("cp_async");
  register_rows<256, 4, AGather::Contiguous, 1>("contiguous");
  register_rows<256, 4, AGather::CpAsync, 1, true>("cp_async");
  register_rows<256, 4, AGather::Contiguous, 1, true>("contiguous");
  // The engine's gate/up tile with A straight from x by its producer warp (no gathers).
  register_rows<256, 4, AGather::CpAsyncWarp>("cp_async_warp");
  register_rows<256, 4, AGather::CpAsyncWarp, 1, true>("cp_async_warp");
  register_rows<256, 4, AGather::CpAsyncWarp, 0, true>("cp_async_warp");
  register_rows<256, 4, AGather::Contiguous, 0, true>("contiguous");
  // The same mainloops without the test's scalar fp32 stores, and without MMAs (bench/NOTES.md,
  // issue 20's mainloop against the public GEMMs).
  register_rows<256, 4, AGather::Contiguous, 0, false, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "contiguous");
  register_rows<256, 4, AGather::Contiguous, 1, false, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "contiguous");
  register_rows<256, 4, AGather::Contiguous, 0, false, false, flashmoe_test::WsGemmWork::NoMma>(
      "contiguous");
  register_rows<256, 4, AGather::CpAsyncWarp, 0, false, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "cp_async_warp");
  register_rows<256, 4, AGather::CpAsyncWarp, 0, false, false, flashmoe_test::WsGemmWork::NoMma>(
      "cp_async_warp");
  // The engine's gate/up epilogue (bf16 h, 16-byte stores from the registers) against the same
  // values staged in shared memory and written by bulk tensor stores that overlap the next
  // tile's MMAs, and against no stores at all (session 22's question: would such an epilogue
  // pay).
  register_rows<256, 4, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::StoreBf16>(
      "contiguous");
  register_rows<256, 4, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::StoreTma>(
      "contiguous");
  register_rows<256, 4, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "contiguous");
  // The same gate/up tiles with the weights streamed from DRAM (m-tile mt on expert
  // mt % experts), on rings of 3 and 4 stages: whether the K loop is bound by the ring's depth
  // (session 22's design study, X1); if so, 3 stages run about a third slower than 4.
  register_rows<256, 3, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "contiguous", true);
  register_rows<256, 4, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::MmaOnly>(
      "contiguous", true);
  register_rows<256, 4, AGather::Contiguous, 0, true, false, flashmoe_test::WsGemmWork::StoreBf16>(
      "contiguous", true);
  for (const Shape& s : kShapes) {
    benchmark::RegisterBenchmark((std::string(s.name) + "/cublas").c_str(), BM_CublasGemm, s)
        ->UseManualTime()
        ->Iterations(10)
        ->Unit(benchmark::kMicrosecond);
  }
  // Clusters of two blocks sharing each stage's weight rows (multicast): half the L2 reads.
  register_rows<256, 4, AGather::Contiguous, 0, false, true>("contiguous_multicast");
  register_rows<256, 4, AGather::Contiguous, 0, true, true>("contiguous_multicast");
  using flashmoe_test::DsVariant;
  register_stream_rows<DsVariant<1, 0, 1>>("wg1");
  register_stream_rows<DsVariant<1, 1, 1>>("wg1/in_flight1");
  register_stream_rows<DsVariant<1, 0, 2>>("wg1/k128");
  register_stream_rows<DsVariant<1, 1, 2>>("wg1/in_flight1/k128");
  register_stream_rows<DsVariant<2, 0, 1>>("wg2");
  register_stream_rows<DsVariant<2, 1, 2>>("wg2/in_flight1/k128");
  for (const StreamShape& s : kStreamShapes) {
    for (int tokens : {1, 16}) {
      benchmark::RegisterBenchmark(
          (std::string("DecodePrelude/") + s.name + "/T:" + std::to_string(tokens)).c_str(),
          BM_DecodePrelude, s, tokens)
          ->UseManualTime()
          ->Iterations(50)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::RegisterBenchmark("DecodePrelude/empty_kernel", BM_DecodePrelude, kStreamShapes[0], 0)
      ->UseManualTime()
      ->Iterations(50)
      ->Unit(benchmark::kMicrosecond);
  register_layer_rows<DsVariant<1, 0, 1>>("wg1");
  register_layer_rows<DsVariant<2, 1, 2>>("wg2/in_flight1/k128");
  // No MMA: the consumers only wait for and release each stage (the producer's own rate).
  register_stream_rows<DsVariant<1, 0, 1, false>>("no_mma");
  register_stream_rows<DsVariant<1, 0, 2, false>>("no_mma/k128");
  // The consumers' cost in two parts: the MMAs without the epilogue (its shared-memory exchange,
  // first barrier and global stores; the job's last barrier and publication stay), and the
  // epilogue (on zero products) without the MMAs.
  register_stream_rows<DsVariant<1, 0, 2, true, false>>("wg1/k128/no_store");
  register_stream_rows<DsVariant<1, 0, 2, false, true>>("no_mma/k128/store");
  // Stages of 256 K columns (40 KB, five of them): half the per-stage waits and releases.
  register_stream_rows<DsVariant<1, 0, 4>>("wg1/k256");
  register_stream_rows<DsVariant<1, 0, 4, false>>("no_mma/k256");
  // Paired tiles (128 weight rows: two MMAs a K step, h formed and every element written from
  // registers, no shared-memory exchange), and their own no-MMA ceiling (the same boxes).
  register_stream_rows<DsVariant<1, 0, 1, true, true, true>>("wg1/pair");
  register_stream_rows<DsVariant<1, 0, 2, true, true, true>>("wg1/pair/k128");
  register_stream_rows<DsVariant<1, 1, 2, true, true, true>>("wg1/pair/in_flight1/k128");
  register_stream_rows<DsVariant<1, 0, 2, false, false, true>>("no_mma/pair/k128");
  // Slots of 32 and 48 token rows (OLMoE's T = 256 averages 32 rows an expert).
  register_stream_rows<DsVariant<1, 0, 2, true, true, true, 32>>("wg1/pair/k128/n32");
  register_stream_rows<DsVariant<1, 0, 2, true, true, true, 48>>("wg1/pair/k128/n48");
  register_stream_rows<DsVariant<1, 0, 2, false, false, true, 48>>("no_mma/pair/k128/n48");
  // out in bf16, the library's ypart type (row 174 c): the epilogue's stores halved.
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, true>>("wg1/k128/bf16");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, true>>("no_mma/k128/store/bf16");
  register_stream_rows<DsVariant<1, 0, 2, true, true, true, 16, true>>("wg1/pair/k128/bf16");
  // Row 174 d: the epilogue (on zero products) with parts left out (timing only): the proxy
  // fence after h, out's stores, h's stores, all three (the exchange and barrier left).
  using flashmoe_test::kDsSkipFence, flashmoe_test::kDsSkipOut, flashmoe_test::kDsSkipH;
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsSkipFence>>(
      "no_mma/k128/store/no_fence");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsSkipOut>>(
      "no_mma/k128/store/no_out");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsSkipH>>(
      "no_mma/k128/store/no_h");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false,
                                 kDsSkipFence | kDsSkipOut | kDsSkipH>>("no_mma/k128/store/none");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, kDsSkipFence>>(
      "wg1/k128/no_fence");
  register_stream_rows<DsVariant<1, 0, 2, false, false, false, 16, false, flashmoe_test::kDsDelay>>(
      "no_mma/k128/delay1000");
  // Row 174 e: each tile's h and out written as one contiguous block instead of rows 1.5-4 KB
  // apart (timing only; the same bytes), fp32 and bf16 out.
  using flashmoe_test::kDsContiguous;
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsContiguous>>(
      "no_mma/k128/store/contiguous");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, kDsContiguous>>(
      "wg1/k128/contiguous");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, true, kDsContiguous>>(
      "wg1/k128/bf16/contiguous");
  // Row 174 f: out's lines dropped from L2 after each down tile (no write-back to DRAM; timing
  // only), with h's stores and without.
  using flashmoe_test::kDsDiscardOut;
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsDiscardOut>>(
      "no_mma/k128/store/discard_out");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsDiscardOut | kDsSkipH>>(
      "no_mma/k128/store/no_h/discard_out");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, kDsDiscardOut>>(
      "wg1/k128/discard_out");
  // Two blocks an SM on 100 KB rings each: one block's epilogue beside the other's MMAs (the
  // ping-pong of CUTLASS's persistent GEMMs, here from occupancy), against the ceiling with the
  // same rings.
  register_stream_rows<DsVariant<1, 0, 2, false, false, false, 16, false, 0, 2>>(
      "no_mma/k128/2cta");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, 0, 2>>(
      "no_mma/k128/store/2cta");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, 0, 2>>("wg1/k128/2cta");
  register_stream_rows<DsVariant<1, 1, 2, true, true, false, 16, false, 0, 2>>(
      "wg1/in_flight1/k128/2cta");
  // Row 177: h's count released by a publisher warp instead of consumer thread 0 (whose release
  // waits for the block's stores to be acknowledged while every consumer waits at the next
  // barrier), and added relaxed (timing only: no wait at all).
  using flashmoe_test::kDsPublisher, flashmoe_test::kDsRelaxedPublish;
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, kDsPublisher>>(
      "wg1/k128/publisher");
  register_stream_rows<DsVariant<1, 0, 2, true, true, false, 16, false, kDsRelaxedPublish>>(
      "wg1/k128/relaxed_pub");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsPublisher>>(
      "no_mma/k128/store/publisher");
  register_stream_rows<DsVariant<1, 0, 2, false, true, false, 16, false, kDsRelaxedPublish>>(
      "no_mma/k128/store/relaxed_pub");
  register_stream_rows<DsVariant<2, 1, 2, true, true, false, 16, false, kDsPublisher>>(
      "wg2/in_flight1/k128/publisher");
  // The weight stream's copy paths alone (stream_paths.cuh; issue 21): the decode kernels'
  // 64-column boxes of 64 rows, 6 stages of 16 KB, two blocks an SM, with and without their
  // evict-first policy; smaller and deeper stages; one block an SM with 13 stages; cp.async;
  // rows' pieces of 256, 512 and 1024 bytes and contiguous stages as 1-D bulk copies (where the
  // pieces' DRAM locality is what the boxes' 128-byte rows lose); plain 16-byte loads.
  using flashmoe_bench::StreamPath;
  register_path_rows<StreamPath::Tma2d, 64, 128, 6>("tma2d/r64_k128_s6");
  register_path_rows<StreamPath::Tma2dEvictFirst, 64, 128, 6>("tma2d_evict_first/r64_k128_s6");
  register_path_rows<StreamPath::Tma2d, 32, 128, 12>("tma2d/r32_k128_s12");
  register_path_rows<StreamPath::Tma2d, 64, 128, 13>("tma2d/r64_k128_s13");
  register_path_rows<StreamPath::CpAsync, 64, 128, 6>("cp_async/r64_k128_s6");
  register_path_rows<StreamPath::Bulk1dRows, 64, 128, 6>("bulk1d_rows/r64_k128_s6");
  register_path_rows<StreamPath::Bulk1dRows, 32, 256, 6>("bulk1d_rows/r32_k256_s6");
  register_path_rows<StreamPath::Bulk1dRows, 16, 512, 6>("bulk1d_rows/r16_k512_s6");
  register_path_rows<StreamPath::Bulk1dLinear, 64, 128, 6>("bulk1d_linear/r64_k128_s6");
  register_path_rows<StreamPath::Bulk1dLinear, 64, 256, 3>("bulk1d_linear/r64_k256_s3");
  register_path_rows<StreamPath::Ldg, 64, 128, 1>("ldg/r64");
  register_path_rows<StreamPath::LdgBalanced, 64, 128, 1>("ldg_balanced");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
