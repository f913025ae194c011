// The fp16 kernels and their host layer (forward_typed.cuh), a translation unit of their own.
#include "forward_typed.cuh"

namespace flashmoe::detail {
template struct TypedForward<__half>;
}  // namespace flashmoe::detail
