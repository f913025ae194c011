// Test-only hooks. Not installed; the tests include it from the source tree.
#pragma once

#include "flashmoe/layer.hpp"
#include "layer_impl.hpp"

namespace flashmoe::testing {

enum class Fault : int {
  None = detail::kFaultNone,
  // One gate/up tile never signals completion: its down tiles wait until the watchdog fires.
  DropMTileSignal = detail::kFaultDropMTileSignal,
  // The first weight stage of one down tile is never requested: its wait runs into the
  // watchdog (sm_90 copy-engine path only).
  StallWeightCopy = detail::kFaultStallWeightCopy,
  // Routing never announces its choice to the decode tiles that start without a tile table (one
  // live token's gate/up tiles, table-free launches): they wait until the watchdog fires.
  DropRoutingSignal = detail::kFaultDropRoutingSignal,
};

inline void inject_fault(Layer& layer, Fault fault) {
  if (layer.valid()) layer.impl()->fault = static_cast<int>(fault);
}

// Moves the decode/prefill switch of `layer`'s forwards: prefill once experts average more than
// rows_per_expert rows (0: the library's rule). For measuring the switch and testing prefill
// tiles that are mostly padding. Ignored by a layer whose max_tokens never reaches prefill under
// the library's rule (its scratch has no room for the prefill kernels).
inline void set_prefill_switch(Layer& layer, int rows_per_expert) {
  if (layer.valid()) layer.impl()->prefill_rows = rows_per_expert < 0 ? 0 : rows_per_expert;
}

// Runs the decode kernel `kernel` (0-3, choose_decode_kernel's order: narrow gate/up with
// narrow, mid and wide down tiles, then wide gate/up with wide down) of whichever m-tile height
// a decode forward of `layer` takes, instead of the rule's (-1). For measuring the rule's tile
// widths against the others and testing each on the same forward.
inline void set_decode_kernel(Layer& layer, int kernel) {
  if (layer.valid()) layer.impl()->decode_kernel = kernel >= 0 && kernel <= 3 ? kernel + 1 : 0;
}

// Runs every decode forward of `layer` on the kernels of one m-tile height (16, 32 or 48 rows;
// any other value: the rule's, tile_choice.hpp). The scratch's m-tile tables hold the 16-row
// count at any T, so every height fits. For measuring the height rules and testing each height
// on the same forward.
inline void set_decode_height(Layer& layer, int rows) {
  if (!layer.valid()) return;
  int variant = 0;  // decode_variant's number + 1
  if (rows == detail::kThinDecodeTileM) variant = 1;
  if (rows == detail::kDecodeTileM) variant = 2;
  if (rows == detail::kTallDecodeTileM) variant = 3;
  layer.impl()->decode_height = variant;
}

// Moves the switch between the warp-specialised prefill kernel's 64- and 128-row m-tiles:
// 128-row ones once experts average at least rows_per_expert rows (0: the library's rule). For
// measuring the switch and testing both shapes on the same forward.
inline void set_ws_tile_switch(Layer& layer, int rows_per_expert) {
  if (layer.valid()) layer.impl()->ws_tall_rows = rows_per_expert < 0 ? 0 : rows_per_expert;
}

// Cuts the down tiles of `layer`'s forwards into `slices` K slices (0: the library's models,
// tile_choice.hpp). Capped at what the scratch's expert-output planes hold for the forward
// (down_slices_allowed for the widest down tile: one slice past kDownSplitMaxPairs pairs), and
// by whole pipeline steps of I (down_split); the trace reports the count used. For measuring
// the models and testing slices where they would not choose them.
inline void set_down_slices(Layer& layer, int slices) {
  if (layer.valid()) layer.impl()->down_slices = slices < 0 ? 0 : slices;
}

// Starts the warp-specialised kernel's down tiles `waves` waves of gate/up tiles into the
// launch (ws_ticket_order.hpp; 0: after every gate/up tile, the library's order), later where
// an expert's m-tiles need it; forwards with caller routing keep the library's order.
inline void set_down_lead(Layer& layer, double waves) {
  if (layer.valid()) layer.impl()->down_lead_waves = waves > 0.0 ? waves : 0.0;
}

// Splits each gather of the warp-specialised kernel (an m-tile's token rows copied into the
// expert-sorted x) into `parts` jobs, capped at kMaxGatherParts (0: the library's rule,
// tile_choice.hpp). For measuring the rule and testing splits where it would not choose them.
inline void set_gather_parts(Layer& layer, int parts) {
  if (layer.valid()) layer.impl()->gather_parts = parts < 0 ? 0 : parts;
}

// Decode forwards of one live token: whether their gate/up tiles start once the token's experts
// are chosen, before the tile table is published (moe_kernel.cuh). For measuring the path
// against the table's and testing both on the same forward.
inline void set_one_token_gateup(Layer& layer, bool on) {
  if (layer.valid()) layer.impl()->one_token_gateup = on;
}

// Decode forwards of 2 to BM live tokens that route themselves: whether their blocks find their
// tiles from the pairs (tile_table.cuh, LiveExperts) instead of a published tile table. For
// measuring the two paths and testing both on the same forward.
inline void set_table_free(Layer& layer, bool on) {
  if (layer.valid()) layer.impl()->table_free = on;
}

// Whether ForwardOptions::programmatic_launch takes effect for this Layer (an sm_90+ device
// running kernels built with the wait; otherwise the launch is an ordinary one).
inline bool has_programmatic_launch(Layer& layer) {
  return layer.valid() && layer.impl()->programmatic_launch;
}

}  // namespace flashmoe::testing
