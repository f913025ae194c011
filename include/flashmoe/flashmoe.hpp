// FlashMoE: one Mixture-of-Experts layer forward in one persistent CUDA kernel.
#pragma once

#include "flashmoe/config.hpp"     // IWYU pragma: export
#include "flashmoe/layer.hpp"      // IWYU pragma: export
#include "flashmoe/reference.hpp"  // IWYU pragma: export
#include "flashmoe/status.hpp"     // IWYU pragma: export
#include "flashmoe/trace.hpp"      // IWYU pragma: export
