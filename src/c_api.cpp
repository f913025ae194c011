// The C API: converts structs, catches every exception, keeps the last message per thread.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "flashmoe/flashmoe.h"
#include "flashmoe/layer.hpp"
#include "flashmoe/trace.hpp"

struct flashmoe_layer {
  flashmoe::Layer layer;
};

namespace {

using flashmoe::Status;
using flashmoe::StatusCode;

thread_local std::string g_last_message;

flashmoe_status remember(const Status& s) {
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

Status null_argument(const char* name) {
  return {StatusCode::InvalidArgument, std::string(name) + " is a null pointer"};
}

// Versioned structs (see flashmoe.h): a member exists in the caller's struct when it lies wholly
// within struct_size. Only the address of the member is formed, nothing past it is read.
template <class S, class M>
std::size_t end_of(const S& s, M S::*member) noexcept {
  const auto* base = reinterpret_cast<const unsigned char*>(&s);
  const auto* at = reinterpret_cast<const unsigned char*>(&(s.*member));
  return static_cast<std::size_t>(at - base) + sizeof(M);
}
template <class S, class M>
bool has(const S& s, M S::*member) noexcept {
  return end_of(s, member) <= s.struct_size;
}

// `last_v1` is the last member of the struct's first version: below it the caller's struct
// cannot be one the library knows, most likely one never initialised.
template <class S, class M>
Status check_struct_size(const S& s, M S::*last_v1, const char* name, const char* init) {
  if (s.struct_size == 0) {
    return {StatusCode::InvalidArgument,
            fmt::format("{}->struct_size = 0: call {} first", name, init)};
  }
  if (!has(s, last_v1)) {
    return {StatusCode::InvalidArgument,
            fmt::format("{}->struct_size = {} is below the {} bytes of its first version: call {} "
                        "first",
                        name, s.struct_size, end_of(s, last_v1), init)};
  }
  return {};
}

// The _init_sized functions: the defaults of a full struct, copied into the caller's `size`
// bytes (zero past what this library knows: future members default to zero).
template <class S>
void init_sized(S* out, std::size_t size, S defaults) noexcept {
  if (out == nullptr) return;
  auto* bytes = reinterpret_cast<unsigned char*>(out);
  std::memset(bytes, 0, size);
  std::memcpy(bytes, &defaults, std::min(size, sizeof(S)));
  if (size >= sizeof(defaults.struct_size)) out->struct_size = static_cast<std::uint32_t>(size);
}

Status to_cpp(const flashmoe_config* config, flashmoe::Config& c) {
  if (config == nullptr) return null_argument("config");
  if (Status s = check_struct_size(*config, &flashmoe_config::max_tokens, "config",
                                   "flashmoe_config_init");
      !s.ok()) {
    return s;
  }
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
  return {};
}

Status to_cpp(const flashmoe_weights* weights, flashmoe::Weights& w) {
  if (weights == nullptr) return null_argument("weights");
  w.dtype = static_cast<flashmoe::DType>(weights->dtype);
  w.router = weights->router;
  w.w13 = weights->w13;
  w.w2 = weights->w2;
  w.correction_bias = weights->correction_bias;
  w.shared_w13 = weights->shared_w13;
  w.shared_w2 = weights->shared_w2;
  w.shared_gate = weights->shared_gate;
  return {};
}

// NULL options mean the defaults.
Status to_cpp(const flashmoe_layer_options* options, flashmoe::LayerOptions& o) {
  if (options == nullptr) return {};
  if (Status s = check_struct_size(*options, &flashmoe_layer_options::watchdog_ms, "options",
                                   "flashmoe_layer_options_init");
      !s.ok()) {
    return s;
  }
  o.max_blocks = options->max_blocks;
  o.watchdog_ms = options->watchdog_ms;
  if (has(*options, &flashmoe_layer_options::scratch)) o.scratch = options->scratch;
  if (has(*options, &flashmoe_layer_options::scratch_bytes)) {
    o.scratch_bytes = options->scratch_bytes;
  }
  if (has(*options, &flashmoe_layer_options::tokens_per_launch)) {
    o.tokens_per_launch = options->tokens_per_launch;
  }
  return {};
}

Status to_cpp(const flashmoe_forward_options* options, flashmoe::ForwardOptions& o) {
  if (options == nullptr) return {};
  if (Status s = check_struct_size(*options, &flashmoe_forward_options::beta, "options",
                                   "flashmoe_forward_options_init");
      !s.ok()) {
    return s;
  }
  o.topk_ids = options->topk_ids;
  o.topk_weights = options->topk_weights;
  o.out_topk_ids = options->out_topk_ids;
  o.out_topk_weights = options->out_topk_weights;
  o.beta = options->beta;
  if (has(*options, &flashmoe_forward_options::device_num_tokens)) {
    o.device_num_tokens = options->device_num_tokens;
  }
  if (has(*options, &flashmoe_forward_options::device_status)) {
    o.device_status = options->device_status;
  }
  if (has(*options, &flashmoe_forward_options::programmatic_launch)) {
    o.programmatic_launch = options->programmatic_launch != 0;
  }
  return {};
}

// The byte queries: 0 for anything invalid, and no message (they return no status).
template <class Fn>
std::size_t config_bytes(const flashmoe_config* config, Fn&& bytes) noexcept {
  try {
    flashmoe::Config c;
    if (!to_cpp(config, c).ok()) return 0;
    return bytes(c);
  } catch (...) {
    return 0;
  }
}

const char* reason(int err) { return err != 0 ? std::strerror(err) : "unknown error"; }

// Writes text to path; the error names the path and the reason.
Status write_file(const char* path, const std::string& text, const char* what) {
  errno = 0;
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr) {
    return {StatusCode::InvalidArgument,
            fmt::format("cannot open {} file '{}': {}", what, path, reason(errno))};
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int write_errno = errno;
  // fclose flushes: a full disk may show only here.
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed) {
    return {StatusCode::InvalidArgument, fmt::format("cannot write {} file '{}': {}", what, path,
                                                     reason(written ? errno : write_errno))};
  }
  return {};
}

}  // namespace

extern "C" {

void flashmoe_config_init_sized(flashmoe_config* config, size_t size) {
  const flashmoe::Config d{};
  flashmoe_config c{};
  c.hidden = d.hidden;
  c.intermediate = d.intermediate;
  c.experts = d.experts;
  c.top_k = d.top_k;
  c.dtype = static_cast<flashmoe_dtype>(d.dtype);
  c.activation = static_cast<flashmoe_activation>(d.activation);
  c.scoring = static_cast<flashmoe_scoring>(d.routing.scoring);
  c.renormalize = d.routing.renormalize ? 1 : 0;
  c.n_group = d.routing.n_group;
  c.topk_group = d.routing.topk_group;
  c.routed_scaling_factor = d.routing.routed_scaling_factor;
  c.use_correction_bias = d.routing.use_correction_bias ? 1 : 0;
  c.shared_count = d.shared.count;
  c.shared_intermediate = d.shared.intermediate;
  c.shared_gated = d.shared.gated ? 1 : 0;
  c.max_tokens = d.max_tokens;
  init_sized(config, size, c);
}

void flashmoe_layer_options_init_sized(flashmoe_layer_options* options, size_t size) {
  const flashmoe::LayerOptions d{};
  flashmoe_layer_options o{};
  o.max_blocks = d.max_blocks;
  o.watchdog_ms = d.watchdog_ms;
  o.scratch = d.scratch;
  o.scratch_bytes = d.scratch_bytes;
  o.tokens_per_launch = d.tokens_per_launch;
  init_sized(options, size, o);
}

void flashmoe_forward_options_init_sized(flashmoe_forward_options* options, size_t size) {
  const flashmoe::ForwardOptions d{};
  flashmoe_forward_options o{};
  o.topk_ids = d.topk_ids;
  o.topk_weights = d.topk_weights;
  o.out_topk_ids = d.out_topk_ids;
  o.out_topk_weights = d.out_topk_weights;
  o.beta = d.beta;
  o.device_num_tokens = d.device_num_tokens;
  o.device_status = d.device_status;
  o.programmatic_launch = d.programmatic_launch ? 1 : 0;
  init_sized(options, size, o);
}

size_t flashmoe_scratch_bytes(const flashmoe_config* config) {
  return config_bytes(config, [](const flashmoe::Config& c) { return flashmoe::scratch_bytes(c); });
}

size_t flashmoe_workspace_bytes(const flashmoe_config* config) {
  return config_bytes(config,
                      [](const flashmoe::Config& c) { return flashmoe::workspace_bytes(c); });
}

size_t flashmoe_scratch_bytes_per_launch(const flashmoe_config* config, int tokens_per_launch) {
  return config_bytes(config, [tokens_per_launch](const flashmoe::Config& c) {
    return flashmoe::scratch_bytes(c, tokens_per_launch);
  });
}

int flashmoe_tokens_per_launch_for(const flashmoe_config* config, size_t scratch_bytes) {
  return static_cast<int>(config_bytes(config, [scratch_bytes](const flashmoe::Config& c) {
    return static_cast<std::size_t>(flashmoe::tokens_per_launch_for(c, scratch_bytes));
  }));
}

flashmoe_status flashmoe_layer_create(const flashmoe_config* config,
                                      const flashmoe_weights* weights, flashmoe_layer** out) {
  return flashmoe_layer_create_with_options(config, weights, nullptr, out);
}

flashmoe_status flashmoe_layer_create_with_options(const flashmoe_config* config,
                                                   const flashmoe_weights* weights,
                                                   const flashmoe_layer_options* options,
                                                   flashmoe_layer** out) {
  return guarded([&]() -> Status {
    if (out == nullptr) return null_argument("out");
    flashmoe::Config c;
    if (Status s = to_cpp(config, c); !s.ok()) return s;
    flashmoe::Weights w;
    if (Status s = to_cpp(weights, w); !s.ok()) return s;
    flashmoe::LayerOptions o;
    if (Status s = to_cpp(options, o); !s.ok()) return s;
    auto handle = std::make_unique<flashmoe_layer>();
    Status s = flashmoe::Layer::create(c, w, handle->layer, o);
    if (s.ok()) *out = handle.release();
    return s;
  });
}

void flashmoe_layer_destroy(flashmoe_layer* layer) { delete layer; }

size_t flashmoe_layer_workspace_bytes(const flashmoe_layer* layer) {
  return layer == nullptr ? 0 : layer->layer.workspace_bytes();
}

size_t flashmoe_layer_scratch_bytes(const flashmoe_layer* layer) {
  return layer == nullptr ? 0 : layer->layer.scratch_bytes();
}

int flashmoe_layer_tokens_per_launch(const flashmoe_layer* layer) {
  return layer == nullptr ? 0 : layer->layer.tokens_per_launch();
}

flashmoe_status flashmoe_layer_set_weights(flashmoe_layer* layer, const flashmoe_weights* weights) {
  return guarded([&]() -> Status {
    if (layer == nullptr) return null_argument("layer");
    flashmoe::Weights w;
    if (Status s = to_cpp(weights, w); !s.ok()) return s;
    return layer->layer.set_weights(w);
  });
}

flashmoe_status flashmoe_forward(flashmoe_layer* layer, const void* x, void* y, int64_t num_tokens,
                                 struct CUstream_st* stream,
                                 const flashmoe_forward_options* options) {
  return guarded([&]() -> Status {
    // The options first: a bad struct_size is reported whatever else is wrong.
    flashmoe::ForwardOptions o;
    if (Status s = to_cpp(options, o); !s.ok()) return s;
    if (layer == nullptr) return null_argument("layer");
    return flashmoe::forward(layer->layer, x, y, num_tokens, stream, o);
  });
}

flashmoe_status flashmoe_layer_device_status(flashmoe_layer* layer, struct CUstream_st* stream) {
  return guarded([&]() -> Status {
    if (layer == nullptr) return null_argument("layer");
    return layer->layer.device_status(stream);
  });
}

flashmoe_status flashmoe_layer_set_tracing(flashmoe_layer* layer, int events_per_block) {
  return guarded([&]() -> Status {
    if (layer == nullptr) return null_argument("layer");
    return layer->layer.set_tracing(events_per_block);
  });
}

flashmoe_status flashmoe_layer_write_trace(flashmoe_layer* layer, struct CUstream_st* stream,
                                           const char* chrome_json_path, const char* svg_path,
                                           const char* summary_path) {
  return guarded([&]() -> Status {
    if (layer == nullptr) return null_argument("layer");
    flashmoe::Trace trace;
    if (Status s = layer->layer.read_trace(stream, trace); !s.ok()) return s;
    if (chrome_json_path != nullptr) {
      if (Status s = write_file(chrome_json_path, flashmoe::trace_to_chrome_json(trace),
                                "the Chrome JSON trace");
          !s.ok()) {
        return s;
      }
    }
    if (svg_path != nullptr) {
      if (Status s = write_file(svg_path, flashmoe::trace_to_svg(trace), "the SVG trace");
          !s.ok()) {
        return s;
      }
    }
    if (summary_path != nullptr) {
      if (Status s =
              write_file(summary_path, flashmoe::trace_summary_text(trace), "the trace summary");
          !s.ok()) {
        return s;
      }
    }
    return {};
  });
}

const char* flashmoe_status_string(flashmoe_status status) {
  return flashmoe::to_string(static_cast<flashmoe::StatusCode>(status));
}

const char* flashmoe_last_error_message(void) { return g_last_message.c_str(); }

const char* flashmoe_version(void) { return flashmoe::version(); }

}  // extern "C"
