// Issue 21's decode layer, as a prototype: the routing prelude (ws_decode_prelude.cuh) and the
// expert stream (ws_decode_stream.cuh) in one launch for T <= 16 tokens. Every block routes all
// tokens itself, numbers the chosen experts in ascending id (the slots: the same on every block),
// and joins the stream; with at most 16 tokens every slot's MMA takes all T token rows of x as
// its B (the tokens not routed to the expert are columns nobody reads), so there is no gather.
// The down tile that completes a column slice of every slot sums each token's weighted parts
// into y in its top-k order. Softmax scoring, renormalised weights, SiLU-gated experts, bf16.
#pragma once

#include "ws_decode_prelude.cuh"
#include "ws_decode_stream.cuh"

namespace flashmoe_test {

// route: x [T, H], the router, T, H, E, K, logits [T, E] and the publish counter (its ids and
// weights are not written). stream: I, h [min(E, T*K) * 16, I], out (the same rows, H columns),
// words [1 + kDpMaxExperts] (the ticket counter, gate/up tiles per slot); its experts and
// selected are not used. slice_done [ceil(H / 64)]. Counters zero before the launch. Maps: x
// over [T, H] by 16-row boxes, h over out's rows.
struct DecodeLayerArgs {
  DecodePreludeArgs route;
  DecodeStreamArgs stream;
  __nv_bfloat16* y;  // [T, H]
  std::uint32_t* slice_done;
};

template <class V>
__global__ void __launch_bounds__(V::kThreads, 1)
    ws_decode_layer_kernel(const __grid_constant__ DecodeStreamMaps maps, const DecodeLayerArgs g) {
  __shared__ DpShared sh;
  __shared__ int s_slot_expert[kDpMaxExperts], s_slot_of[kDpMaxExperts];
  __shared__ std::uint32_t s_chosen[kDpMaxExperts / 32];
  __shared__ int s_slots;
  if (!dp_route(g.route, sh)) return;
  const int T = g.route.tokens, K = g.route.top_k, E = g.route.experts;
  if (threadIdx.x < kDpMaxExperts / 32) s_chosen[threadIdx.x] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
    const int e = sh.ids[i / K][i % K];
    atomicOr(&s_chosen[e >> 5], 1u << (e & 31));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int n = 0;
    for (int e = 0; e < E; ++e) {
      if ((s_chosen[e >> 5] >> (e & 31)) & 1u) {
        s_slot_of[e] = n;
        s_slot_expert[n++] = e;
      }
    }
    s_slots = n;
  }
  __syncthreads();
  const DsLayerHook hook{s_slot_expert, s_slot_of, sh.ids, sh.weights, T, K, g.y, g.slice_done};
  ds_stream<V, true>(maps, g.stream, s_slot_expert, s_slots, hook);
}

template <class V = DsVariant<>>
cudaError_t launch_ws_decode_layer(const DecodeStreamMaps& maps, const DecodeLayerArgs& g, int grid,
                                   cudaStream_t stream) {
  auto kernel = ws_decode_layer_kernel<V>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(V::kBytes));
      e != cudaSuccess) {
    return e;
  }
  kernel<<<grid, V::kThreads, V::kBytes, stream>>>(maps, g);
  return cudaGetLastError();
}

}  // namespace flashmoe_test
