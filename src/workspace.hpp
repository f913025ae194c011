// Layout of a Layer's device memory, shared by the host (sizing) and the kernel (use): its own
// small state and the scratch, which Layers may share. Every region is sized once, at
// Layer::create: the state from Config::max_tokens, the scratch from the tokens of one launch.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "flashmoe/config.hpp"

#if defined(__CUDACC__)
#define FLASHMOE_HOST_DEVICE __host__ __device__
#else
#define FLASHMOE_HOST_DEVICE
#endif

namespace flashmoe::detail {

// Smallest tile extents of any kernel variant: they bound the tile-table sizes. The tallest
// m-tile bounds the router's partial-logit buffer.
inline constexpr int kMinTileM = 16;
inline constexpr int kMaxTileM = 64;
inline constexpr int kMinDownTileN = 32;

// Router tasks. Decode kernels: logits of kRouterTokens tokens x kRouterExperts experts on CUDA
// cores, whole rows of H; the last router task of a chunk selects its tokens' experts. The
// prefill kernels: tensor-core tiles of their down shape, logits of a token chunk (an m-tile of
// rows) x an expert slice (a down tile of columns) over one K slice of H, K split while there
// are few chunks, so that the router fills one wave; then select tickets of select_tokens
// tokens each (one warp a token) sum a logit's K-slice partials in slice order and select, so
// that the top-k of a chunk is spread over many blocks instead of one warp taking 8 tokens one
// after another; then, once the tile table is out, as many row-map tickets write the same
// tokens' pairs into the expert-sorted row map (one block's scattered stores took 35 us for
// 32768 pairs). Neither result depends on which block ran which task.
// Decode router tasks: 4 x 8 = 32 sums per thread, one per lane after router_logits'
// reduce-scatter (a static_assert there). 8 tokens measured 2-4% slower at T = 8-64 with the
// earlier one-expert-per-warp router (bench/NOTES.md, version 18).
inline constexpr int kRouterTokens = 4;
inline constexpr int kRouterExperts = 8;
// About one wave of an H100/H200 (132 SMs): a router task is a chain of pipeline steps whose
// length barely depends on K, so a second wave costs a whole task.
inline constexpr int kRouterTargetTasks = 128;
inline constexpr int kRouterMaxKSlices = 16;
// Select tickets: 8 tokens (one per warp) each, more once that would need more tickets than this.
inline constexpr int kSelectTargetTickets = 128;
inline constexpr int kSelectMinTokens = 8;
struct RouterSplit {
  int chunk_tokens = 0;  // tokens per router chunk
  int chunks = 0;
  int eslices = 0;  // expert slices (decode with caller routing: 1; prefill with it: 0, no router)
  int kslices = 1;  // K slices of klen columns of H
  int klen = 0;
  // Prefill kernels: tokens per select ticket (a multiple of 8 that divides chunk_tokens when
  // that is one too) and the tickets, each with a row-map ticket for the same tokens; both 0 in
  // decode, where each chunk's last router task selects and the tile table's builder writes the
  // row map.
  int select_tokens = 0;
  int selects = 0;
  // Routing tickets of the launch: router tasks, then select tickets, then row-map tickets.
  // Stored although derivable: with two ints instead of three here ptxas serialised the
  // engine's wgmma (bench/NOTES.md, row 85), so change this struct only with the C7511 check.
  int tickets = 0;
  FLASHMOE_HOST_DEVICE int router_tasks() const { return chunks * eslices * kslices; }
  // Select (and row-map) tickets that run when `live` tokens are routed: the first always does,
  // so that the tile table is published even for none.
  FLASHMOE_HOST_DEVICE int live_selects(int live) const {
    const int n = (live + select_tokens - 1) / select_tokens;
    return n > 1 ? n : 1;
  }
  FLASHMOE_HOST_DEVICE int tasks() const { return tickets; }
};
// tile_*: the prefill kernel's down tile (tile_router), else unused.
FLASHMOE_HOST_DEVICE inline RouterSplit router_split(std::int64_t tokens, int hidden, int experts,
                                                     bool user_routing, bool tile_router,
                                                     int tile_m, int tile_n, int tile_k) {
  RouterSplit r;
  r.chunk_tokens = tile_router ? tile_m : kRouterTokens;
  r.chunks = static_cast<int>((tokens + r.chunk_tokens - 1) / r.chunk_tokens);
  const int slice = tile_router ? tile_n : kRouterExperts;
  r.eslices = user_routing ? (tile_router ? 0 : 1) : (experts + slice - 1) / slice;
  r.klen = hidden;
  r.tickets = r.router_tasks();
  if (!tile_router) return r;
  int st = kSelectMinTokens;
  while (2 * st <= r.chunk_tokens && r.chunk_tokens % (2 * st) == 0 &&
         tokens > static_cast<std::int64_t>(st) * kSelectTargetTickets) {
    st *= 2;
  }
  r.select_tokens = st;
  r.selects = static_cast<int>((tokens + st - 1) / st);
  r.tickets = 2 * r.selects;
  if (user_routing) return r;
  int ks = 1;
  while (2 * ks <= kRouterMaxKSlices && 2 * ks * tile_k <= hidden &&
         static_cast<std::int64_t>(r.chunks) * r.eslices * 2 * ks <= kRouterTargetTasks) {
    ks *= 2;
  }
  // Slices of whole pipeline steps; the last may be shorter, none is empty.
  const int steps = (hidden + tile_k - 1) / tile_k;
  r.klen = (steps + ks - 1) / ks * tile_k;
  r.kslices = (hidden + r.klen - 1) / r.klen;
  r.tickets = r.router_tasks() + 2 * r.selects;
  return r;
}
// m-tile height of the decode kernels (DecodeConfig::BM, which checks it). A forward runs the
// prefill kernel when its experts average more than one such m-tile of rows. Near that point
// many experts need a second 32-row m-tile, which the tall decode kernels (48 rows) avoid:
// with them the decode side wins at exactly 32 rows for large experts too (Mixtral-8x7B at
// T = 128: -3.7% on an H100, -4.7 to -7.7% on an H200 against the 64-row warpgroup-MMA
// tiles); at 36-40 rows the two are within about 1% either way, and at 48 the prefill kernel
// wins; for small experts the prefill kernel's longer routing prelude costs more (OLMoE at
// T = 256: +7%). bench/NOTES.md, versions 33-35 and 64. The rule only grows with T.
inline constexpr int kDecodeTileM = 32;
// m-tile height of the thin decode kernels (ThinDecodeConfig::BM), which run while experts
// average few rows (thin_decode_max_tokens, tile_choice.hpp).
inline constexpr int kThinDecodeTileM = 16;
// m-tile height of the tall decode kernels (TallDecodeConfig::BM), which run where many
// experts would need a second 32-row m-tile (tall_decode_min_tokens, tile_choice.hpp).
inline constexpr int kTallDecodeTileM = 48;
static_assert(kThinDecodeTileM >= kMinTileM && kTallDecodeTileM <= kMaxTileM,
              "the workspace tables are sized for kMinTileM .. kMaxTileM");
// Decode launches of 2 to tile_m live tokens that the kernel routes, at most one (token, expert)
// pair a thread of the decode kernels' 256: each live expert is then one m-tile, so no tile
// table is built; every block finds its tiles from the pairs (tile_table.cuh, LiveExperts).
// Not the tall kernels: they run where experts average near 32 rows, far more live tokens than
// 48, and the path's code would only cost them registers.
inline constexpr int kTableFreeMaxPairs = 256;
FLASHMOE_HOST_DEVICE constexpr bool table_free_height(int tile_m) {
  return tile_m <= kDecodeTileM;
}
FLASHMOE_HOST_DEVICE inline bool table_free_tiles(std::int64_t live, int top_k, int tile_m) {
  return table_free_height(tile_m) && live >= 2 && live <= tile_m &&
         live * top_k <= kTableFreeMaxPairs;
}
inline constexpr std::int64_t kLargeExpertBytes = std::int64_t{128} << 20;
// Experts whose weights (gate, up and down at 2 bytes) reach kLargeExpertBytes.
FLASHMOE_HOST_DEVICE inline bool large_experts(int hidden, int intermediate) {
  return std::int64_t{6} * hidden * intermediate >= kLargeExpertBytes;
}
// Whether a forward of `tokens` tokens runs a prefill kernel (the warp-specialised engine on
// sm_90a, the 256-thread kernel elsewhere) rather than the decode kernels. The engine took over
// from 24 rows an expert until the decode kernels' large-T cells grew 4-5% faster; re-measured,
// the decode kernels win at 24-32 rows on every shape (OLMoE T = 192 -7%, DeepSeek-V2-Lite
// T = 256 -5%, Qwen3-30B-A3B T = 384 -4%, Mixtral-8x7B T = 112 -1.3%), and at 40 rows on all but
// Qwen3 (bench/NOTES.md, rows 163-164). The rule only grows with T.
FLASHMOE_HOST_DEVICE inline bool runs_prefill_kernel(std::int64_t tokens, int top_k, int experts) {
  return tokens * top_k > static_cast<std::int64_t>(kDecodeTileM) * experts;
}

// Down tiles may split K (= I) into slices when one tile's weights exceed kDownSliceBytes: a
// few long down tiles that do not fill their last wave leave blocks idle for a whole tile
// (Mixtral-8x7B at T = 4: about 175 tiles of 3.7 MB for 264 blocks). Slice s writes plane s of
// ypart, and the combine sums the planes in a fixed order, so the result does not depend on
// which block ran which slice. Only while T*K <= kDownSplitMaxPairs: that bounds the planes'
// workspace, and past it there are enough tiles to keep blocks busy.
inline constexpr std::int64_t kDownSliceBytes = std::int64_t{1} << 20;
inline constexpr int kMaxDownSlices = 8;
inline constexpr std::int64_t kDownSplitMaxPairs = 1024;
// The widest down tile of any variant (the warp-specialised prefill kernel's): it wants the most
// K slices, which size the ypart planes.
inline constexpr int kMaxDownTileN = 256;
struct DownSplit {
  int kslices = 1;  // K slices per down tile
  int klen = 0;     // columns of I per slice (whole pipeline steps; the last may be shorter)
};
// Slices that bring a down tile of tile_n columns over K = inter to kDownSliceBytes; the host
// takes fewer where they would not shorten the launch (the slice models of tile_choice.hpp).
FLASHMOE_HOST_DEVICE inline int down_slices_wanted(int inter, int tile_n) {
  const std::int64_t bytes = std::int64_t{2} * tile_n * inter;
  const std::int64_t s = (bytes + kDownSliceBytes - 1) / kDownSliceBytes;
  return static_cast<int>(s < kMaxDownSlices ? s : kMaxDownSlices);
}
// Slices wanted for a launch with `pairs` rows (1 past kDownSplitMaxPairs).
FLASHMOE_HOST_DEVICE inline int down_slices_allowed(std::int64_t pairs, int inter, int tile_n) {
  return pairs > kDownSplitMaxPairs ? 1 : down_slices_wanted(inter, tile_n);
}
// `slices` (at most down_slices_allowed) rounded to whole pipeline steps of tile_k columns.
FLASHMOE_HOST_DEVICE inline DownSplit down_split(int inter, int tile_k, int slices) {
  DownSplit d;
  d.klen = inter;
  if (slices <= 1) return d;
  const int steps = (inter + tile_k - 1) / tile_k;
  d.klen = (steps + slices - 1) / slices * tile_k;
  d.kslices = (inter + d.klen - 1) / d.klen;
  return d;
}
// Rows of ypart ([kslices][T*K][H] values of the activation type) for any T <= max_tokens and
// any variant.
inline std::int64_t ypart_rows(std::int64_t max_tokens, int top_k, int inter) {
  const std::int64_t pairs = max_tokens * top_k;
  const std::int64_t split_pairs = pairs < kDownSplitMaxPairs ? pairs : kDownSplitMaxPairs;
  const std::int64_t split_rows = split_pairs * down_slices_wanted(inter, kMaxDownTileN);
  return pairs > split_rows ? pairs : split_rows;
}

// Rows of the router's partial-logit buffer ([kslices][T][E]) for any T <= max_tokens. Only
// the prefill kernels split K, so a layer whose forwards never reach them needs T rows. With
// more than one K slice, chunks * kslices <= kRouterTargetTasks, so kslices * T is at most that
// many chunks of the tallest m-tile (64 rows).
inline std::int64_t router_partial_rows(std::int64_t max_tokens, int top_k, int experts) {
  if (!runs_prefill_kernel(max_tokens, top_k, experts)) return max_tokens;
  const std::int64_t split = std::min<std::int64_t>(kRouterMaxKSlices * max_tokens,
                                                    std::int64_t{kRouterTargetTasks} * kMaxTileM);
  return std::max(max_tokens, split);
}

// Bound on the sum over experts of ceil(rows_e / tile_m), for `pairs` rows over `experts`.
FLASHMOE_HOST_DEVICE inline std::int64_t mtile_bound(std::int64_t pairs, std::int64_t experts,
                                                     int tile_m) {
  return pairs / tile_m + (experts < pairs ? experts : pairs);
}

// Test-only faults (testing.hpp).
enum Fault : int {
  kFaultNone = 0,
  kFaultDropMTileSignal = 1,
  kFaultStallWeightCopy = 2,
  kFaultDropRoutingSignal = 3,
};

// Control words of a Layer's state, one per 128-byte line so that spinning on one never slows
// another.
enum ControlWord : int {
  kQueueHead = 0,  // next ticket of the task queue
  kExitCount,      // blocks that left the kernel
  kRoutingDone,    // routing tasks finished
  kTasksTotal,     // total tickets of this launch, published after routing (0: not yet)
  kAbort,          // this launch is being abandoned (timeout or bad input)
  kStickyError,    // StatusCode of the first device error, cleared by the host
  kErrorSite,      // where it happened (diagnostics)
  kRowMapDone,     // prefill kernels: row-map tickets finished
  // Decode launches of one live token: gate/up tiles finished per pair (word k of the line; top_k
  // <= kControlStride), counted by tiles that start before the tile table (moe_kernel.cuh).
  kOneTokenDone,
  kControlWords
};
inline constexpr int kControlStride = 32;  // uint32 words per 128-byte line

// Where a device error happened (kErrorSite); reported by Layer::device_status.
enum ErrorSite : std::uint32_t {
  kSiteNone = 0,
  kSiteTasksTotal = 1,    // waiting for routing to publish the task count
  kSiteMTileDone = 2,     // a down tile waiting for its gate/up tiles
  kSiteRoutingIds = 3,    // caller-supplied routing id out of range
  kSiteWeightCopy = 4,    // a tile waiting for its weight boxes (TMA)
  kSiteScratchBusy = 5,   // the scratch was owned by another launch
  kSiteJobRing = 6,       // a warp-specialised block's roles waiting for each other (job ring)
  kSiteRouterDone = 7,    // a select ticket waiting for its chunk's router tasks
  kSiteRowMap = 8,        // a prefill tile waiting for the row map of the tile table
  kSiteSelectsDone = 9,   // a prefill row-map ticket waiting for every top-k selection
  kSiteRoutingDone = 10,  // a decode tile waiting for routing's choice (no tile table yet)
};

// The scratch's first line: which launch owns it. 0 when idle; a launch's id (from %gridid)
// while it runs, with kOwnerConflict added once another launch was refused meanwhile (the
// owner then leaves kOwnerConflict alone behind). That refuses every launch until the host
// clears it (Layer::device_status), because a launch that overlapped another may still have
// blocks to come.
inline constexpr std::uint64_t kOwnerConflict = std::uint64_t{1} << 62;
inline constexpr std::uint64_t kOwnerIdMask = kOwnerConflict - 1;
inline constexpr std::size_t kScratchHeaderBytes = 256;

// A Layer's own device state: counters that the kernel keeps at zero between launches (set to
// zero once, at Layer::create) and the sticky error. A few KB; never shared between Layers.
struct StateLayout {
  std::int64_t router_chunks = 0;  // ceil(max_tokens / kRouterTokens): the smallest chunks
  std::size_t control = 0, expert_count = 0, router_done = 0, total = 0;
};

// The scratch: everything a forward writes before it reads it, behind the owner line. Any
// number of Layers may share one scratch of the largest size they need, as long as their
// forwards are stream-ordered (an overlap is detected and refused, kOwnerConflict).
struct ScratchLayout {
  std::int64_t max_pairs = 0;        // max_tokens * K
  std::int64_t max_mtiles = 0;       // bound on sum over experts of ceil(count / kMinTileM)
  std::int64_t max_down_ntiles = 0;  // ceil(H / kMinDownTileN)
  std::int64_t ypart_rows = 0;       // rows of the ypart planes (K slices x pairs at most)
  // Byte offsets from the scratch base.
  std::size_t owner = 0, logits = 0, pair_expert = 0, pair_weight = 0, pair_pos = 0,
              sorted_pair = 0, expert_row0 = 0, mtile_info = 0, mtile_done = 0, combine_done = 0,
              h = 0, ypart = 0, x_sorted = 0, sorted_weight = 0, total = 0;
  bool has_x_sorted = false;  // forwards of this size can reach the prefill kernels
};

// Regions of `bytes`, each starting on a 256-byte boundary.
class RegionPlanner {
 public:
  std::size_t take(std::int64_t bytes) {
    const std::size_t here = at_;
    at_ += (static_cast<std::size_t>(bytes) + 255) / 256 * 256;
    return here;
  }
  std::size_t total() const { return at_; }

 private:
  std::size_t at_ = 0;
};

// Both assume a validated config.
inline StateLayout plan_state(const Config& c) {
  StateLayout s;
  static_assert(kRouterTokens <= kMinTileM, "chunks of tile_m tokens are no more");
  s.router_chunks = (std::int64_t{c.max_tokens} + kRouterTokens - 1) / kRouterTokens;
  RegionPlanner r;
  s.control = r.take(kControlWords * kControlStride * 4);
  s.expert_count = r.take(std::int64_t{c.experts} * 4);
  s.router_done = r.take(s.router_chunks * 4);
  s.total = r.total();
  return s;
}

inline ScratchLayout plan_scratch(const Config& c) {
  ScratchLayout w;
  const std::int64_t T = c.max_tokens, K = c.top_k, E = c.experts, H = c.hidden, I = c.intermediate;
  w.max_pairs = T * K;
  w.max_mtiles = mtile_bound(w.max_pairs, E, kMinTileM);
  w.max_down_ntiles = (H + kMinDownTileN - 1) / kMinDownTileN;
  RegionPlanner r;
  w.owner = r.take(kScratchHeaderBytes);
  w.logits = r.take(router_partial_rows(T, c.top_k, c.experts) * E * 4);
  w.pair_expert = r.take(w.max_pairs * 4);
  w.pair_weight = r.take(w.max_pairs * 4);
  w.pair_pos = r.take(w.max_pairs * 4);
  w.sorted_pair = r.take(w.max_pairs * 4);
  w.expert_row0 = r.take(E * 4);
  w.mtile_info = r.take(w.max_mtiles * 16);
  w.mtile_done = r.take(w.max_mtiles * 4);
  w.combine_done = r.take(T * w.max_down_ntiles * 4);
  w.h = r.take(w.max_pairs * I * 2);
  w.ypart_rows = ypart_rows(T, c.top_k, c.intermediate);
  w.ypart = r.take(w.ypart_rows * H * 2);  // bf16 or fp16, as every kernel writes them
  // The warp-specialised prefill kernel (sm_90a) reads its token rows as boxes of an
  // expert-sorted copy of x, [T*K, H] (the rows of sorted_pair), reserved on every device.
  w.has_x_sorted = runs_prefill_kernel(T, c.top_k, c.experts);
  // Its gathers also write each sorted row's routing weight, so that a down tile loads a row's
  // pair and weight at once instead of the weight after the pair.
  if (w.has_x_sorted) {
    w.x_sorted = r.take(w.max_pairs * H * 2);
    w.sorted_weight = r.take(w.max_pairs * 4);
  }
  w.total = r.total();
  return w;
}

// LayerOptions::tokens_per_launch resolved for a valid config: 0, or anything above max_tokens,
// gives max_tokens (negative is the caller's error, caught before this).
inline int resolve_tokens_per_launch(const Config& c, int tokens_per_launch) {
  return tokens_per_launch <= 0 || tokens_per_launch > c.max_tokens ? c.max_tokens
                                                                    : tokens_per_launch;
}

// The scratch of a Layer whose launches take at most `tokens` tokens: the plan for that many.
inline ScratchLayout plan_launch_scratch(const Config& c, int tokens) {
  Config per_launch = c;
  per_launch.max_tokens = tokens;
  return plan_scratch(per_launch);
}

}  // namespace flashmoe::detail
