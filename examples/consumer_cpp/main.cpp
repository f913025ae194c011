// Consumer of an installed FlashMoE through find_package(FlashMoE). Needs no GPU: Layer::create
// validates the config before it touches CUDA. Exits non-zero on any surprise.
#include <cstdio>
#include <cstring>
#include <flashmoe/flashmoe.hpp>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  const char* version = flashmoe::version();
  std::printf("flashmoe::version() = %s\n", version != nullptr ? version : "(null)");
  check(version != nullptr && std::strncmp(version, "0.1.", 4) == 0, "version is 0.1.x");

  flashmoe::Config config;
  config.hidden = 0;  // invalid on purpose
  config.intermediate = 768;
  config.experts = 128;
  config.top_k = 8;
  config.max_tokens = 16;
  flashmoe::Weights weights;

  flashmoe::Layer layer;
  const flashmoe::Status status = flashmoe::Layer::create(config, weights, layer);
  std::printf("Layer::create(hidden = 0) -> %s\n", status.to_string().c_str());
  check(status.code() == flashmoe::StatusCode::InvalidArgument, "create returns InvalidArgument");
  check(!status.message().empty(), "the status carries a message");
  check(!layer.valid(), "the layer stays invalid");
  check(std::strcmp(flashmoe::to_string(flashmoe::StatusCode::InvalidArgument),
                    "invalid_argument") == 0,
        "to_string(InvalidArgument) is \"invalid_argument\"");

  if (failures != 0) {
    std::fprintf(stderr, "consumer_cpp: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("consumer_cpp: OK\n");
  return 0;
}
