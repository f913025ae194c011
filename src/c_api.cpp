// The C API: converts structs, catches every exception, keeps the last message per thread.
#include <exception>
#include <new>
#include <string>

#include "flashmoe/flashmoe.h"
#include "flashmoe/layer.hpp"

struct flashmoe_layer {
  flashmoe::Layer layer;
};

namespace {

thread_local std::string g_last_message;

flashmoe_status remember(const flashmoe::Status& s) {
  g_last_message = s.ok() ? std::string() : s.message();
  return static_cast<flashmoe_status>(s.code());
}

// Runs fn, turning any escaping exception into a status: none may cross into C.
template <class Fn>
flashmoe_status guarded(Fn&& fn) noexcept {
  try {
    return remember(fn());
  } catch (const std::bad_alloc&) {
    g_last_message = "host memory allocation failed";
    return FLASHMOE_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    try {
      g_last_message = e.what();
    } catch (...) {
    }
    return FLASHMOE_STATUS_INTERNAL;
  } catch (...) {
    g_last_message = "unknown exception";
    return FLASHMOE_STATUS_INTERNAL;
  }
}

flashmoe::Status null_argument(const char* name) {
  return {flashmoe::StatusCode::InvalidArgument, std::string(name) + " is a null pointer"};
}

}  // namespace

extern "C" {

void flashmoe_config_init(flashmoe_config* c) {
  if (c == nullptr) return;
  const flashmoe::Config d{};
  *c = flashmoe_config{};
  c->hidden = d.hidden;
  c->intermediate = d.intermediate;
  c->experts = d.experts;
  c->top_k = d.top_k;
  c->dtype = static_cast<flashmoe_dtype>(d.dtype);
  c->activation = static_cast<flashmoe_activation>(d.activation);
  c->scoring = static_cast<flashmoe_scoring>(d.routing.scoring);
  c->renormalize = d.routing.renormalize ? 1 : 0;
  c->n_group = d.routing.n_group;
  c->topk_group = d.routing.topk_group;
  c->routed_scaling_factor = d.routing.routed_scaling_factor;
  c->use_correction_bias = d.routing.use_correction_bias ? 1 : 0;
  c->shared_count = d.shared.count;
  c->shared_intermediate = d.shared.intermediate;
  c->shared_gated = d.shared.gated ? 1 : 0;
  c->max_tokens = d.max_tokens;
}

flashmoe_status flashmoe_layer_create(const flashmoe_config* config,
                                      const flashmoe_weights* weights, flashmoe_layer** out) {
  return guarded([&]() -> flashmoe::Status {
    if (out == nullptr) return null_argument("out");
    if (config == nullptr) return null_argument("config");
    if (weights == nullptr) return null_argument("weights");
    flashmoe::Config c;
    c.hidden = config->hidden;
    c.intermediate = config->intermediate;
    c.experts = config->experts;
    c.top_k = config->top_k;
    c.dtype = static_cast<flashmoe::DType>(config->dtype);
    c.activation = static_cast<flashmoe::Activation>(config->activation);
    c.routing.scoring = static_cast<flashmoe::Scoring>(config->scoring);
    c.routing.renormalize = config->renormalize != 0;
    c.routing.n_group = config->n_group;
    c.routing.topk_group = config->topk_group;
    c.routing.routed_scaling_factor = config->routed_scaling_factor;
    c.routing.use_correction_bias = config->use_correction_bias != 0;
    c.shared.count = config->shared_count;
    c.shared.intermediate = config->shared_intermediate;
    c.shared.gated = config->shared_gated != 0;
    c.max_tokens = config->max_tokens;
    flashmoe::Weights w;
    w.dtype = static_cast<flashmoe::DType>(weights->dtype);
    w.router = weights->router;
    w.w13 = weights->w13;
    w.w2 = weights->w2;
    w.correction_bias = weights->correction_bias;
    w.shared_w13 = weights->shared_w13;
    w.shared_w2 = weights->shared_w2;
    w.shared_gate = weights->shared_gate;
    auto handle = std::make_unique<flashmoe_layer>();
    flashmoe::Status s = flashmoe::Layer::create(c, w, handle->layer);
    if (s.ok()) *out = handle.release();
    return s;
  });
}

void flashmoe_layer_destroy(flashmoe_layer* layer) { delete layer; }

size_t flashmoe_layer_workspace_bytes(const flashmoe_layer* layer) {
  return layer == nullptr ? 0 : layer->layer.workspace_bytes();
}

flashmoe_status flashmoe_forward(flashmoe_layer* layer, const void* x, void* y, int64_t num_tokens,
                                 struct CUstream_st* stream,
                                 const flashmoe_forward_options* options) {
  return guarded([&]() -> flashmoe::Status {
    if (layer == nullptr) return null_argument("layer");
    flashmoe::ForwardOptions o;
    if (options != nullptr) {
      o.topk_ids = options->topk_ids;
      o.topk_weights = options->topk_weights;
      o.out_topk_ids = options->out_topk_ids;
      o.out_topk_weights = options->out_topk_weights;
      o.beta = options->beta;
    }
    return flashmoe::forward(layer->layer, x, y, num_tokens, stream, o);
  });
}

flashmoe_status flashmoe_layer_device_status(flashmoe_layer* layer, struct CUstream_st* stream) {
  return guarded([&]() -> flashmoe::Status {
    if (layer == nullptr) return null_argument("layer");
    return layer->layer.device_status(stream);
  });
}

const char* flashmoe_status_string(flashmoe_status status) {
  return flashmoe::to_string(static_cast<flashmoe::StatusCode>(status));
}

const char* flashmoe_last_error_message(void) { return g_last_message.c_str(); }

const char* flashmoe_version(void) { return flashmoe::version(); }

}  // extern "C"
