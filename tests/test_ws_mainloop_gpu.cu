// The warp-specialised mainloop's parts on sm_90a, before the engine uses them (issue 20): the
// producer/consumer ring (device/pipeline.cuh), weight boxes, the wide warpgroup MMA
// (device/wgmma.cuh) and three ways of loading gathered token rows (ws_gather_gemm.cuh), in a
// persistent gathered GEMM checked against a CPU product; and issue 21's swap-AB decode stream
// (ws_decode_stream.cuh) against a CPU gate/up and down, its routing prelude
// (ws_decode_prelude.cuh) against a CPU top-k, and both as one layer (ws_decode_layer.cuh)
// against the float64 reference. Skipped off Hopper.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "flashmoe/reference.hpp"
#include "test_util.hpp"
#include "ws_decode_layer.cuh"
#include "ws_decode_prelude.cuh"
#include "ws_decode_stream.cuh"
#include "ws_gather_gemm.cuh"

namespace {

using flashmoe::detail::Control;
using flashmoe::detail::Watchdog;
using flashmoe_test::AGather;
using flashmoe_test::DeviceBuffer;
using flashmoe_test::kWsBM;

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

// Multicast: the cluster kernel (ws_multicast_gemm_kernel; A contiguous, an even grid).
// Work StoreBf16 / StoreTma: the product goes to a bf16 h (checked instead of C).
template <int BN, int Stages, AGather G, int InFlight = 0, bool Gated = false,
          bool Multicast = false,
          flashmoe_test::WsGemmWork Work = flashmoe_test::WsGemmWork::MmaStore>
void run_case(const Case& cs, std::mt19937_64& rng) {
  static_assert(!Multicast || G == AGather::Contiguous, "the cluster kernel reads sorted rows");
  constexpr bool kStoreH =
      Work == flashmoe_test::WsGemmWork::StoreBf16 || Work == flashmoe_test::WsGemmWork::StoreTma;
  SCOPED_TRACE(::testing::Message()
               << "A by " << static_cast<int>(G) << " multicast " << Multicast << " in flight "
               << InFlight << " gated " << Gated << " work " << static_cast<int>(Work) << " BN "
               << BN << " stages " << Stages << " x_rows " << cs.x_rows << " mtiles " << cs.mtiles
               << " n " << cs.n_total << " k " << cs.k << " grid " << cs.grid);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> x(static_cast<std::size_t>(cs.x_rows) * cs.k),
      w(static_cast<std::size_t>(cs.n_total) * (Gated ? 2 : 1) * cs.k);
  for (auto& v : x) v = __float2bfloat16(u(rng));
  for (auto& v : w) v = __float2bfloat16(u(rng));
  // Gathered rows: random, repeated, and some padding (-1, read as zeros).
  std::vector<int> rows(static_cast<std::size_t>(cs.mtiles) * kWsBM);
  std::uniform_int_distribution<int> pick(-1, cs.x_rows - 1);
  for (auto& r : rows) r = pick(rng);
  constexpr int kCols = Gated ? BN / 2 : BN;  // output columns per tile
  const int ntiles = (cs.n_total + kCols - 1) / kCols;
  const std::size_t cells = static_cast<std::size_t>(cs.mtiles) * kWsBM * cs.n_total;

  DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), drows(rows.size() * 4), dc(cells * 4),
      dh(cells * 2), words(64 * 4 * 16);
  ASSERT_EQ(cudaMemcpy(dx.get(), x.data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dw.get(), w.data(), w.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(drows.get(), rows.data(), rows.size() * 4, cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemset(dc.get(), 0xff, cells * 4), cudaSuccess);  // poison: NaN
  ASSERT_EQ(cudaMemset(dh.get(), 0xff, cells * 2), cudaSuccess);
  ASSERT_EQ(cudaMemset(words.get(), 0, words.bytes()), cudaSuccess);
  // Contiguous: the gathered rows copied in m-tile order first (the expert-sorted copy of x).
  std::vector<__nv_bfloat16> sorted;
  if (G == AGather::Contiguous) {
    sorted.assign(rows.size() * cs.k, __float2bfloat16(0.0f));
    for (std::size_t r = 0; r < rows.size(); ++r) {
      if (rows[r] >= 0) {
        std::memcpy(&sorted[r * cs.k], &x[static_cast<std::size_t>(rows[r]) * cs.k], cs.k * 2);
      }
    }
  }
  DeviceBuffer dsorted(sorted.size() * 2);
  if (!sorted.empty()) {
    ASSERT_EQ(cudaMemcpy(dsorted.get(), sorted.data(), sorted.size() * 2, cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  CUtensorMap x_map, w_map;
  if (G == AGather::Contiguous) {
    ASSERT_TRUE(flashmoe_test::encode_bf16_map(x_map, dsorted.get(), static_cast<int>(rows.size()),
                                               cs.k, kWsBM));
  } else {
    ASSERT_TRUE(flashmoe_test::encode_bf16_map(x_map, dx.get(), cs.x_rows, cs.k, 1));
  }
  // The cluster kernel's blocks request half of a stage's weight rows each.
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(w_map, dw.get(), cs.n_total * (Gated ? 2 : 1), cs.k,
                                             Multicast ? BN / 2 : kCols));
  const flashmoe_test::WsGemmArgs args{
      drows.get<int>(),
      dx.get<__nv_bfloat16>(),
      cs.x_rows,
      cs.mtiles,
      ntiles,
      cs.k,
      dc.get<float>(),
      cs.n_total,
      Watchdog{Control{words.get<std::uint32_t>(), nullptr}, 2'000'000'000ull},
      dh.get<__nv_bfloat16>(),
      1};
  // Only the bulk-store epilogue reads h through a map (its rows must be 16-byte multiples).
  CUtensorMap h_map{};
  if constexpr (Work == flashmoe_test::WsGemmWork::StoreTma) {
    ASSERT_TRUE(flashmoe_test::encode_bf16_map(h_map, dh.get(), cs.mtiles * kWsBM, cs.n_total, 64));
  }
  if constexpr (Multicast) {
    int clusters = 0;
    ASSERT_EQ((flashmoe_test::launch_ws_multicast_gemm<BN, Stages, InFlight, Gated>(
                  x_map, w_map, args, cs.grid, nullptr, clusters)),
              cudaSuccess);
    ASSERT_GE(clusters, 1);
  } else {
    ASSERT_EQ((flashmoe_test::launch_ws_gather_gemm<BN, Stages, G, InFlight, Gated, Work>(
                  x_map, w_map, args, cs.grid, nullptr, &h_map)),
              cudaSuccess);
  }
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
  if constexpr (kStoreH) {
    std::vector<__nv_bfloat16> h(cells);
    ASSERT_EQ(cudaMemcpy(h.data(), dh.get(), cells * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    for (std::size_t i = 0; i < cells; ++i) c[i] = __bfloat162float(h[i]);
  }
  int bad = 0;
  for (int r = 0; r < cs.mtiles * kWsBM && bad < 5; ++r) {
    for (int n = 0; n < cs.n_total && bad < 5; ++n) {
      // The product with W row n (and, gated, with its up row n_total + n), and the sum of the
      // absolute terms (the fp32 accumulation's error scale).
      auto dot = [&](int wrow, double& mag) {
        double sum = 0.0;
        mag = 0.0;
        if (rows[r] < 0) return 0.0;
        for (int q = 0; q < cs.k; ++q) {
          const double p =
              static_cast<double>(__bfloat162float(x[rows[r] * std::size_t(cs.k) + q])) *
              __bfloat162float(w[wrow * std::size_t(cs.k) + q]);
          sum += p;
          mag += std::fabs(p);
        }
        return sum;
      };
      double ref = 0.0, tol = 0.0, mag = 0.0;
      if constexpr (Gated) {
        double mag_up = 0.0;
        const double gate = dot(n, mag), up = dot(cs.n_total + n, mag_up);
        const double act = gate / (1.0 + std::exp(-gate));
        ref = act * up;
        tol = 1e-5 * (mag * (std::fabs(up) + 1.0) + mag_up * (std::fabs(act) + 1.0)) + 1e-6;
      } else {
        ref = dot(n, mag);
        tol = 1e-5 * mag + 1e-6;
      }
      if (kStoreH) tol += std::fabs(ref) / 256.0;  // one rounding to bf16
      const float got = c[static_cast<std::size_t>(r) * cs.n_total + n];
      if (!(std::fabs(got - ref) <= tol)) {
        ADD_FAILURE() << "C[" << r << ", " << n << "] = " << got << ", expected " << ref
                      << " (gathered row " << rows[r] << ")";
        ++bad;
      }
    }
  }
}

template <class Fn>
void for_each_gather(Fn&& fn) {
  fn(std::integral_constant<AGather, AGather::RowBoxes>{});
  fn(std::integral_constant<AGather, AGather::CpAsync>{});
  fn(std::integral_constant<AGather, AGather::CpAsyncWarp>{});
  fn(std::integral_constant<AGather, AGather::Contiguous>{});
}

TEST(WsMainloop, GatheredRowsTimesWeightBoxesMatchTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the warp-specialised mainloop is sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  // K over many laps of the ring, K and N tails, more tiles than blocks, one block.
  for_each_gather([&](auto g) {
    constexpr AGather G = decltype(g)::value;
    run_case<128, 6, G>({1000, 3, 512, 2048, 5}, rng);
    run_case<128, 6, G>({77, 2, 300, 200, 132}, rng);
    run_case<128, 6, G>({300, 5, 384, 1000, 1}, rng);
    run_case<256, 4, G>({1000, 3, 512, 2048, 4}, rng);
    run_case<256, 4, G>({129, 2, 200, 72, 3}, rng);
    // One MMA batch left running while the next stage is issued.
    run_case<128, 6, G, 1>({1000, 3, 512, 2048, 5}, rng);
    run_case<256, 4, G, 1>({129, 2, 200, 72, 3}, rng);
    // The gate/up tile: SiLU(gate) * up of the same columns, N tails inside the gate half.
    run_case<256, 4, G, 1, true>({1000, 3, 300, 2048, 5}, rng);
    run_case<128, 6, G, 0, true>({77, 2, 200, 136, 2}, rng);
  });
}

// The engine's gate/up epilogue into a bf16 h, stored from the registers or staged in shared
// memory and written by bulk tensor stores that overlap the next tile: more tiles than blocks
// (the staging buffer reused), N tails inside a box, one block.
TEST(WsMainloop, GateUpStoresIntoBf16MatchTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the warp-specialised mainloop is sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  using flashmoe_test::WsGemmWork;
  constexpr AGather kC = AGather::Contiguous;
  for (const Case& cs :
       {Case{1000, 3, 512, 2048, 4}, Case{129, 2, 200, 72, 3}, Case{300, 5, 384, 1000, 1}}) {
    run_case<256, 4, kC, 0, true, false, WsGemmWork::StoreBf16>(cs, rng);
    run_case<256, 4, kC, 0, true, false, WsGemmWork::StoreTma>(cs, rng);
  }
}

TEST(WsMainloop, ClusterPairsSharingWeightBoxesMatchTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the warp-specialised mainloop is sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  constexpr AGather kC = AGather::Contiguous;
  // Even and odd m-tile counts (the last pair's second block multiplies zeros), one cluster and
  // many, K and N tails, the gated tile.
  run_case<256, 4, kC, 0, false, true>({1000, 4, 512, 2048, 4}, rng);
  run_case<256, 4, kC, 0, false, true>({129, 3, 200, 72, 2}, rng);
  run_case<256, 4, kC, 0, false, true>({1000, 5, 384, 1000, 132}, rng);
  run_case<256, 4, kC, 0, true, true>({1000, 3, 300, 2048, 6}, rng);
  run_case<256, 4, kC, 0, true, true>({77, 2, 200, 136, 2}, rng);
}

struct StreamCase {
  int hidden, inter, experts, selected, grid;
};

// One decode stream: random tokens per selected expert (1 to the slot's rows, zeros past them),
// every cell of h and of the down product checked, both poisoned first.
template <class V = flashmoe_test::DsVariant<>>
void run_stream_case(const StreamCase& cs, std::mt19937_64& rng) {
  constexpr int kSlotRows = V::kTokens;  // token rows of a slot
  SCOPED_TRACE(::testing::Message()
               << "H " << cs.hidden << " I " << cs.inter << " E " << cs.experts << " selected "
               << cs.selected << " grid " << cs.grid << " threads " << V::kThreads << " stages "
               << V::kStages << " in flight " << V::kInFlight << " K columns " << V::kKCols
               << " paired " << V::kPair << " token rows " << kSlotRows << " bf16 out "
               << V::kOutBf16);
  const int H = cs.hidden, I = cs.inter, S = cs.selected, rows = S * kSlotRows;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> x(static_cast<std::size_t>(rows) * H, __float2bfloat16(0.0f)),
      w13(static_cast<std::size_t>(cs.experts) * 2 * I * H),
      w2(static_cast<std::size_t>(cs.experts) * H * I);
  for (auto& v : w13) v = __float2bfloat16(u(rng));
  for (auto& v : w2) v = __float2bfloat16(u(rng));
  std::vector<int> experts(S);
  for (int s = 0; s < S; ++s) {
    experts[s] = std::uniform_int_distribution<int>(0, cs.experts - 1)(rng);
    const int live = std::uniform_int_distribution<int>(1, kSlotRows)(rng);
    for (int t = 0; t < live; ++t) {
      for (int k = 0; k < H; ++k) {
        x[(static_cast<std::size_t>(s) * kSlotRows + t) * H + k] = __float2bfloat16(u(rng));
      }
    }
  }
  DeviceBuffer dx(x.size() * 2), dw13(w13.size() * 2), dw2(w2.size() * 2), dexperts(S * 4),
      dh(static_cast<std::size_t>(rows) * I * 2), dout(static_cast<std::size_t>(rows) * H * 4),
      words((1 + S) * 4), control(64 * 4 * 16);
  ASSERT_EQ(cudaMemcpy(dx.get(), x.data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dw13.get(), w13.data(), w13.size() * 2, cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dw2.get(), w2.data(), w2.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dexperts.get(), experts.data(), S * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dh.get(), 0xff, dh.bytes()), cudaSuccess);  // poison: NaN
  ASSERT_EQ(cudaMemset(dout.get(), 0xff, dout.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(words.get(), 0, words.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(control.get(), 0, control.bytes()), cudaSuccess);
  flashmoe_test::DecodeStreamMaps maps{};
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.x, dx.get(), rows, H, kSlotRows));
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.w13, dw13.get(), cs.experts * 2 * I, H,
                                             flashmoe_test::kDsGateCols));
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.w2, dw2.get(), cs.experts * H, I, 64));
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.h, dh.get(), rows, I, kSlotRows));
  const flashmoe_test::DecodeStreamArgs args{
      dexperts.get<int>(),
      S,
      H,
      I,
      dh.get<__nv_bfloat16>(),
      dout.get<float>(),
      words.get<std::uint32_t>(),
      Watchdog{Control{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull}};
  ASSERT_EQ(flashmoe_test::launch_ws_decode_stream<V>(maps, args, cs.grid, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::uint32_t error = 0;
  ASSERT_EQ(cudaMemcpy(&error,
                       control.get<std::uint32_t>() +
                           flashmoe::detail::kStickyError * flashmoe::detail::kControlStride,
                       4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(error, 0u) << "a wait timed out";
  std::vector<__nv_bfloat16> h(static_cast<std::size_t>(rows) * I);
  std::vector<float> out(static_cast<std::size_t>(rows) * H);
  ASSERT_EQ(cudaMemcpy(h.data(), dh.get(), h.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  if constexpr (V::kOutBf16) {
    std::vector<__nv_bfloat16> out16(out.size());
    ASSERT_EQ(cudaMemcpy(out16.data(), dout.get(), out16.size() * 2, cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = __bfloat162float(out16[i]);
  } else {
    ASSERT_EQ(cudaMemcpy(out.data(), dout.get(), out.size() * 4, cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  // bf16 out: its rounding (half a unit in the 8th bit) on top of the sum's own error.
  const double out_rel = V::kOutBf16 ? 1.0 / 256.0 : 0.0;
  int bad = 0;
  for (int r = 0; r < rows && bad < 5; ++r) {
    const std::size_t e = static_cast<std::size_t>(experts[r / kSlotRows]);
    for (int c = 0; c < I && bad < 5; ++c) {
      double gate = 0.0, up = 0.0;
      for (int k = 0; k < H; ++k) {
        const double xv = __bfloat162float(x[static_cast<std::size_t>(r) * H + k]);
        gate += xv * __bfloat162float(w13[(e * 2 * I + c) * H + k]);
        up += xv * __bfloat162float(w13[(e * 2 * I + I + c) * H + k]);
      }
      const double ref = gate / (1.0 + std::exp(-gate)) * up;
      const float got = __bfloat162float(h[static_cast<std::size_t>(r) * I + c]);
      if (!(std::fabs(got - ref) <= 0.01 * std::fabs(ref) + 0.05)) {
        ADD_FAILURE() << "h[" << r << ", " << c << "] = " << got << ", expected " << ref;
        ++bad;
      }
    }
    // The down product from the h the kernel wrote (its rounding is checked above).
    for (int n = 0; n < H && bad < 5; ++n) {
      double ref = 0.0, mag = 0.0;
      for (int k = 0; k < I; ++k) {
        const double p =
            static_cast<double>(__bfloat162float(h[static_cast<std::size_t>(r) * I + k])) *
            __bfloat162float(w2[(e * H + n) * I + k]);
        ref += p;
        mag += std::fabs(p);
      }
      const float got = out[static_cast<std::size_t>(r) * H + n];
      if (!(std::fabs(got - ref) <= out_rel * std::fabs(ref) + 1e-5 * mag + 1e-6)) {
        ADD_FAILURE() << "out[" << r << ", " << n << "] = " << got << ", expected " << ref;
        ++bad;
      }
    }
  }
}

TEST(WsDecodeStream, SwapAbGateUpAndDownMatchTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the decode stream prototype is sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  // A Qwen3-like selection on a full grid; one block (every down tile waits behind its own
  // gate/up tiles); H and I tails (I not a multiple of 32 or 64, H not of 64); a down K longer
  // than the ring (its weights fill the whole ring before h is ready); an expert chosen twice.
  run_stream_case({2048, 768, 16, 8, 132}, rng);
  run_stream_case({256, 192, 5, 3, 1}, rng);
  run_stream_case({200, 200, 4, 4, 3}, rng);
  run_stream_case({136, 1600, 3, 2, 2}, rng);
  run_stream_case({512, 256, 1, 3, 7}, rng);
  // The consumer variants bench_ws_mainloop measures: one MMA batch in flight, stages of 128 K
  // columns (K tails inside a stage), two warpgroups on alternate stages (odd step counts),
  // stages of 256 K columns (K shorter than one stage: 200 and 96), paired tiles (128 weight rows
  // a tile; partial tiles at I = 200 and 96, H = 200, 136 and 320), slots of 48 and 32 rows,
  // out in bf16 (plain and paired tiles), two blocks an SM on half rings, h published by a warp
  // of its own (one and two consumer warpgroups).
  using flashmoe_test::DsVariant;
  for (const StreamCase& cs : {StreamCase{2048, 768, 16, 8, 132}, StreamCase{200, 200, 4, 4, 3},
                               StreamCase{136, 1600, 3, 2, 2}, StreamCase{320, 96, 2, 2, 1}}) {
    run_stream_case<DsVariant<1, 1, 1>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2>>(cs, rng);
    run_stream_case<DsVariant<2, 0, 1>>(cs, rng);
    run_stream_case<DsVariant<2, 1, 2>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 4>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 1, true, true, true>>(cs, rng);
    run_stream_case<DsVariant<1, 1, 2, true, true, true>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, true, 48>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, true, 32>>(cs, rng);
    run_stream_case<DsVariant<2, 1, 2, true, true, false, 32>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, false, 16, true>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, true, 16, true>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, false, 16, false, 0, 2>>(cs, rng);
    run_stream_case<DsVariant<1, 0, 2, true, true, false, 16, false, flashmoe_test::kDsPublisher>>(
        cs, rng);
    run_stream_case<DsVariant<2, 1, 2, true, true, false, 16, false, flashmoe_test::kDsPublisher>>(
        cs, rng);
  }
}

struct PreludeCase {
  int hidden, experts, top_k, tokens, grid;
};

// Every block's routing against the CPU's: softmax over fp32 logits of bf16 rows, the top_k
// largest (lowest id first among equals), weights renormalised. A pick may differ from the
// CPU's only where the two candidates' probabilities are within rounding of each other.
void run_prelude_case(const PreludeCase& cs, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message() << "H " << cs.hidden << " E " << cs.experts << " K " << cs.top_k
                                    << " T " << cs.tokens << " grid " << cs.grid);
  const int H = cs.hidden, E = cs.experts, K = cs.top_k, T = cs.tokens;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> x(static_cast<std::size_t>(T) * H),
      router(static_cast<std::size_t>(E) * H);
  for (auto& v : x) v = __float2bfloat16(u(rng));
  for (auto& v : router) v = __float2bfloat16(u(rng) * 0.1f);
  const std::size_t outs = static_cast<std::size_t>(cs.grid) * T * K;
  DeviceBuffer dx(x.size() * 2), drouter(router.size() * 2), dlogits(std::size_t(T) * E * 4),
      dpub(4), dids(outs * 4), dw(outs * 4), control(64 * 4 * 16);
  ASSERT_EQ(cudaMemcpy(dx.get(), x.data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(drouter.get(), router.data(), router.size() * 2, cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemset(dpub.get(), 0, 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(control.get(), 0, control.bytes()), cudaSuccess);
  ASSERT_EQ(cudaMemset(dids.get(), 0xff, dids.bytes()), cudaSuccess);  // poison: -1, NaN
  ASSERT_EQ(cudaMemset(dw.get(), 0xff, dw.bytes()), cudaSuccess);
  const flashmoe_test::DecodePreludeArgs args{
      dx.get<__nv_bfloat16>(),
      drouter.get<__nv_bfloat16>(),
      T,
      H,
      E,
      K,
      dlogits.get<float>(),
      dpub.get<std::uint32_t>(),
      dids.get<int>(),
      dw.get<float>(),
      Watchdog{Control{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull}};
  flashmoe_test::ws_decode_prelude_kernel<<<cs.grid, flashmoe_test::kDpThreads>>>(args);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<int> ids(outs);
  std::vector<float> w(outs);
  std::uint32_t error = 0;
  ASSERT_EQ(cudaMemcpy(&error,
                       control.get<std::uint32_t>() +
                           flashmoe::detail::kStickyError * flashmoe::detail::kControlStride,
                       4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(error, 0u) << "the wait for the other blocks timed out";
  ASSERT_EQ(cudaMemcpy(ids.data(), dids.get(), outs * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(w.data(), dw.get(), outs * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int t = 0; t < T; ++t) {
    std::vector<double> p(E);
    double mx = -1e300, sum = 0.0;
    for (int e = 0; e < E; ++e) {
      double l = 0.0;
      for (int k = 0; k < H; ++k) {
        l += static_cast<double>(__bfloat162float(x[std::size_t(t) * H + k])) *
             __bfloat162float(router[std::size_t(e) * H + k]);
      }
      p[e] = l;
      mx = std::max(mx, l);
    }
    for (double& v : p) sum += (v = std::exp(v - mx));
    for (double& v : p) v /= sum;
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double wsum = 0.0;
    for (int k = 0; k < K; ++k) wsum += p[order[k]];
    for (int b = 0; b < cs.grid; ++b) {
      for (int k = 0; k < K; ++k) {
        const std::size_t o = (std::size_t(b) * T + t) * K + k;
        ASSERT_GE(ids[o], 0) << "block " << b << " token " << t << " pick " << k;
        ASSERT_LT(ids[o], E);
        EXPECT_EQ(ids[o], ids[std::size_t(t) * K + k])
            << "block " << b << " disagrees with block 0";
        const int want = order[k];
        if (ids[o] != want) {
          EXPECT_LE(std::fabs(p[ids[o]] - p[want]), 1e-3 * p[want])
              << "token " << t << " pick " << k << ": " << ids[o] << " instead of " << want;
        }
        EXPECT_NEAR(w[o], p[want] / wsum, 1e-3 * p[want] / wsum + 1e-6)
            << "token " << t << " pick " << k;
      }
    }
  }
}

TEST(WsDecodePrelude, EveryBlockRoutesLikeTheCpu) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the decode prototypes are sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  // Qwen3's router at T = 1 and 16 on a full grid; more experts than blocks; 256 experts and
  // K = 16; one block.
  run_prelude_case({2048, 128, 8, 1, 132}, rng);
  run_prelude_case({2048, 128, 8, 16, 132}, rng);
  run_prelude_case({512, 64, 6, 5, 7}, rng);
  run_prelude_case({256, 256, 16, 3, 50}, rng);
  run_prelude_case({64, 8, 2, 2, 1}, rng);
}

struct LayerCase {
  int hidden, inter, experts, top_k, tokens, grid;
};

// The decode layer prototype against flashmoe::reference::forward (softmax, renormalised,
// SiLU-gated, bf16): every token's relative L2 error within the bf16 tolerance, y poisoned first.
template <class V = flashmoe_test::DsVariant<>>
void run_layer_case(const LayerCase& cs, std::mt19937_64& rng) {
  using flashmoe_test::kDsTokens;
  SCOPED_TRACE(::testing::Message()
               << "H " << cs.hidden << " I " << cs.inter << " E " << cs.experts << " K " << cs.top_k
               << " T " << cs.tokens << " grid " << cs.grid << " threads " << V::kThreads);
  const int H = cs.hidden, I = cs.inter, E = cs.experts, K = cs.top_k, T = cs.tokens;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto fill = [&](std::vector<__nv_bfloat16>& v, std::size_t n, float scale) {
    v.resize(n);
    for (auto& e : v) e = __float2bfloat16(u(rng) * scale);
  };
  std::vector<__nv_bfloat16> x, router, w13, w2;
  fill(x, std::size_t(T) * H, 1.0f);
  fill(router, std::size_t(E) * H, 0.1f);
  fill(w13, std::size_t(E) * 2 * I * H, 0.05f);
  fill(w2, std::size_t(E) * H * I, 0.05f);
  const int max_slots = std::min(E, T * K), slices = (H + 63) / 64;
  DeviceBuffer dx(x.size() * 2), drouter(router.size() * 2), dw13(w13.size() * 2),
      dw2(w2.size() * 2), dlogits(std::size_t(T) * E * 4), dpub(4),
      dh(std::size_t(max_slots) * kDsTokens * I * 2),
      dout(std::size_t(max_slots) * kDsTokens * H * 4), dy(std::size_t(T) * H * 2),
      words((1 + flashmoe_test::kDpMaxExperts) * 4), dslices(slices * 4), control(64 * 4 * 16);
  for (auto [dst, src] : {std::pair{&dx, &x}, std::pair{&drouter, &router}, std::pair{&dw13, &w13},
                          std::pair{&dw2, &w2}}) {
    ASSERT_EQ(cudaMemcpy(dst->get(), src->data(), src->size() * 2, cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  for (DeviceBuffer* b : {&dpub, &words, &dslices, &control}) {
    ASSERT_EQ(cudaMemset(b->get(), 0, b->bytes()), cudaSuccess);
  }
  // Poison (NaN): y, and the parts, so that a combine reading a part nobody wrote shows.
  for (DeviceBuffer* b : {&dy, &dout, &dh}) {
    ASSERT_EQ(cudaMemset(b->get(), 0xff, b->bytes()), cudaSuccess);
  }
  flashmoe_test::DecodeStreamMaps maps{};
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.x, dx.get(), T, H, kDsTokens));
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.w13, dw13.get(), E * 2 * I, H,
                                             flashmoe_test::kDsGateCols));
  ASSERT_TRUE(flashmoe_test::encode_bf16_map(maps.w2, dw2.get(), E * H, I, 64));
  ASSERT_TRUE(
      flashmoe_test::encode_bf16_map(maps.h, dh.get(), max_slots * kDsTokens, I, kDsTokens));
  const Watchdog wd{Control{control.get<std::uint32_t>(), nullptr}, 2'000'000'000ull};
  const flashmoe_test::DecodeLayerArgs args{
      {dx.get<__nv_bfloat16>(), drouter.get<__nv_bfloat16>(), T, H, E, K, dlogits.get<float>(),
       dpub.get<std::uint32_t>(), nullptr, nullptr, wd},
      {nullptr, 0, H, I, dh.get<__nv_bfloat16>(), dout.get<float>(), words.get<std::uint32_t>(),
       wd},
      dy.get<__nv_bfloat16>(),
      dslices.get<std::uint32_t>()};
  ASSERT_EQ(flashmoe_test::launch_ws_decode_layer<V>(maps, args, cs.grid, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::uint32_t error = 0;
  ASSERT_EQ(cudaMemcpy(&error,
                       control.get<std::uint32_t>() +
                           flashmoe::detail::kStickyError * flashmoe::detail::kControlStride,
                       4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(error, 0u) << "a wait timed out";
  std::vector<__nv_bfloat16> y(std::size_t(T) * H);
  ASSERT_EQ(cudaMemcpy(y.data(), dy.get(), y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);

  flashmoe::Config c;
  c.hidden = H;
  c.intermediate = I;
  c.experts = E;
  c.top_k = K;
  c.max_tokens = T;
  c.dtype = flashmoe::DType::BF16;
  flashmoe::Weights w;
  w.router = router.data();
  w.w13 = w13.data();
  w.w2 = w2.data();
  std::vector<std::uint16_t> y_ref(std::size_t(T) * H);
  std::vector<double> y64(std::size_t(T) * H);
  ASSERT_TRUE(flashmoe::reference::forward(c, w, x.data(), y_ref.data(), T, {}, y64.data()).ok());
  for (int t = 0; t < T; ++t) {
    double err = 0.0, norm = 0.0;
    for (int n = 0; n < H; ++n) {
      const double ref = y64[std::size_t(t) * H + n];
      const double d = __bfloat162float(y[std::size_t(t) * H + n]) - ref;
      err += d * d;
      norm += ref * ref;
    }
    const double rel = std::sqrt(err) / std::max(std::sqrt(norm), 1e-6);
    EXPECT_LE(rel, flashmoe_test::tolerance(flashmoe::DType::BF16)) << "token " << t;
  }
}

TEST(WsDecodeLayer, OneLaunchMatchesTheReference) {
  FLASHMOE_NEED_GPU();
  if (!is_hopper()) GTEST_SKIP() << "the decode prototypes are sm_90a only";
  const std::uint64_t seed = flashmoe_test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  using flashmoe_test::DsVariant;
  // Qwen3-30B-A3B's shape at T = 1 and 16 on a full grid; tails of H and I; one block; experts
  // shared by several tokens (E = 4); the consumer variants.
  run_layer_case({2048, 768, 128, 8, 1, 132}, rng);
  run_layer_case({2048, 768, 128, 8, 16, 132}, rng);
  run_layer_case({200, 200, 16, 4, 5, 9}, rng);
  run_layer_case({256, 192, 8, 2, 3, 1}, rng);
  run_layer_case({512, 256, 4, 2, 16, 20}, rng);
  run_layer_case<DsVariant<2, 1, 2>>({2048, 768, 128, 8, 4, 132}, rng);
  run_layer_case<DsVariant<1, 1, 2>>({200, 200, 16, 4, 5, 9}, rng);
}

}  // namespace
