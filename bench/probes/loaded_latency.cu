// Probe: what a routing chain's steps cost while other SMs stream weights at the DRAM rate.
// Rows 175 and 183 found routing five- to six-fold slower beside a stream but did not split
// why: every L2 round trip queued behind the stream, or routing sharing its SMs with streaming
// blocks. Here two chain blocks (one cluster of two, alone on their SMs) time dependent chains:
// pointer chases over cold and hot lines, device-scope atomics, and a flag ping-pong between the
// two blocks through global memory and through distributed shared memory, each with release /
// acquire and with relaxed stores and loads (the library's own helpers where it has them). Each
// runs with no stream, with every other SM streaming, and with the chain blocks' own spare warps
// streaming too. Not part of the library; build and run with loaded_latency.sh.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_check.hpp"

#include "device/cluster.cuh"
#include "device/sync.cuh"

namespace {

using flashmoe::detail::cluster_ctarank;
using flashmoe::detail::cluster_sync;
using flashmoe::detail::global_timer_ns;
using flashmoe::detail::load_acquire;
using flashmoe::detail::load_relaxed;
using flashmoe::detail::store_release;
using flashmoe::detail::store_relaxed;

constexpr int kThreads = 512;
constexpr int kSteps = 2000;  // dependent steps a chain
constexpr int kChains = 7;

enum Stream : int { kNone = 0, kOtherSms = 1, kOtherSmsAndOwn = 2 };

struct Args {
  const uint4* stream_buf;
  std::size_t stream_quads;  // a power of two
  const std::uint32_t* chase;  // a random cycle, L2-resident working set
  const std::uint32_t* hot;    // a cycle over 64 lines, touched every few microseconds
  std::uint32_t* atom_word;
  std::uint32_t* ping;  // [2] flags, 128 bytes apart
  unsigned* stop;
  unsigned long long* stream_bytes;
  unsigned long long* chain_ns;  // [kChains]
  unsigned long long* stream_ns;
  int mode;
  std::uint32_t zero;  // 0, unknown to the compiler
  int evict_first;
};

__device__ __forceinline__ std::uint32_t ld_relaxed_cluster_local(std::uint32_t addr) {
  std::uint32_t v;
  asm volatile("ld.relaxed.cluster.shared::cta.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed_cluster_remote(std::uint32_t addr, std::uint32_t rank,
                                                          std::uint32_t v) {
  asm volatile(
      "{\n .reg .b32 r;\n mapa.shared::cluster.u32 r, %0, %1;\n"
      " st.relaxed.cluster.shared::cluster.u32 [r], %2;\n}" ::"r"(addr),
      "r"(rank), "r"(v)
      : "memory");
}
__device__ __forceinline__ std::uint32_t ld_acquire_cluster_local(std::uint32_t addr) {
  std::uint32_t v;
  asm volatile("ld.acquire.cluster.shared::cta.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_cluster_remote(std::uint32_t addr, std::uint32_t rank,
                                                          std::uint32_t v) {
  asm volatile(
      "{\n .reg .b32 r;\n mapa.shared::cluster.u32 r, %0, %1;\n"
      " st.release.cluster.shared::cluster.u32 [r], %2;\n}" ::"r"(addr),
      "r"(rank), "r"(v)
      : "memory");
}

// Streams the buffer (16-byte loads, 8 in flight a thread) until *stop; counts the bytes.
__device__ void stream_until_stop(const Args& a, int first_thread, int threads, int slot,
                                  int slots) {
  const int t = threadIdx.x - first_thread;
  std::uint64_t policy = 0;
  if (a.evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0;" : "=l"(policy));
  unsigned acc = 0;
  unsigned long long bytes = 0;
  const std::size_t stride = static_cast<std::size_t>(slots) * threads;
  std::size_t q = static_cast<std::size_t>(slot) * threads + t;
  const volatile unsigned* stop = a.stop;
  for (int round = 0;; ++round) {
    if ((round & 15) == 0 && *stop) break;
    uint4 v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      std::size_t qi = (q + i * stride) & (a.stream_quads - 1);
      if (a.evict_first) {
        asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                     : "=r"(v[i].x), "=r"(v[i].y), "=r"(v[i].z), "=r"(v[i].w)
                     : "l"(a.stream_buf + qi), "l"(policy));
      } else {
        v[i] = __ldg(a.stream_buf + qi);
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
    bytes += 8 * sizeof(uint4);
    q = (q + 8 * stride) & (a.stream_quads - 1);
  }
  if (acc == 0x12345678u) a.stream_bytes[1] = acc;  // keeps the loads
  atomicAdd(a.stream_bytes, bytes);
}

__global__ void __launch_bounds__(kThreads, 1)
    probe_kernel(Args a) {
  __shared__ std::uint32_t dsmem_flag;
  const bool chain_block = blockIdx.x < 2;
  const std::uint32_t rank = cluster_ctarank();
  if (!chain_block) {
    if (a.mode != kNone) {
      const std::uint64_t t0 = global_timer_ns();
      stream_until_stop(a, 0, kThreads, static_cast<int>(blockIdx.x - 2),
                        static_cast<int>(gridDim.x - 2));
      if (threadIdx.x == 0 && blockIdx.x == 2) *a.stream_ns = global_timer_ns() - t0;
    }
    return;
  }
  if (threadIdx.x == 0) dsmem_flag = 0;
  cluster_sync();
  // Warps 1.. of the chain blocks stream in mode 2 (the SM shared, as in rows 175 and 183).
  if (threadIdx.x >= 32) {
    if (a.mode == kOtherSmsAndOwn) {
      stream_until_stop(a, 32, kThreads - 32, static_cast<int>(rank),
                        static_cast<int>(gridDim.x));
    }
  } else if (threadIdx.x == 0) {
    // Let the stream reach its rate first.
    const std::uint64_t start = global_timer_ns();
    while (global_timer_ns() - start < 20000) {
    }
    std::uint32_t x = 0;
    std::uint64_t t;
    // 1. L2 pointer chase (ld.cg: no L1), block 0 only; block 1 waits at the ping.
    if (rank == 0) {
      t = global_timer_ns();
      for (int i = 0; i < kSteps; ++i) x = __ldcg(a.chase + x);
      a.chain_ns[0] = global_timer_ns() - t;
      // 2. dependent device-scope atomics.
      t = global_timer_ns();
      std::uint32_t r = 0;
      for (int i = 0; i < kSteps; ++i) r = atomicAdd(a.atom_word + (r & a.zero), 1u);
      a.chain_ns[1] = global_timer_ns() - t + (r & a.zero) + (x & a.zero);
      // 5. a chase over 64 hot lines (each touched every 64 steps: stays in L2).
      std::uint32_t y = 0;
      t = global_timer_ns();
      for (int i = 0; i < kSteps; ++i) y = __ldcg(a.hot + y);
      a.chain_ns[4] = global_timer_ns() - t + (y & a.zero);
    }
    // 3. ping-pong through global flags: block 0 sets ping[0] = i, block 1 answers ping[32] = i.
    std::uint32_t* mine = a.ping + 32 * rank;
    std::uint32_t* other = a.ping + 32 * (1 - rank);
    t = global_timer_ns();
    for (std::uint32_t i = 1; i <= kSteps; ++i) {
      if (rank == 0) {
        store_release(mine, i);
        while (load_acquire(other) != i) {
        }
      } else {
        while (load_acquire(other) != i) {
        }
        store_release(mine, i);
      }
    }
    if (rank == 0) a.chain_ns[2] = global_timer_ns() - t;
    // 4. the same through distributed shared memory: each writes the other's flag.
    const std::uint32_t local = static_cast<std::uint32_t>(__cvta_generic_to_shared(&dsmem_flag));
    t = global_timer_ns();
    for (std::uint32_t i = 1; i <= kSteps; ++i) {
      if (rank == 0) {
        st_release_cluster_remote(local, 1, i);
        while (ld_acquire_cluster_local(local) != i) {
        }
      } else {
        while (ld_acquire_cluster_local(local) != i) {
        }
        st_release_cluster_remote(local, 0, i);
      }
    }
    if (rank == 0) a.chain_ns[3] = global_timer_ns() - t;
    // 6. and 7. the two ping-pongs with relaxed stores and loads (no fences: a flag that carries
    // its data, as NCCL's LL protocol). Fresh values: past kSteps.
    t = global_timer_ns();
    for (std::uint32_t i = kSteps + 1; i <= 2 * kSteps; ++i) {
      if (rank == 0) {
        store_relaxed(mine, i);
        while (load_relaxed(other) != i) {
        }
      } else {
        while (load_relaxed(other) != i) {
        }
        store_relaxed(mine, i);
      }
    }
    if (rank == 0) a.chain_ns[5] = global_timer_ns() - t;
    t = global_timer_ns();
    for (std::uint32_t i = kSteps + 1; i <= 2 * kSteps; ++i) {
      if (rank == 0) {
        st_relaxed_cluster_remote(local, 1, i);
        while (ld_relaxed_cluster_local(local) != i) {
        }
      } else {
        while (ld_relaxed_cluster_local(local) != i) {
        }
        st_relaxed_cluster_remote(local, 0, i);
      }
    }
    if (rank == 0) {
      a.chain_ns[6] = global_timer_ns() - t;
      // Let the stream run on a little so that the last steps were all under it.
      const std::uint64_t end = global_timer_ns();
      while (global_timer_ns() - end < 5000) {
      }
      atomicExch(a.stop, 1u);
    }
  }
  // No block leaves while the other may still write its flag (warp 0 diverged: not .aligned).
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// Prints the table; returns a failed CUDA call's message, or nothing.
std::string run_probe() {
  int sms = 0;
  BENCH_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop{};
  BENCH_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, 0));
  // One block an SM (the dynamic shared memory makes sure), every cluster resident.
  const int smem = 120 * 1024;
  BENCH_RETURN_IF_CUDA_ERROR(
      cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  int clusters = 0;
  cfg.gridDim = dim3(sms);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 2;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  BENCH_RETURN_IF_CUDA_ERROR(cudaOccupancyMaxActiveClusters(&clusters, probe_kernel, &cfg));
  cfg.gridDim = dim3(2 * clusters);
  std::printf("%s, %d SMs, grid %d (clusters of 2, one block an SM)\n", prop.name, sms,
              2 * clusters);

  const std::size_t stream_bytes = std::size_t{4} << 30;
  uint4* buf = nullptr;
  BENCH_RETURN_IF_CUDA_ERROR(cudaMalloc(&buf, stream_bytes));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemset(buf, 1, stream_bytes));
  constexpr std::uint32_t kChase = 16384;  // 64 KB
  std::vector<std::uint32_t> order(kChase), next(kChase);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin() + 1, order.end(), std::mt19937(7));
  for (std::uint32_t i = 0; i < kChase; ++i) next[order[i]] = order[(i + 1) % kChase];
  std::uint32_t *chase = nullptr, *words = nullptr;
  unsigned long long* out = nullptr;
  std::vector<std::uint32_t> hot(64 * 32, 0);
  for (std::uint32_t i = 0; i < 64; ++i) hot[i * 32] = ((i * 37 + 11) % 64) * 32;
  std::uint32_t* hot_d = nullptr;
  BENCH_RETURN_IF_CUDA_ERROR(cudaMalloc(&hot_d, hot.size() * 4));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpy(hot_d, hot.data(), hot.size() * 4, cudaMemcpyHostToDevice));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMalloc(&chase, kChase * 4));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpy(chase, next.data(), kChase * 4, cudaMemcpyHostToDevice));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMalloc(&words, 4096));
  BENCH_RETURN_IF_CUDA_ERROR(cudaMalloc(&out, 4096));

  const char* names[3] = {"no stream", "stream on other SMs", "stream on other SMs + own"};
  const char* chains[kChains] = {"cold chase", "atomics", "global rel/acq", "DSMEM rel/acq",
                                 "hot chase", "global relaxed", "DSMEM relaxed"};
  for (int policy = 0; policy < 2; ++policy) {
    for (int mode = 0; mode < 3; ++mode) {
      std::vector<double> med(kChains);
      double gbps = 0;
      std::vector<std::vector<double>> runs(kChains);
      for (int rep = 0; rep < 5; ++rep) {
        BENCH_RETURN_IF_CUDA_ERROR(cudaMemset(words, 0, 4096));
        BENCH_RETURN_IF_CUDA_ERROR(cudaMemset(out, 0, 4096));
        Args a{};
        a.stream_buf = buf;
        a.stream_quads = stream_bytes / sizeof(uint4);
        a.chase = chase;
        a.hot = hot_d;
        a.atom_word = words;
        a.ping = words + 64;
        a.stop = words + 256;
        a.stream_bytes = out;
        a.chain_ns = out + 16;
        a.stream_ns = out + 32;
        a.mode = mode;
        a.zero = 0;
        a.evict_first = policy;
        BENCH_RETURN_IF_CUDA_ERROR(cudaLaunchKernelEx(&cfg, probe_kernel, a));
        BENCH_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());
        unsigned long long h[64];
        BENCH_RETURN_IF_CUDA_ERROR(cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost));
        for (int c = 0; c < kChains; ++c) runs[c].push_back(double(h[16 + c]) / kSteps);
        if (rep == 4 && h[32] > 0) gbps = double(h[0]) / double(h[32]);
      }
      for (int c = 0; c < kChains; ++c) {
        std::sort(runs[c].begin(), runs[c].end());
        med[c] = runs[c][2];
      }
      std::printf("%-26s %-11s", names[mode], policy ? "evict_first" : "normal");
      for (int c = 0; c < kChains; ++c) std::printf("  %s %6.0f", chains[c], med[c]);
      std::printf("  | ns a step; stream %.0f GB/s\n", gbps);
    }
  }
  return {};
}

}  // namespace

int main() {
  const std::string error = run_probe();
  if (error.empty()) return 0;
  std::fprintf(stderr, "%s\n", error.c_str());
  return 1;
}
