// The host layer's typed half: kernel preparation, tensor maps, variant choice, grid size and the
// launch, for one element type. Included by forward_bf16.cu and forward_fp16.cu, each of which
// instantiates TypedForward for its type, so that the two types' kernels compile in parallel.
#pragma once

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "device/moe_kernel.cuh"
#include "device/moe_ws_kernel.cuh"
#include "flashmoe/layer.hpp"
#include "forward_typed.hpp"
#include "layer_impl.hpp"
#include "tile_choice.hpp"
#include "trace_layout.hpp"
#include "validate.hpp"
#include "workspace.hpp"
#include "ws_ticket_order.hpp"

namespace flashmoe {
namespace detail {
namespace {

// cuTensorMapEncodeTiled, looked up once through the runtime, so the library needs no link
// dependency on the driver library.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled_fn() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// A row-major [rows, cols] weight matrix read in boxes of kTmaBoxCols columns by box_rows rows,
// 128-byte swizzled (the layout TileMma reads), out-of-range elements as zeros.
template <typename T>
Status encode_weight_map(TensorMapBytes& out, const void* base, std::int64_t rows,
                         std::int64_t cols, int box_rows, const char* what) {
  static_assert(sizeof(CUtensorMap) == sizeof(TensorMapBytes), "opaque copy of a CUtensorMap");
  if (rows > INT32_MAX) {
    // Tiles address box rows with 32-bit coordinates.
    return {StatusCode::NotSupported,
            fmt::format("{} has {} rows; the copy engine path takes at most 2^31 - 1", what, rows)};
  }
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr) {
    return {StatusCode::NotSupported, "the CUDA driver has no cuTensorMapEncodeTiled"};
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(T)};
  const cuuint32_t box[2] = {kTmaBoxCols, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  CUtensorMap map;
  const CUresult r = encode(&map,
                            std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                      : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                            2, const_cast<void*>(base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return {StatusCode::NotSupported,
            fmt::format("cannot describe {} ({} x {}) for the copy engine: CUresult {}", what, rows,
                        cols, static_cast<int>(r))};
  }
  std::memcpy(out.bytes, &map, sizeof map);
  return {};
}

// The weight tensor maps of one kernel's tile shapes, for `weights`.
template <typename T>
Status encode_weight_maps_rows(const Config& c, const Weights& weights, int w13_box_rows,
                               int w2_box_rows, KernelVariantInfo& info) {
  if (Status s = encode_weight_map<T>(info.w13_map, weights.w13,
                                      static_cast<std::int64_t>(c.experts) * 2 * c.intermediate,
                                      c.hidden, w13_box_rows, "w13");
      !s.ok()) {
    return s;
  }
  return encode_weight_map<T>(info.w2_map, weights.w2,
                              static_cast<std::int64_t>(c.experts) * c.hidden, c.intermediate,
                              w2_box_rows, "w2");
}

template <class GateUp, class Down, typename T>
Status encode_variant_maps(const Config& c, const Weights& weights, KernelVariantInfo& info) {
  return encode_weight_maps_rows<T>(c, weights, GateUp::BN, Down::BN, info);
}

// Shared memory of a warp-specialised kernel: its ring, or what its routing needs (the router
// tiles and the tile-table build of the prefill kernel), whichever is larger.
template <class W>
constexpr int ws_smem_bytes() {
  return cmax(cmax(W::RING_BYTES, WsRouterTile::SMEM_BYTES), static_cast<int>(sizeof(ScanSmem))) +
         kSmemAlign;
}

// Sets a kernel's shared-memory limit and reads how many of its blocks an SM holds.
template <class Params>
Status prepare_kernel(void (*kernel)(Params), int threads, int smem_bytes, int sm_count,
                      int& blocks_per_sm) {
  if (cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
      err != cudaSuccess) {
    (void)cudaGetLastError();
    return {StatusCode::NotSupported,
            fmt::format("the kernel needs {} bytes of shared memory per block: {}", smem_bytes,
                        cudaGetErrorString(err))};
  }
  if (cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel,
                                                                      threads, smem_bytes);
      err != cudaSuccess) {
    (void)cudaGetLastError();
    return {StatusCode::NotSupported,
            fmt::format("occupancy query failed ({}): is this build compiled for the device?",
                        cudaGetErrorString(err))};
  }
  if (blocks_per_sm < 1 || sm_count < 1) {
    return {StatusCode::NotSupported, "the kernel cannot be resident on this device"};
  }
  return {};
}

// A kernel's launch facts, for its untraced instantiation and its traced one (null where tracing
// is not compiled in).
template <class Params>
Status prepare_launch(void (*untraced)(Params), void (*traced)(Params), int threads, int smem_bytes,
                      int sm_count, KernelVariantInfo& info) {
  info.smem_bytes = smem_bytes;
  info.traced_blocks_per_sm = 0;
  Status s = prepare_kernel(untraced, threads, smem_bytes, sm_count, info.blocks_per_sm);
  if (s.ok() && traced != nullptr) {
    s = prepare_kernel(traced, threads, smem_bytes, sm_count, info.traced_blocks_per_sm);
  }
  return s;
}

// The instantiation of a kernel that a forward runs: the traced one only while a trace buffer is
// set, so that untraced forwards carry no tracer state.
template <class Cfg, class GateUp, class Down, typename T>
auto moe_kernel_for(bool traced) -> void (*)(KernelParams<T>) {
  if constexpr (kTraceCompiled) {
    if (traced) return moe_kernel<Cfg, GateUp, Down, T, true>;
  }
  return moe_kernel<Cfg, GateUp, Down, T, false>;
}

template <class W, typename T>
auto moe_ws_kernel_for(bool traced) -> void (*)(WsKernelParams<T>) {
  if constexpr (kTraceCompiled) {
    if (traced) return moe_ws_kernel<W, T, true>;
  }
  return moe_ws_kernel<W, T, false>;
}

// The warp-specialised kernels' launch facts and weight maps (sm_90a builds on sm_90 only: the
// caller checks).
template <class W, typename T>
Status prepare_ws_variant(const Layer::Impl& impl, KernelVariantInfo& info) {
  if (Status s = prepare_launch(moe_ws_kernel_for<W, T>(false),
                                kTraceCompiled ? moe_ws_kernel_for<W, T>(true) : nullptr,
                                W::kThreads, ws_smem_bytes<W>(), impl.sm_count, info);
      !s.ok()) {
    return s;
  }
  return encode_weight_maps_rows<T>(impl.config, impl.weights, W::kGateBoxRows, W::kDownBoxRows,
                                    info);
}

// Whether the device code loaded for the current device sets `flag` (a __device__ int).
bool device_code_has(const int& flag) {
  int compiled = 0;
  if (cudaMemcpyFromSymbol(&compiled, flag, sizeof compiled) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return compiled != 0;
}

template <class Cfg, class GateUp, class Down, typename T>
Status prepare_variant(const Layer::Impl& impl, KernelVariantInfo& info) {
  return prepare_launch(moe_kernel_for<Cfg, GateUp, Down, T>(false),
                        kTraceCompiled ? moe_kernel_for<Cfg, GateUp, Down, T>(true) : nullptr,
                        kThreads, Cfg::template smem_bytes<GateUp, Down>(), impl.sm_count, info);
}

// Where decode variant D's kernels sit in Layer::Impl::decode: the number decode_variant gives
// its m-tile height. Preparing and launching both go through it, so they cannot disagree.
template <class D>
constexpr int decode_slot() {
  static_assert(D::BM == kThinDecodeTileM || D::BM == kDecodeTileM || D::BM == kTallDecodeTileM,
                "one of decode_variant's heights");
  return D::BM == kThinDecodeTileM ? 0 : D::BM == kDecodeTileM ? 1 : 2;
}

// Visits the four kernels of decode variant D, in the order of choose_decode_kernel:
// fn.template operator()<Cfg, GateUp, Down>(info).
template <class D, class Fn>
Status for_each_decode_kernel(KernelVariantInfo (&infos)[4], Fn& fn) {
  Status s = fn.template operator()<D, typename D::GateUp, typename D::Down0>(infos[0]);
  if (s.ok()) s = fn.template operator()<D, typename D::GateUp, typename D::Down1>(infos[1]);
  if (s.ok()) s = fn.template operator()<D, typename D::GateUp, typename D::Down2>(infos[2]);
  if (s.ok()) s = fn.template operator()<D, typename D::GateUpWide, typename D::Down2>(infos[3]);
  return s;
}

// Visits every kernel of a layer with its KernelVariantInfo in `decode` / `prefill`.
template <class Fn>
Status for_each_kernel(KernelVariantInfo (&decode)[3][4], KernelVariantInfo& prefill, Fn&& fn) {
  Status s = for_each_decode_kernel<DecodeConfig>(decode[decode_slot<DecodeConfig>()], fn);
  if (s.ok()) {
    s = for_each_decode_kernel<ThinDecodeConfig>(decode[decode_slot<ThinDecodeConfig>()], fn);
  }
  if (s.ok()) {
    s = for_each_decode_kernel<TallDecodeConfig>(decode[decode_slot<TallDecodeConfig>()], fn);
  }
  using P = PrefillConfig;
  static_assert(P::single_shape, "the prefill variant has one shape per phase");
  if (s.ok()) s = fn.template operator()<P, P::GateUp, P::Down0>(prefill);
  return s;
}

template <typename T>
struct PrepareKernel {
  const Layer::Impl& impl;
  template <class Cfg, class GateUp, class Down>
  Status operator()(KernelVariantInfo& info) const {
    return prepare_variant<Cfg, GateUp, Down, T>(impl, info);
  }
};

template <typename T>
struct EncodeKernelMaps {
  const Config& config;
  const Weights& weights;
  template <class Cfg, class GateUp, class Down>
  Status operator()(KernelVariantInfo& info) const {
    return encode_variant_maps<GateUp, Down, T>(config, weights, info);
  }
};

template <typename T>
Status encode_typed_maps(Layer::Impl& impl, const Weights& weights) {
  // Into copies first: on error the layer keeps the maps of its current weights.
  KernelVariantInfo decode[3][4];
  KernelVariantInfo prefill;
  if (Status s = for_each_kernel(decode, prefill, EncodeKernelMaps<T>{impl.config, weights});
      !s.ok()) {
    return s;
  }
  for (int h = 0; h < 3; ++h) {
    for (int k = 0; k < 4; ++k) {
      impl.decode[h][k].w13_map = decode[h][k].w13_map;
      impl.decode[h][k].w2_map = decode[h][k].w2_map;
    }
  }
  KernelVariantInfo ws[2];
  if (impl.ws_engine) {
    if (Status s = encode_weight_maps_rows<T>(impl.config, weights, WsShape<64>::kGateBoxRows,
                                              WsShape<64>::kDownBoxRows, ws[0]);
        !s.ok()) {
      return s;
    }
    if (Status s = encode_weight_maps_rows<T>(impl.config, weights, WsShape<128>::kGateBoxRows,
                                              WsShape<128>::kDownBoxRows, ws[1]);
        !s.ok()) {
      return s;
    }
  }
  impl.prefill.w13_map = prefill.w13_map;
  impl.prefill.w2_map = prefill.w2_map;
  for (int i = 0; i < 2 && impl.ws_engine; ++i) {
    impl.ws[i].w13_map = ws[i].w13_map;
    impl.ws[i].w2_map = ws[i].w2_map;
  }
  return {};
}

template <typename T>
Status prepare_typed(Layer::Impl& impl) {
  Status s = for_each_kernel(impl.decode, impl.prefill, PrepareKernel<T>{impl});
  if (s.ok()) s = encode_typed_maps<T>(impl, impl.weights);
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, impl.device) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    major = 0;  // neither the engine nor programmatic launches
  }
  if (s.ok() && impl.scratch_layout.has_x_sorted && major == 9 &&
      device_code_has(kWsEngineCompiled)) {
    // Without it (not resident, say) forwards keep the prefill kernel.
    Status ws = prepare_ws_variant<WsShape<64>, T>(impl, impl.ws[0]);
    if (ws.ok()) ws = prepare_ws_variant<WsShape<128>, T>(impl, impl.ws[1]);
    impl.ws_engine = ws.ok();
  }
  // Programmatic launches only where the loaded kernels wait for the previous grid.
  impl.programmatic_launch = s.ok() && major >= 9 && device_code_has(kGridDependencyCompiled);
  const Config& c = impl.config;
  impl.thin_max_tokens =
      thin_decode_max_tokens(c.max_tokens, c.top_k, c.experts, c.hidden, c.intermediate);
  impl.tall_min_tokens = tall_decode_min_tokens(c.max_tokens, c.top_k, c.experts);
  return s;
}

// The parameters every kernel shares, but for the router and down splits.
template <typename T>
void fill_params(const Layer::Impl& impl, const KernelVariantInfo& info, const void* x, void* y,
                 std::int64_t num_tokens, const LaunchOptions& o, KernelParams<T>& p) {
  std::memcpy(&p.w13_map, info.w13_map.bytes, sizeof p.w13_map);
  std::memcpy(&p.w2_map, info.w2_map.bytes, sizeof p.w2_map);
  const Config& c = impl.config;
  const StateLayout& SL = impl.state_layout;
  const ScratchLayout& L = impl.scratch_layout;
  auto* state = static_cast<unsigned char*>(impl.state);
  auto* base = static_cast<unsigned char*>(impl.scratch);
  auto at = [base](std::size_t offset) { return static_cast<void*>(base + offset); };
  p.x = static_cast<const T*>(x);
  p.y = static_cast<T*>(y);
  p.router = static_cast<const T*>(impl.weights.router);
  p.w13 = static_cast<const T*>(impl.weights.w13);
  p.w2 = static_cast<const T*>(impl.weights.w2);
  p.correction_bias = c.routing.use_correction_bias ? impl.weights.correction_bias : nullptr;
  p.user_ids = o.topk_ids;
  p.user_weights = o.topk_weights;
  p.out_ids = o.out_topk_ids;
  p.out_weights = o.out_topk_weights;
  p.beta = o.beta;
  p.live_tokens = o.device_num_tokens;
  p.live_offset = o.live_offset;
  p.num_tokens = static_cast<int>(num_tokens);
  p.hidden = c.hidden;
  p.inter = c.intermediate;
  p.experts = c.experts;
  p.top_k = c.top_k;
  p.activation = static_cast<int>(c.activation);
  p.scoring = static_cast<int>(c.routing.scoring);
  p.renormalize = c.routing.renormalize;
  p.scaling = c.routing.routed_scaling_factor;
  p.ctl.words = reinterpret_cast<std::uint32_t*>(state + SL.control);
  p.ctl.status_word = o.device_status;
  p.expert_count = reinterpret_cast<std::uint32_t*>(state + SL.expert_count);
  p.router_done = reinterpret_cast<std::uint32_t*>(state + SL.router_done);
  p.owner = static_cast<unsigned long long*>(at(L.owner));
  p.logits = static_cast<float*>(at(L.logits));
  p.pair_expert = static_cast<std::int32_t*>(at(L.pair_expert));
  p.pair_weight = static_cast<float*>(at(L.pair_weight));
  p.pair_pos = static_cast<std::uint32_t*>(at(L.pair_pos));
  p.sorted_pair = static_cast<std::int32_t*>(at(L.sorted_pair));
  p.expert_row0 = static_cast<std::uint32_t*>(at(L.expert_row0));
  p.mtile_info = static_cast<uint4*>(at(L.mtile_info));
  p.mtile_done = static_cast<std::uint32_t*>(at(L.mtile_done));
  p.combine_done = static_cast<std::uint32_t*>(at(L.combine_done));
  p.h = static_cast<T*>(at(L.h));
  p.ypart = static_cast<T*>(at(L.ypart));
  p.combine_stride = L.max_down_ntiles;
  p.timeout_ns = static_cast<std::uint64_t>(impl.options.watchdog_ms) * 1000000ull;
  p.fault = impl.fault;
  p.one_token_gateup = impl.one_token_gateup;
  p.table_free = impl.table_free;
  if (impl.trace_buffer != nullptr) {
    auto* tb = static_cast<unsigned char*>(impl.trace_buffer);
    p.trace.blocks = reinterpret_cast<RawTraceBlock*>(tb);
    p.trace.events =
        reinterpret_cast<RawTraceEvent*>(tb + trace_events_offset(impl.trace_max_grid));
    p.trace.capacity = static_cast<std::uint32_t>(impl.trace_capacity);
  }
}

// K slices of a launch's down tiles (tile_m x down_n tiles, steps of down_k columns), where a few
// long ones would leave blocks idle (tile_choice.hpp), judged on the full grid so that
// max_blocks does not change results. `forced` > 0: that many, as far as the scratch allows
// (its planes are sized for the widest tile, so a narrow tile may take more slices than the
// models would give it; testing.hpp). `engine`: the warp-specialised engine's model (its
// gate/up tiles all go first).
DownSplit launch_down_split(const Config& c, std::int64_t num_tokens, int tile_m, int down_n,
                            int down_k, std::int64_t full_grid, int forced, bool engine) {
  const std::int64_t pairs = num_tokens * c.top_k;
  int slices = down_slices_allowed(pairs, c.intermediate, down_n);
  if (forced > 0) {
    slices = std::min(down_slices_allowed(pairs, c.intermediate, kMaxDownTileN), forced);
  } else if (slices > 1) {
    const double down_tiles = expected_mtiles(num_tokens, c.top_k, c.experts, tile_m) *
                              ((c.hidden + down_n - 1) / down_n);
    slices =
        engine ? choose_engine_down_slices(
                     down_tiles, static_cast<double>(c.hidden) / c.intermediate, full_grid, slices)
               : choose_down_slices(down_tiles, full_grid, slices);
  }
  return down_split(c.intermediate, down_k, slices);
}

// The K-slice planes of a launch must fit the scratch's ypart (planned with the widest down tile,
// kMaxDownTileN). A launch that would not is refused instead of writing past the region.
Status check_ypart_fits(const Layer::Impl& impl, const DownSplit& d, std::int64_t num_tokens) {
  const std::int64_t rows = d.kslices * num_tokens * impl.config.top_k;
  if (rows > impl.scratch_layout.ypart_rows) {
    return {StatusCode::Internal,
            fmt::format("{} K slices of {} tokens need {} expert-output rows; the scratch holds {} "
                        "(a planning bug: please report it)",
                        d.kslices, num_tokens, rows, impl.scratch_layout.ypart_rows)};
  }
  return {};
}

// The launch's grid: every block the device holds, or fewer (max_blocks, tracing, no more than
// tickets). Records the traced launch's shape.
// The traced facts of a launch besides its parameters.
struct TracedShape {
  int tile_m, gateup_n, down_n;  // m-tile height, gate/up and down tile widths
  int router_m, router_n;        // tokens and experts of one router task
  const char* variant;
  int gather_parts = 0;  // gather jobs an m-tile (the warp-specialised kernel's; else none)
};

// A launch with programmatic dependent launch (ForwardOptions::programmatic_launch): the kernel
// waits for the previous one itself (wait_for_prior_grids, sync.cuh).
template <typename Params>
Status launch_programmatic(void (*kernel)(Params), std::int64_t grid, int threads, int smem_bytes,
                           cudaStream_t stream, const Params& p) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<std::size_t>(smem_bytes);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  if (cudaError_t err = cudaLaunchKernelEx(&config, kernel, p); err != cudaSuccess) {
    (void)cudaGetLastError();  // not left for the caller's next check
    return cuda_status(err, "launching the MoE kernel (programmatic dependent launch)");
  }
  return {};
}

// The blocks the device holds of the instantiation that a forward runs (moe_kernel_for). Plans
// use the untraced kernel's full grid either way, so that tracing does not change results.
std::int64_t resident_grid(const Layer::Impl& impl, const KernelVariantInfo& info) {
  const int per_sm = impl.trace_buffer != nullptr ? info.traced_blocks_per_sm : info.blocks_per_sm;
  return static_cast<std::int64_t>(per_sm) * impl.sm_count;
}

template <typename T>
std::int64_t launch_grid(Layer::Impl& impl, const KernelParams<T>& p, std::int64_t resident,
                         std::int64_t tickets, const TracedShape& shape) {
  std::int64_t grid = resident;
  if (impl.options.max_blocks > 0) grid = std::min<std::int64_t>(grid, impl.options.max_blocks);
  grid = std::max<std::int64_t>(1, std::min(grid, tickets));
  if (impl.trace_buffer != nullptr) {
    grid = std::min<std::int64_t>(grid, impl.trace_max_grid);
    const bool routed = p.user_ids == nullptr;
    impl.last_trace = {true,
                       static_cast<int>(grid),
                       p.num_tokens,
                       shape.tile_m,
                       shape.gateup_n,
                       shape.down_n,
                       routed ? p.rsplit.router_tasks() : 0,
                       routed ? p.rsplit.kslices : 0,
                       routed ? shape.router_m : 0,
                       routed ? shape.router_n : 0,
                       p.dsplit.kslices,
                       shape.gather_parts,
                       shape.variant};
  }
  // A non-sticky error the caller left pending would otherwise come back from the check after
  // the launch as if it had failed. (A sticky one fails the launch itself, and is reported.)
  (void)cudaGetLastError();
  return grid;
}

template <class Cfg, class GateUp, class Down, typename T>
Status launch(Layer::Impl& impl, const KernelVariantInfo& info, const void* x, void* y,
              std::int64_t num_tokens, cudaStream_t stream, const LaunchOptions& o) {
  const Config& c = impl.config;
  KernelParams<T> p{};
  fill_params(impl, info, x, y, num_tokens, o, p);
  p.rsplit = router_split(num_tokens, c.hidden, c.experts, o.topk_ids != nullptr, Cfg::tile_router,
                          Cfg::BM, Down::BN, Down::BK);
  // Every block the device holds; max_blocks may launch fewer.
  const std::int64_t full_grid = static_cast<std::int64_t>(info.blocks_per_sm) * impl.sm_count;
  p.dsplit = launch_down_split(c, num_tokens, Cfg::BM, Down::BN, Down::BK, full_grid,
                               impl.down_slices, false);
  if (Status s = check_ypart_fits(impl, p.dsplit, num_tokens); !s.ok()) return s;

  // More blocks than tickets would only spin and leave.
  const std::int64_t mtiles = mtile_bound(num_tokens * c.top_k, c.experts, Cfg::BM);
  const std::int64_t tiles = mtiles * ((c.intermediate + GateUp::BN - 1) / GateUp::BN +
                                       (c.hidden + Down::BN - 1) / Down::BN * p.dsplit.kslices);
  constexpr bool decode = !std::is_same_v<Cfg, PrefillConfig>;
  const std::int64_t grid =
      launch_grid(impl, p, resident_grid(impl, info), p.rsplit.tasks() + tiles,
                  {Cfg::BM, GateUp::BN, Down::BN, p.rsplit.chunk_tokens,
                   Cfg::tile_router ? Down::BN : kRouterExperts, decode ? "decode" : "prefill"});
  auto* kernel = moe_kernel_for<Cfg, GateUp, Down, T>(impl.trace_buffer != nullptr);
  if (o.programmatic_launch && impl.programmatic_launch) {
    return launch_programmatic(kernel, grid, kThreads, info.smem_bytes, stream, p);
  }
  kernel<<<static_cast<unsigned>(grid), kThreads, info.smem_bytes, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return cuda_status(err, "launching the MoE kernel");
  }
  return {};
}

// A [rows, cols] bf16/fp16 region of the scratch for the copy engine, in boxes of box_rows rows.
template <typename T>
Status encode_scratch_map(CUtensorMap& map, const void* base, std::int64_t rows, int cols,
                          int box_rows, const char* what) {
  TensorMapBytes bytes;
  if (Status s = encode_weight_map<T>(bytes, base, rows, cols, box_rows, what); !s.ok()) return s;
  std::memcpy(&map, bytes.bytes, sizeof map);
  return {};
}

// A prefill forward on the warp-specialised kernel of m-tile height W::BM (sm_90a).
template <class W, typename T>
Status launch_ws(Layer::Impl& impl, const KernelVariantInfo& info, const void* x, void* y,
                 std::int64_t num_tokens, cudaStream_t stream, const LaunchOptions& o) {
  const Config& c = impl.config;
  WsKernelParams<T> p{};
  fill_params(impl, info, x, y, num_tokens, o, p);
  p.x_sorted = static_cast<T*>(
      static_cast<void*>(static_cast<unsigned char*>(impl.scratch) + impl.scratch_layout.x_sorted));
  p.sorted_weight = reinterpret_cast<float*>(static_cast<unsigned char*>(impl.scratch) +
                                             impl.scratch_layout.sorted_weight);
  const std::int64_t pairs = num_tokens * c.top_k;
  if (Status s =
          encode_scratch_map<T>(p.xs_map, p.x_sorted, pairs, c.hidden, W::kABoxRows, "x_sorted");
      !s.ok()) {
    return s;
  }
  if (Status s = encode_scratch_map<T>(p.h_map, p.h, pairs, c.intermediate, W::kABoxRows, "h");
      !s.ok()) {
    return s;
  }
  p.rsplit = router_split(num_tokens, c.hidden, c.experts, o.topk_ids != nullptr, true,
                          WsRouterTile::BM, WsRouterTile::BN, WsRouterTile::BK);
  const std::int64_t full_grid = static_cast<std::int64_t>(info.blocks_per_sm) * impl.sm_count;
  p.dsplit =
      launch_down_split(c, num_tokens, W::BM, W::BN, W::BK, full_grid, impl.down_slices, true);
  if (Status s = check_ypart_fits(impl, p.dsplit, num_tokens); !s.ok()) return s;
  const std::int64_t mtiles = mtile_bound(pairs, c.experts, W::BM);
  const int ng = (c.intermediate + W::kGateUpCols - 1) / W::kGateUpCols;
  p.down_lead =
      ws_down_lead(impl.down_lead_waves, full_grid, ng, num_tokens, W::BM, o.topk_ids != nullptr);
  p.gather_parts = static_cast<std::uint32_t>(
      impl.gather_parts > 0
          ? std::min(impl.gather_parts, kMaxGatherParts)
          : choose_gather_parts(expected_mtiles(num_tokens, c.top_k, c.experts, W::BM), full_grid,
                                c.hidden));
  const std::int64_t tiles =
      mtiles * (p.gather_parts + ng + (c.hidden + W::BN - 1) / W::BN * p.dsplit.kslices);
  const std::int64_t grid =
      launch_grid(impl, p, resident_grid(impl, info), p.rsplit.tasks() + tiles,
                  {W::BM, W::kGateUpCols, W::BN, p.rsplit.chunk_tokens, WsRouterTile::BN,
                   "prefill_ws", static_cast<int>(p.gather_parts)});
  auto* kernel = moe_ws_kernel_for<W, T>(impl.trace_buffer != nullptr);
  if (o.programmatic_launch && impl.programmatic_launch) {
    return launch_programmatic(kernel, grid, W::kThreads, info.smem_bytes, stream, p);
  }
  kernel<<<static_cast<unsigned>(grid), W::kThreads, info.smem_bytes, stream>>>(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
    return cuda_status(err, "launching the MoE kernel");
  }
  return {};
}

// Rows per expert (on average) from which the warp-specialised kernel runs 128-row m-tiles:
// with half tiles for their last rows they win from 64 rows an expert on, and lose at 48
// (bench/NOTES.md, row 78).
inline constexpr std::int64_t kWsTallRows = 56;

// A prefill forward: the warp-specialised kernel where the device has it, else the prefill
// kernel.
template <typename T>
Status launch_prefill(Layer::Impl& impl, const void* x, void* y, std::int64_t num_tokens,
                      cudaStream_t stream, const LaunchOptions& o) {
  const Config& c = impl.config;
  if (impl.ws_engine) {
    const std::int64_t tall_rows = impl.ws_tall_rows > 0 ? impl.ws_tall_rows : kWsTallRows;
    if (num_tokens * c.top_k >= tall_rows * c.experts) {
      return launch_ws<WsShape<128>, T>(impl, impl.ws[1], x, y, num_tokens, stream, o);
    }
    return launch_ws<WsShape<64>, T>(impl, impl.ws[0], x, y, num_tokens, stream, o);
  }
  return launch<PrefillConfig, PrefillGateUp, PrefillConfig::Down0, T>(impl, impl.prefill, x, y,
                                                                       num_tokens, stream, o);
}

// The decode kernel of a forward among the four of variant D (tile_choice.hpp has the rule).
template <class D>
int decode_kernel_for(const Layer::Impl& impl, const KernelVariantInfo (&infos)[4],
                      std::int64_t num_tokens) {
  if (impl.decode_kernel > 0) return impl.decode_kernel - 1;  // testing::set_decode_kernel
  const Config& c = impl.config;
  const std::int64_t slots = static_cast<std::int64_t>(infos[3].blocks_per_sm) * impl.sm_count;
  return choose_decode_kernel(num_tokens, c.hidden, c.intermediate, c.experts, c.top_k, slots,
                              {D::BM, D::GateUpWide::BN, D::Down1::BN, D::Down2::BN});
}

template <class D, typename T>
Status launch_decode_variant(Layer::Impl& impl, const void* x, void* y, std::int64_t num_tokens,
                             cudaStream_t stream, const LaunchOptions& o) {
  using G = typename D::GateUp;
  const KernelVariantInfo(&infos)[4] = impl.decode[decode_slot<D>()];
  switch (decode_kernel_for<D>(impl, infos, num_tokens)) {
    case 0:
      return launch<D, G, typename D::Down0, T>(impl, infos[0], x, y, num_tokens, stream, o);
    case 1:
      return launch<D, G, typename D::Down1, T>(impl, infos[1], x, y, num_tokens, stream, o);
    case 2:
      return launch<D, G, typename D::Down2, T>(impl, infos[2], x, y, num_tokens, stream, o);
    default:
      return launch<D, typename D::GateUpWide, typename D::Down2, T>(impl, infos[3], x, y,
                                                                     num_tokens, stream, o);
  }
}

// A decode forward: the variant by m-tile height, then its kernel by tile widths.
template <typename T>
Status launch_decode(Layer::Impl& impl, const void* x, void* y, std::int64_t num_tokens,
                     cudaStream_t stream, const LaunchOptions& o) {
  static_assert(decode_slot<ThinDecodeConfig>() == 0 && decode_slot<DecodeConfig>() == 1 &&
                    decode_slot<TallDecodeConfig>() == 2,
                "the cases below follow decode_variant");
  // testing::set_decode_height, or the rule.
  const int variant = impl.decode_height > 0
                          ? impl.decode_height - 1
                          : decode_variant(num_tokens, impl.thin_max_tokens, impl.tall_min_tokens);
  switch (variant) {
    case 0:
      return launch_decode_variant<ThinDecodeConfig, T>(impl, x, y, num_tokens, stream, o);
    case 2:
      return launch_decode_variant<TallDecodeConfig, T>(impl, x, y, num_tokens, stream, o);
    default:
      return launch_decode_variant<DecodeConfig, T>(impl, x, y, num_tokens, stream, o);
  }
}

}  // namespace

template <typename T>
Status TypedForward<T>::prepare(Layer::Impl& impl) {
  return prepare_typed<T>(impl);
}

template <typename T>
Status TypedForward<T>::encode_maps(Layer::Impl& impl, const Weights& weights) {
  return encode_typed_maps<T>(impl, weights);
}

template <typename T>
Status TypedForward<T>::launch(Layer::Impl& impl, const void* x, void* y, std::int64_t rows,
                               cudaStream_t stream, const LaunchOptions& o, bool decode) {
  return decode ? launch_decode<T>(impl, x, y, rows, stream, o)
                : launch_prefill<T>(impl, x, y, rows, stream, o);
}

}  // namespace detail
}  // namespace flashmoe
