// Tile shape of the warp-specialised prefill engine (sm_90a): a 384-thread block, one per SM,
// whose warpgroups 0-1 multiply on the warpgroup MMA (the consumers) while warp 8 issues every
// copy through the copy engine (the producer). Gate/up and down tiles share one ring of stages,
// each the m-tile's token rows (the expert-sorted copy of x, or h) as 64-row A boxes and BN
// weight rows, 64 columns of K (one 128-byte swizzle atom).
#pragma once

namespace flashmoe::detail {

template <int BM_>
struct WsShape {
  static_assert(BM_ == 64 || BM_ == 128, "an m-tile is one or two warpgroup MMA heights");
  static constexpr int BM = BM_;
  // Routing is the prefill kernel's (tensor-core router tiles); BM sizes the tile table.
  static constexpr bool tile_router = true;
  static constexpr int kThreads = 384;
  static constexpr int kConsumerThreads = 256;
  static constexpr int BK = 64;
  // B rows of a stage: a down tile's 256 columns of H, or a gate/up tile's 128 gate rows and
  // the 128 up rows of the same columns.
  static constexpr int BN = 256;
  static constexpr int kGateUpCols = BN / 2;  // h columns per gate/up tile
  // 128-row m-tiles: warpgroup g multiplies rows [64 g, 64 g + 64) by all BN rows of B. 64-row
  // m-tiles: both take all rows, warpgroup g B rows [g WN, g WN + WN) (for gate/up, its own gate
  // box and up box: the stage holds gate and up per warpgroup).
  static constexpr int kGroups = BM == 128 ? 1 : 2;
  static constexpr int WN = BN / kGroups;  // MMA width of one warpgroup
  static constexpr int kAcc = WN / 2;      // fp32 accumulators per consumer thread
  static constexpr int kGateBoxRows = WN / 2;
  static constexpr int kDownBoxRows = BN;
  static constexpr int kRowBytes = BK * 2;
  static constexpr int A_BYTES = BM * kRowBytes, B_BYTES = BN * kRowBytes;
  // Rows of one A box (the box of the scratch maps): a 128-row m-tile's A is two, so that a half
  // tile requests only its own rows.
  static constexpr int kABoxRows = 64;
  // A 128-row shape runs an m-tile of at most 64 rows (an expert's last) as a half tile: both
  // warpgroups take its 64 rows and split the stage's weight rows as the 64-row shape does, for
  // half the MMAs and one A box. Experts rarely fill their last m-tile, and a full tile's cost
  // for a few rows was a quarter of the 128-row tiles at T = 2048-4096 (bench/NOTES.md).
  __host__ __device__ static constexpr bool half_tile(unsigned rows) {
    return BM == 128 && rows <= 64;
  }
  __host__ __device__ static constexpr int a_boxes(unsigned rows) {
    return half_tile(rows) ? 1 : BM / kABoxRows;
  }
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  // 192 KB (4 x 48 KB) or 200 KB (5 x 40 KB) of the 227 KB an sm_90 block may take.
  static constexpr int STAGES = BM == 128 ? 4 : 5;
  static constexpr int RING_BYTES = STAGES * STAGE_BYTES;
};

}  // namespace flashmoe::detail
