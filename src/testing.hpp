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
};

inline void inject_fault(Layer& layer, Fault fault) {
  if (layer.valid()) layer.impl()->fault = static_cast<int>(fault);
}

}  // namespace flashmoe::testing
