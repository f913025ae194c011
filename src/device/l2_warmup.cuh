// The decode kernels' L2 warm-up: while a block waits for the tile table (the routing prelude,
// when no weight byte moves), its thread 0 asks L2 for the first weights of the gate/up tile its
// ticket would be if every expert were chosen with one m-tile each. Once enough tokens are
// routed that most experts are chosen (the host's rule, l2_warmup_kb), most of those bytes are
// the first wave's, read soon after the table is published: DRAM works during the prelude
// instead of after it. The requests are hints (no shared memory, no barrier): results do not
// depend on them.
#pragma once

#include <cstdint>

#include "params.cuh"
#include "tma.cuh"

namespace flashmoe::detail {

// Thread 0, for tile task `task` of the launch (its ticket past routing), before the block
// waits for the table; GateUp is the launch's gate/up shape (w13_map's boxes are its BN rows).
// Out of line, so that the tile loops keep their register allocation (bench/NOTES.md, row 105).
template <class GateUp, typename T>
__device__ __noinline__ void warm_l2_for_guessed_tile(const KernelParams<T>& p, std::uint32_t task,
                                                      int ng) {
  if constexpr (kDeviceHasTma) {
    const std::uint32_t expert = task / static_cast<std::uint32_t>(ng);
    if (p.warm_l2_kb == 0 || expert >= static_cast<std::uint32_t>(p.experts)) return;
    constexpr int kBoxPairBytes = 2 * GateUp::BN * kTmaBoxCols * static_cast<int>(sizeof(T));
    const int boxes = min((p.hidden + kTmaBoxCols - 1) / kTmaBoxCols,
                          static_cast<int>(p.warm_l2_kb) * 1024 / kBoxPairBytes);
    const int gate_row = static_cast<int>(expert) * 2 * p.inter +
                         static_cast<int>(task % static_cast<std::uint32_t>(ng)) * GateUp::BN;
    for (int b = 0; b < boxes; ++b) {
      tma_prefetch_l2_2d(&p.w13_map, b * kTmaBoxCols, gate_row);
      tma_prefetch_l2_2d(&p.w13_map, b * kTmaBoxCols, gate_row + p.inter);
    }
  }
}

}  // namespace flashmoe::detail
