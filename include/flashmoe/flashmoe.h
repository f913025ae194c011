/* FlashMoE C API: a thin layer over the C++ API. No C++ exception crosses it. */
#ifndef FLASHMOE_FLASHMOE_H
#define FLASHMOE_FLASHMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Same values as flashmoe::StatusCode. */
typedef enum flashmoe_status {
  FLASHMOE_STATUS_OK = 0,
  FLASHMOE_STATUS_INVALID_ARGUMENT = 1,
  FLASHMOE_STATUS_NOT_SUPPORTED = 2,
  FLASHMOE_STATUS_OUT_OF_MEMORY = 3,
  FLASHMOE_STATUS_CUDA_ERROR = 4,
  FLASHMOE_STATUS_DEVICE_TIMEOUT = 5,
  FLASHMOE_STATUS_INTERNAL = 6,
  FLASHMOE_STATUS_WORKSPACE_BUSY = 7 /* two forwards overlapped on one scratch */
} flashmoe_status;

typedef enum flashmoe_dtype { FLASHMOE_DTYPE_BF16 = 0, FLASHMOE_DTYPE_FP16 = 1 } flashmoe_dtype;

typedef enum flashmoe_activation {
  FLASHMOE_ACTIVATION_SILU_GATED = 0,
  FLASHMOE_ACTIVATION_GELU_GATED = 1,
  FLASHMOE_ACTIVATION_GELU_TANH_GATED = 2
} flashmoe_activation;

typedef enum flashmoe_scoring {
  FLASHMOE_SCORING_SOFTMAX = 0,
  FLASHMOE_SCORING_SIGMOID = 1
} flashmoe_scoring;

/* Versioned structs: flashmoe_config, flashmoe_layer_options and flashmoe_forward_options begin
 * with `uint32_t struct_size`, so that they can gain members without breaking programs built
 * against an older header.
 *  - Fill one with its _init function first: it sets the defaults (those of the C++ API) and
 *    struct_size = sizeof the struct as this header declares it. Then set the members you need.
 *  - The library reads only the members that lie wholly within struct_size and uses the default
 *    for the others, so a struct from an older, shorter header still works.
 *  - struct_size == 0 (never initialised) or below the size of the struct's first version gives
 *    FLASHMOE_STATUS_INVALID_ARGUMENT ("call flashmoe_..._init first").
 *  - A struct_size larger than the library knows (a newer header) is accepted; the members it
 *    does not know are ignored (an older library cannot honour them: check flashmoe_version()).
 *  - New members are only appended, each at or after the sizeof of the previous version (tail
 *    padding included), and their zero value means "default".
 * The _init functions are inline so that sizeof is the caller's; they call the _init_sized
 * functions of the library, which write only `size` bytes. */

/* Mirrors flashmoe::Config. First version: every member below. */
typedef struct flashmoe_config {
  uint32_t struct_size;
  int hidden;
  int intermediate;
  int experts;
  int top_k;
  flashmoe_dtype dtype;
  flashmoe_activation activation;
  flashmoe_scoring scoring;
  int renormalize;
  int n_group;
  int topk_group;
  float routed_scaling_factor;
  int use_correction_bias;
  int shared_count;
  int shared_intermediate;
  int shared_gated;
  int max_tokens;
} flashmoe_config;

/* Mirrors flashmoe::Weights: device pointers. Not versioned. */
typedef struct flashmoe_weights {
  flashmoe_dtype dtype;
  const void* router;
  const void* w13;
  const void* w2;
  const float* correction_bias;
  const void* shared_w13;
  const void* shared_w2;
  const void* shared_gate;
} flashmoe_weights;

/* Mirrors flashmoe::LayerOptions (<flashmoe/layer.hpp> says more). First version: struct_size
 * to watchdog_ms. */
typedef struct flashmoe_layer_options {
  uint32_t struct_size;
  int max_blocks;       /* upper bound on the persistent grid; 0: as many as fit */
  uint32_t watchdog_ms; /* a device-side wait longer than this fails with DEVICE_TIMEOUT */
  /* Caller-owned scratch of at least flashmoe_scratch_bytes(config) bytes, 256-byte aligned,
   * on the layer's device; one buffer can serve several layers whose forwards are ordered.
   * NULL (with scratch_bytes 0): the layer allocates its own. */
  void* scratch;
  size_t scratch_bytes;
  /* Tokens per kernel launch; the scratch is sized for this many and longer forwards run one
   * launch per chunk of rows (0: max_tokens, one launch). See LayerOptions::tokens_per_launch. */
  int tokens_per_launch;
} flashmoe_layer_options;

/* Mirrors flashmoe::ForwardOptions: device pointers. First version: struct_size to beta. */
typedef struct flashmoe_forward_options {
  uint32_t struct_size;
  const int32_t* topk_ids; /* caller-supplied routing [T, K], or NULL */
  const float* topk_weights;
  int32_t* out_topk_ids; /* when not NULL, the routing used is written here [T, K] */
  float* out_topk_weights;
  float beta; /* y = moe(x) + beta * y */
  /* Padded batches: the number of live tokens, read by the kernel, clamped to [0, num_tokens];
   * rows from there on are left untouched. NULL: all num_tokens. */
  const int32_t* device_num_tokens;
  /* When not NULL, a forward that fails on the device stores its flashmoe_status here if the
   * word still holds 0 (a sticky error word the caller zeroes and reads when it syncs). */
  int32_t* device_status;
  /* Non-zero: programmatic dependent launch (ForwardOptions::programmatic_launch). */
  int32_t programmatic_launch;
} flashmoe_forward_options;

typedef struct flashmoe_layer flashmoe_layer; /* opaque */
struct CUstream_st;                           /* cudaStream_t is struct CUstream_st* */

/* Write the defaults into the first `size` bytes (struct_size = size); NULL is ignored. Call
 * them through the inline functions below. */
void flashmoe_config_init_sized(flashmoe_config* config, size_t size);
void flashmoe_layer_options_init_sized(flashmoe_layer_options* options, size_t size);
void flashmoe_forward_options_init_sized(flashmoe_forward_options* options, size_t size);

/* Defaults of flashmoe::Config (sizes 0, bf16, SiLU, softmax renormalised, no groups). */
static inline void flashmoe_config_init(flashmoe_config* config) {
  flashmoe_config_init_sized(config, sizeof(flashmoe_config));
}
/* Defaults of flashmoe::LayerOptions (max_blocks 0, watchdog_ms 2000, no caller scratch). */
static inline void flashmoe_layer_options_init(flashmoe_layer_options* options) {
  flashmoe_layer_options_init_sized(options, sizeof(flashmoe_layer_options));
}
/* Defaults of flashmoe::ForwardOptions (no pointers, beta 0, an ordinary launch). */
static inline void flashmoe_forward_options_init(flashmoe_forward_options* options) {
  flashmoe_forward_options_init_sized(options, sizeof(flashmoe_forward_options));
}

/* Bytes of scratch the forwards of a layer with this config need, and bytes of device memory
 * a layer with this config allocates when it owns its scratch (flashmoe::scratch_bytes and
 * flashmoe::workspace_bytes). 0 for NULL, a bad struct_size or an invalid config. */
size_t flashmoe_scratch_bytes(const flashmoe_config* config);
size_t flashmoe_workspace_bytes(const flashmoe_config* config);
/* The scratch of a layer created with this tokens_per_launch (flashmoe::scratch_bytes), and the
 * largest tokens_per_launch whose scratch fits in scratch_bytes (flashmoe::tokens_per_launch_for;
 * 0 if none fits, or for NULL, a bad struct_size or an invalid config). */
size_t flashmoe_scratch_bytes_per_launch(const flashmoe_config* config, int tokens_per_launch);
int flashmoe_tokens_per_launch_for(const flashmoe_config* config, size_t scratch_bytes);

/* Validates and creates a layer on the current CUDA device; *out is set only on success. */
flashmoe_status flashmoe_layer_create(const flashmoe_config* config,
                                      const flashmoe_weights* weights, flashmoe_layer** out);
/* The same with options; options may be NULL (the defaults). */
flashmoe_status flashmoe_layer_create_with_options(const flashmoe_config* config,
                                                   const flashmoe_weights* weights,
                                                   const flashmoe_layer_options* options,
                                                   flashmoe_layer** out);
void flashmoe_layer_destroy(flashmoe_layer* layer); /* NULL is allowed */
/* Device bytes the layer allocated itself, and scratch bytes its forwards need (0 for NULL). */
size_t flashmoe_layer_workspace_bytes(const flashmoe_layer* layer);
size_t flashmoe_layer_scratch_bytes(const flashmoe_layer* layer);
/* Tokens per kernel launch of the layer (1 .. max_tokens; 0 for NULL). */
int flashmoe_layer_tokens_per_launch(const flashmoe_layer* layer);

/* Replaces the weights without re-creating the layer (see Layer::set_weights); forwards
 * enqueued before keep the old ones. On error the layer keeps its old weights. */
flashmoe_status flashmoe_layer_set_weights(flashmoe_layer* layer, const flashmoe_weights* weights);

/* options may be NULL. */
flashmoe_status flashmoe_forward(flashmoe_layer* layer, const void* x, void* y, int64_t num_tokens,
                                 struct CUstream_st* stream,
                                 const flashmoe_forward_options* options);

/* Waits for the stream and reports an error the kernel recorded (see Layer::device_status). */
flashmoe_status flashmoe_layer_device_status(flashmoe_layer* layer, struct CUstream_st* stream);

/* Scheduling trace. events_per_block > 0 turns it on for the following forwards (allocating
 * its buffer now), 0 turns it off. NOT_SUPPORTED when built with FLASHMOE_ENABLE_TRACE=OFF. */
flashmoe_status flashmoe_layer_set_tracing(flashmoe_layer* layer, int events_per_block);
/* Waits for the stream, reads the last traced forward and writes it to the paths that are not
 * NULL: Chrome trace-event JSON (Perfetto, chrome://tracing), an SVG timeline, a text summary.
 * A file that cannot be written gives INVALID_ARGUMENT naming its path. */
flashmoe_status flashmoe_layer_write_trace(flashmoe_layer* layer, struct CUstream_st* stream,
                                           const char* chrome_json_path, const char* svg_path,
                                           const char* summary_path);

/* "ok", "invalid_argument", ... */
const char* flashmoe_status_string(flashmoe_status status);
/* Message of the last failed call on this thread ("" if none); valid until the next call.
 * The size queries (..._bytes) leave it as it was. */
const char* flashmoe_last_error_message(void);
const char* flashmoe_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FLASHMOE_FLASHMOE_H */
