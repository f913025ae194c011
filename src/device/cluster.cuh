// Thread-block clusters (sm_90): the rank of a block in its cluster, the cluster-wide barrier,
// an mbarrier arrival on another block's barrier, and a copy-engine load that lands in several
// blocks' shared memory at once (multicast), completing on each one's barrier at the same offset.
// Two blocks that multiply the same weight rows by different token rows read those rows from L2
// once between them. Elsewhere the bodies are empty and never called.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>

namespace flashmoe::detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FLASHMOE_CLUSTER_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FLASHMOE_CLUSTER_ASM(...) \
  do {                            \
  } while (false)
#endif

__device__ __forceinline__ std::uint32_t cluster_ctarank() {
  std::uint32_t r = 0;
  FLASHMOE_CLUSTER_ASM("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}

// Every thread of every block of the cluster: what each did before is visible to all after
// (release / acquire at cluster scope). Also keeps a block from leaving while another block may
// still write its shared memory or arrive on its barriers.
__device__ __forceinline__ void cluster_sync() {
  FLASHMOE_CLUSTER_ASM(
      "barrier.cluster.arrive.release.aligned;\n"
      "barrier.cluster.wait.acquire.aligned;\n" ::
          : "memory");
}

// One arrival on the barrier at shared address `bar` (this block's layout) of block `rank` of
// the cluster, releasing this thread's earlier reads and writes at cluster scope.
__device__ __forceinline__ void mbar_arrive_cluster(std::uint32_t bar, std::uint32_t rank) {
  FLASHMOE_CLUSTER_ASM(
      "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
      " mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}

// A 2-D box of `map` at (col, row) into shared address `dst` of every block whose bit is set in
// `mask`, each completing its bytes on its own barrier at address `bar`.
__device__ __forceinline__ void tma_load_2d_multicast(std::uint32_t dst, const CUtensorMap* map,
                                                      std::uint32_t bar, int col, int row,
                                                      std::uint16_t mask) {
  FLASHMOE_CLUSTER_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::"
      "cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(col), "r"(row), "h"(mask)
      : "memory");
}

#undef FLASHMOE_CLUSTER_ASM

}  // namespace flashmoe::detail
