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
  FLASHMOE_STATUS_INTERNAL = 6
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

/* Mirrors flashmoe::Config; fill it with flashmoe_config_init first. */
typedef struct flashmoe_config {
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

/* Mirrors flashmoe::Weights: device pointers. */
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

/* Mirrors flashmoe::ForwardOptions. */
typedef struct flashmoe_forward_options {
  const int32_t* topk_ids;
  const float* topk_weights;
  int32_t* out_topk_ids;
  float* out_topk_weights;
  float beta;
} flashmoe_forward_options;

typedef struct flashmoe_layer flashmoe_layer; /* opaque */
struct CUstream_st;                           /* cudaStream_t is struct CUstream_st* */

/* Defaults of flashmoe::Config (sizes 0, bf16, SiLU, softmax renormalised, no groups). */
void flashmoe_config_init(flashmoe_config* config);

flashmoe_status flashmoe_layer_create(const flashmoe_config* config,
                                      const flashmoe_weights* weights, flashmoe_layer** out);
void flashmoe_layer_destroy(flashmoe_layer* layer); /* NULL is allowed */
size_t flashmoe_layer_workspace_bytes(const flashmoe_layer* layer);

/* options may be NULL. */
flashmoe_status flashmoe_forward(flashmoe_layer* layer, const void* x, void* y, int64_t num_tokens,
                                 struct CUstream_st* stream,
                                 const flashmoe_forward_options* options);

/* Waits for the stream and reports an error the kernel recorded (see Layer::device_status). */
flashmoe_status flashmoe_layer_device_status(flashmoe_layer* layer, struct CUstream_st* stream);

/* "ok", "invalid_argument", ... */
const char* flashmoe_status_string(flashmoe_status status);
/* Message of the last failed call on this thread ("" if none); valid until the next call. */
const char* flashmoe_last_error_message(void);
const char* flashmoe_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FLASHMOE_FLASHMOE_H */
