// Everything one launch of the persistent kernel needs, passed by value.
#pragma once

#include <cstdint>

#include "sync.cuh"
#include "tma.cuh"
#include "trace.cuh"
#include "workspace.hpp"
#include "ws_ticket_order.hpp"

namespace flashmoe::detail {

template <typename T>
struct KernelParams {
  // Weight tensor maps of this launch's tile shapes (boxes of kTmaBoxCols x the tile's BN
  // rows), encoded at Layer::create: w13 as [E * 2I, H], w2 as [E * H, I]. Used on sm_90.
  CUtensorMap w13_map;
  CUtensorMap w2_map;

  // Inputs and outputs.
  const T* x;                    // [T, H]
  T* y;                          // [T, H]
  const T* router;               // [E, H]
  const T* w13;                  // [E, 2I, H]
  const T* w2;                   // [E, H, I]
  const float* correction_bias;  // [E] or null
  const std::int32_t* user_ids;  // [T, K] or null (then the router runs)
  const float* user_weights;     // [T, K]
  std::int32_t* out_ids;         // [T, K] or null
  float* out_weights;            // [T, K] or null
  float beta;
  const std::int32_t* live_tokens;  // device token count (padded batches) or null
  int live_offset;                  // this launch's first row in the forward (token chunks)

  // Shape and routing. num_tokens is the launch's capacity: it sizes the grid and the strides;
  // the tokens routed are the first live_token_count() of them.
  int num_tokens, hidden, inter, experts, top_k;
  int activation;  // flashmoe::Activation
  int scoring;     // flashmoe::Scoring
  bool renormalize;
  // Decode kernels, one live token: gate/up tiles start once the token's experts are chosen
  // instead of after the tile table (moe_kernel.cuh).
  bool one_token_gateup;
  // Decode kernels, 2 to BM live tokens of their own routing: no tile table (tile_table.cuh,
  // LiveExperts).
  bool table_free;
  float scaling;
  RouterSplit rsplit;  // router tasks of this launch (workspace.hpp)
  DownSplit dsplit;    // K slices of this launch's down tiles (workspace.hpp)

  // The Layer's state (zero between launches; workspace.hpp).
  Control ctl;
  std::uint32_t* expert_count;  // [E]
  std::uint32_t* router_done;   // [router chunks]
  // The scratch (workspace.hpp), behind its owner word.
  unsigned long long* owner;
  float* logits;                // [rsplit.kslices, T, E] partial sums over K slices
  std::int32_t* pair_expert;    // [T*K]
  float* pair_weight;           // [T*K]
  std::uint32_t* pair_pos;      // [T*K] position among its expert's rows
  std::int32_t* sorted_pair;    // [T*K] row (grouped by expert; one live token: row k) -> pair
  std::uint32_t* expert_row0;   // [E] each expert's first row (prefill kernels' row map)
  uint4* mtile_info;            // [m-tiles] MTileInfo of the m-tile's expert (tile_table.cuh)
  std::uint32_t* mtile_done;    // gate/up tiles finished per m-tile
  std::uint32_t* combine_done;  // [T, down n-tiles] down tiles finished per token slice
  T* h;                         // [T*K, I] activations, rows as in sorted_pair
  T* ypart;                     // [dsplit.kslices, T*K, H] weighted expert outputs, by pair
  std::int64_t combine_stride;  // down n-tiles per token in combine_done

  std::uint64_t timeout_ns;
  int fault;
  TraceSink trace;
};

// The warp-specialised prefill kernel's launch (moe_ws_kernel.cuh): its A operands come through
// the copy engine too, as boxes of the m-tile's rows of the expert-sorted copy of x and of h.
template <typename T>
struct WsKernelParams : KernelParams<T> {
  CUtensorMap xs_map;    // x_sorted as [T*K, H], boxes of BM rows
  CUtensorMap h_map;     // h as [T*K, I], boxes of BM rows
  T* x_sorted;           // [T*K, H] token rows in expert order (the rows of sorted_pair)
  float* sorted_weight;  // [T*K] routing weight of each row of sorted_pair (by the gathers)
  // M-tile positions of gate/up tiles ahead of the down tiles (ws_ticket_order.hpp); the
  // default keeps them all first, the order that needs no lead to be safe.
  std::uint32_t down_lead = kAllGateUpFirst;
  // Gather jobs per m-tile, each copying a share of the row's columns: several where the
  // m-tiles are too few to keep the SMs busy copying (tile_choice.hpp, choose_gather_parts).
  std::uint32_t gather_parts = 1;
};

// Tokens this launch routes: all num_tokens, or the caller's device count (of the whole
// forward, whose rows from live_offset on are this launch's) clamped to them.
template <typename T>
__device__ int live_token_count(const KernelParams<T>& p) {
  if (p.live_tokens == nullptr) return p.num_tokens;
  const long long n = static_cast<long long>(*p.live_tokens) - p.live_offset;
  return n < 0 ? 0 : n > p.num_tokens ? p.num_tokens : static_cast<int>(n);
}

}  // namespace flashmoe::detail
