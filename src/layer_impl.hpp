// Layer internals shared by layer.cpp (host C++) and the host layer of the forward (forward.cu,
// forward_typed.cuh: launch).
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashmoe/layer.hpp"
#include "workspace.hpp"

namespace flashmoe {

// A CUtensorMap, kept opaque so that host files need no driver header.
struct alignas(64) TensorMapBytes {
  unsigned char bytes[128] = {};
};

// A kernel variant's launch facts, read once at Layer::create.
struct KernelVariantInfo {
  int blocks_per_sm = 0;
  int traced_blocks_per_sm = 0;  // of its traced instantiation (0: FLASHMOE_ENABLE_TRACE=OFF)
  int smem_bytes = 0;
  TensorMapBytes w13_map, w2_map;  // weight boxes of the variant's tile shapes (forward_typed.cuh)
};

struct Layer::Impl {
  Config config;
  Weights weights;
  LayerOptions options;
  int device = 0;
  int sm_count = 0;
  // The device and its loaded kernels have programmatic dependent launch (prepare_kernels).
  bool programmatic_launch = false;
  detail::StateLayout state_layout;
  int tokens_per_launch = 0;  // 1 .. max_tokens: the scratch is planned for this many tokens
  detail::ScratchLayout scratch_layout;
  void* state = nullptr;          // owned
  void* scratch = nullptr;        // owned_scratch, or the caller's (LayerOptions::scratch)
  void* owned_scratch = nullptr;  // freed with the Layer
  // Decode kernels (forward_typed.cuh), for the dtype of the layer, by m-tile height as
  // decode_variant numbers them (16 rows for num_tokens <= thin_max_tokens, 48 from
  // tall_min_tokens, 32 between; tile_choice.hpp), then by tile widths as choose_decode_kernel
  // does.
  KernelVariantInfo decode[3][4];
  std::int64_t thin_max_tokens = 0;
  std::int64_t tall_min_tokens = 0;
  KernelVariantInfo prefill;
  // The warp-specialised prefill kernels (sm_90a builds on an sm_90 device), by m-tile height:
  // [0] 64 rows, [1] 128 rows. ws_engine: they replace `prefill`.
  KernelVariantInfo ws[2];
  bool ws_engine = false;
  int fault = 0;  // test-only (testing.hpp)
  // Decode launches of one live token start their gate/up tiles once the token's experts are
  // chosen (moe_kernel.cuh) instead of after the tile table. Off only in tests and benchmarks
  // that compare the two paths (testing.hpp).
  bool one_token_gateup = true;
  // Decode launches of 2 to BM live tokens that route themselves find their tiles without a tile
  // table (tile_table.cuh, LiveExperts; bench/NOTES.md row 185). Off only in tests and benchmarks
  // that compare the two paths (testing.hpp).
  bool table_free = true;
  // Test- and bench-only (testing.hpp): > 0 runs the prefill kernels once experts average more
  // than this many rows, instead of runs_prefill_kernel's rule.
  int prefill_rows = 0;
  // Test- and bench-only (testing.hpp): > 0 runs decode kernel decode_kernel - 1 of the four of
  // each m-tile height (choose_decode_kernel's order) instead of the rule's.
  int decode_kernel = 0;
  // Test- and bench-only (testing.hpp): decode forwards on decode_variant's variant
  // decode_height - 1 (0 thin, 1 the 32-row kernels, 2 tall) instead of the rule's (0).
  int decode_height = 0;
  // Test- and bench-only (testing.hpp): > 0 runs the warp-specialised kernel's 128-row m-tiles
  // once experts average at least this many rows, instead of launch_prefill's rule.
  int ws_tall_rows = 0;
  // Test- and bench-only (testing.hpp): > 0 cuts every down tile into this many K slices (no
  // more than the scratch's ypart planes allow), instead of the slice models (tile_choice.hpp).
  int down_slices = 0;
  // Test- and bench-only (testing.hpp): > 0 lets the warp-specialised kernel's down tiles start
  // once this many waves of gate/up tiles are handed out (ws_down_lead), interleaved with the
  // rest, instead of after every gate/up tile.
  double down_lead_waves = 0.0;
  // Test- and bench-only (testing.hpp): > 0 splits each of the warp-specialised kernel's
  // gathers into this many jobs, instead of choose_gather_parts's rule.
  int gather_parts = 0;

  // Pointers that forwards of this Layer found to be memory of its device (x, y and the option
  // pointers): an engine passes the same buffers call after call, and cudaPointerGetAttributes
  // is a large part of a forward's host cost. Null and alignment are still checked every call.
  static constexpr int kCheckedPointers = 16;
  const void* checked_pointers[kCheckedPointers] = {};
  int checked_next = 0;

  // Tracing: a slice of trace_capacity events per block, for up to trace_max_grid blocks.
  void* trace_buffer = nullptr;
  int trace_capacity = 0;
  int trace_max_grid = 0;
  // The last traced launch, for read_trace.
  struct {
    bool valid = false;
    int grid = 0, num_tokens = 0, tile_m = 0, tile_n_gateup = 0, tile_n_down = 0;
    int router_tasks = 0, router_k_slices = 0, router_tile_m = 0, router_tile_n = 0;
    int down_k_slices = 0, gather_parts = 0;
    const char* variant = "decode";
  } last_trace;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl();
};

namespace detail {
// Defined in forward.cu: reads occupancy and sets the shared-memory limit of the kernels, and
// encodes the weight tensor maps of every variant.
[[nodiscard]] Status prepare_kernels(Layer::Impl& impl);
// Defined in forward.cu: the weight tensor maps of every variant for `weights`, into `impl`
// only when all of them could be encoded.
[[nodiscard]] Status encode_weight_maps(Layer::Impl& impl, const Weights& weights);
// Whether this build records traces (FLASHMOE_ENABLE_TRACE).
[[nodiscard]] bool trace_compiled_in() noexcept;
}  // namespace detail

}  // namespace flashmoe
