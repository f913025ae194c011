// The warp-specialised mainloop's parts on sm_90a, before the engine uses them (issue 20): the
// producer/consumer ring (device/pipeline.cuh), token rows gathered one copy-engine box per row
// into the 128-byte swizzle, weight boxes, and the wide warpgroup MMA (device/wgmma.cuh), in a
// persistent gathered GEMM checked against a CPU product. Skipped off Hopper.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "device/pipeline.cuh"
#include "device/wgmma.cuh"
#include "test_util.hpp"

namespace {

using flashmoe::detail::Control;
using flashmoe::detail::Pipeline;
using flashmoe::detail::PipeState;
using flashmoe::detail::Watchdog;
using flashmoe_test::DeviceBuffer;

constexpr int kBM = 128, kBK = 64, kThreadsWs = 384;
constexpr std::uint32_t kRowBytes = kBK * 2;

template <int BN, int Stages>
struct GatherGemmSmem {
  static constexpr std::uint32_t kA = kBM * kRowBytes, kB = BN * kRowBytes, kStage = kA + kB;
  static constexpr std::uint32_t kBytes = Stages * kStage + 1024;  // + alignment slack
};

// C[tile rows, n0 : n0 + BN] = X[rows[...]] W[n0 : n0 + BN]^T for each (m-tile, n-tile), tiles
// dealt round-robin to a persistent grid. Warpgroups 0 and 1 multiply 64 rows each; warp 8
// (warpgroup 2) produces: one weight box per stage, one box per gathered row (a row index < 0
// reads zeros). The engine's layout: routing keeps running on threads 0-255.
template <int BN, int Stages>
__global__ void __launch_bounds__(kThreadsWs, 1)
    gather_gemm_kernel(const __grid_constant__ CUtensorMap x_map,
                       const __grid_constant__ CUtensorMap w_map, const int* rows, int x_rows,
                       int mtiles, int ntiles, int k, float* c, int n_total, Watchdog wd) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace flashmoe::detail;
  using Smem = GatherGemmSmem<BN, Stages>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  __shared__ Pipeline<Stages> pipe;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wg = warp / 4;
  if (threadIdx.x == 0) pipe.init(0, 8);
  __syncthreads();
  const int tiles = mtiles * ntiles, ktiles = (k + kBK - 1) / kBK;

  if (wg == 2) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp != 8) return;
    PipeState<Stages> st;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int mt = tile / ntiles, nt = tile % ntiles;
      int row[kBM / 32];
#pragma unroll
      for (int i = 0; i < kBM / 32; ++i) {
        const int r = rows[mt * kBM + i * 32 + lane];
        row[i] = r < 0 ? x_rows : r;  // past the tensor: the copy engine fills zeros
      }
      for (int kt = 0; kt < ktiles; ++kt) {
        if (!pipe.producer_acquire(st, wd, kSiteWeightCopy)) return;
        const std::uint32_t a = base + st.index * Smem::kStage, bar = pipe.full_barrier(st);
        if (lane == 0) {
          pipe.producer_expect(st, Smem::kStage);
          tma_load_2d(a + Smem::kA, &w_map, bar, kt * kBK, nt * BN);
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < kBM / 32; ++i) {
          tma_load_2d(a + (i * 32 + lane) * kRowBytes, &x_map, bar, kt * kBK, row[i]);
        }
        st.advance();
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int half = wg;  // rows [64 half, 64 half + 64) of each m-tile
  PipeState<Stages> st;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int mt = tile / ntiles, nt = tile % ntiles;
    float acc[BN / 2];
#pragma unroll
    for (int j = 0; j < BN / 2; ++j) acc[j] = 0.0f;
    for (int kt = 0; kt < ktiles; ++kt) {
      if (!pipe.consumer_wait(st, wd, kSiteWeightCopy)) return;
      const std::uint32_t a = base + st.index * Smem::kStage + half * 64 * kRowBytes;
      const std::uint32_t b = base + st.index * Smem::kStage + Smem::kA;
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        WgmmaM64K16<BN, __nv_bfloat16>::run(acc, smem_desc_sw128(a + ks * 32),
                                            smem_desc_sw128(b + ks * 32), true);
      }
      wgmma_commit();
      wgmma_wait<0>();
      if (lane == 0) pipe.consumer_release(st);
      st.advance();
    }
#pragma unroll
    for (int j = 0; j < BN / 2; ++j) {
      const int r = mt * kBM + half * 64 + wgmma_acc_row(j), col = nt * BN + wgmma_acc_col(j);
      if (col < n_total) c[static_cast<std::int64_t>(r) * n_total + col] = acc[j];
    }
  }
#else
  (void)x_map, (void)w_map, (void)rows, (void)x_rows, (void)mtiles, (void)ntiles, (void)k, (void)c,
      (void)n_total, (void)wd;
#endif
}

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// A row-major bf16 [rows, cols] matrix in boxes of 64 columns by box_rows rows, 128-byte
// swizzled, zeros outside.
bool encode_map(CUtensorMap& map, const void* base, int rows, int cols, int box_rows) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                       &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    return false;
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {kBK, static_cast<cuuint32_t>(box_rows)}, elem[2] = {1, 1};
  return reinterpret_cast<EncodeTiledFn>(f)(
             &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
             elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool is_hopper() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9;
}

struct Case {
  int x_rows, mtiles, n_total, k, grid;
};

template <int BN, int Stages>
void run_case(const Case& cs, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message()
               << "BN " << BN << " stages " << Stages << " x_rows " << cs.x_rows << " mtiles "
               << cs.mtiles << " n " << cs.n_total << " k " << cs.k << " grid " << cs.grid);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> x(static_cast<std::size_t>(cs.x_rows) * cs.k),
      w(static_cast<std::size_t>(cs.n_total) * cs.k);
  for (auto& v : x) v = __float2bfloat16(u(rng));
  for (auto& v : w) v = __float2bfloat16(u(rng));
  // Gathered rows: random, repeated, and some padding (-1, read as zeros).
  std::vector<int> rows(static_cast<std::size_t>(cs.mtiles) * kBM);
  std::uniform_int_distribution<int> pick(-1, cs.x_rows - 1);
  for (auto& r : rows) r = pick(rng);
  const int ntiles = (cs.n_total + BN - 1) / BN;
  const std::size_t cells = static_cast<std::size_t>(cs.mtiles) * kBM * cs.n_total;

  DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), drows(rows.size() * 4), dc(cells * 4),
      words(64 * 4 * 16);
  ASSERT_EQ(cudaMemcpy(dx.get(), x.data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dw.get(), w.data(), w.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(drows.get(), rows.data(), rows.size() * 4, cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemset(dc.get(), 0xff, cells * 4), cudaSuccess);  // poison: NaN
  ASSERT_EQ(cudaMemset(words.get(), 0, words.bytes()), cudaSuccess);
  CUtensorMap x_map, w_map;
  ASSERT_TRUE(encode_map(x_map, dx.get(), cs.x_rows, cs.k, 1));
  ASSERT_TRUE(encode_map(w_map, dw.get(), cs.n_total, cs.k, BN));

  using Smem = GatherGemmSmem<BN, Stages>;
  auto kernel = gather_gemm_kernel<BN, Stages>;
  ASSERT_EQ(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Smem::kBytes)),
            cudaSuccess);
  const Watchdog wd{Control{words.get<std::uint32_t>(), nullptr}, 2'000'000'000ull};
  kernel<<<cs.grid, kThreadsWs, Smem::kBytes>>>(x_map, w_map, drows.get<int>(), cs.x_rows,
                                                cs.mtiles, ntiles, cs.k, dc.get<float>(),
                                                cs.n_total, wd);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::uint32_t error = 0;
  ASSERT_EQ(cudaMemcpy(&error,
                       words.get<std::uint32_t>() +
                           flashmoe::detail::kStickyError * flashmoe::detail::kControlStride,
                       4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(error, 0u) << "a pipeline wait timed out";

  std::vector<float> c(cells);
  ASSERT_EQ(cudaMemcpy(c.data(), dc.get(), cells * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  int bad = 0;
  for (int r = 0; r < cs.mtiles * kBM && bad < 5; ++r) {
    for (int n = 0; n < cs.n_total && bad < 5; ++n) {
      double ref = 0.0, mag = 0.0;
      if (rows[r] >= 0) {
        for (int q = 0; q < cs.k; ++q) {
          const double p =
              static_cast<double>(__bfloat162float(x[rows[r] * std::size_t(cs.k) + q])) *
              __bfloat162float(w[n * std::size_t(cs.k) + q]);
          ref += p;
          mag += std::fabs(p);
        }
      }
      const float got = c[static_cast<std::size_t>(r) * cs.n_total + n];
      if (!(std::fabs(got - ref) <= 1e-5 * mag + 1e-6)) {
        ADD_FAILURE() << "C[" << r << ", " << n << "] = " << got << ", expected " << ref
                      << " (gathered row " << rows[r] << ")";
        ++bad;
      }
    }
  }
}

TEST(WsMainloop, GatheredRowsTimesWeightBoxesMatchTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the warp-specialised mainloop is sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  // K over many laps of the ring, K and N tails, more tiles than blocks, one block.
  run_case<128, 6>({1000, 3, 512, 2048, 5}, rng);
  run_case<128, 6>({77, 2, 300, 200, 132}, rng);
  run_case<128, 6>({300, 5, 384, 1000, 1}, rng);
  run_case<256, 4>({1000, 3, 512, 2048, 4}, rng);
  run_case<256, 4>({129, 2, 200, 72, 3}, rng);
}

}  // namespace
