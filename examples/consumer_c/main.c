/* Consumer of an installed FlashMoE through pkg-config, in C99. Needs no GPU. */
#include <flashmoe/flashmoe.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

int main(void) {
  flashmoe_config config;
  flashmoe_weights weights;
  flashmoe_layer* layer = NULL;
  flashmoe_status status;
  const char* message;
  const char* version = flashmoe_version();

  printf("flashmoe_version() = %s\n", version != NULL ? version : "(null)");
  check(version != NULL && strncmp(version, "0.1.", 4) == 0, "version is 0.1.x");

  flashmoe_config_init(&config);
  check(config.dtype == FLASHMOE_DTYPE_BF16, "default dtype is bf16");
  config.hidden = 0; /* invalid on purpose */
  config.intermediate = 768;
  config.experts = 128;
  config.top_k = 8;
  config.max_tokens = 16;
  memset(&weights, 0, sizeof weights);

  status = flashmoe_layer_create(&config, &weights, &layer);
  message = flashmoe_last_error_message();
  printf("flashmoe_layer_create(hidden = 0) -> %s: %s\n", flashmoe_status_string(status),
         message != NULL ? message : "(null)");
  check(status == FLASHMOE_STATUS_INVALID_ARGUMENT, "create returns INVALID_ARGUMENT");
  check(message != NULL && message[0] != '\0', "last error message is not empty");
  check(layer == NULL, "no layer is returned");
  check(strcmp(flashmoe_status_string(FLASHMOE_STATUS_INVALID_ARGUMENT), "invalid_argument") == 0,
        "status string of INVALID_ARGUMENT is \"invalid_argument\"");
  flashmoe_layer_destroy(layer); /* NULL is allowed */

  if (failures != 0) {
    fprintf(stderr, "consumer_c: %d check(s) failed\n", failures);
    return 1;
  }
  printf("consumer_c: OK\n");
  return 0;
}
