# Compiler options shared by the library, tests, benchmarks and examples.
include_guard(GLOBAL)

# flashmoe_set_warnings(<target>): -Wall -Wextra for C++ and for nvcc's host compiler, plus
# the CUDA device-side flags every FlashMoE CUDA target uses. With
# FLASHMOE_WARNINGS_AS_ERRORS every warning (host or device) is an error.
function(flashmoe_set_warnings target)
  set(cxx_flags -Wall -Wextra)
  set(cuda_flags -Xcompiler=-Wall,-Wextra --expt-relaxed-constexpr -lineinfo)
  if(FLASHMOE_WARNINGS_AS_ERRORS)
    list(APPEND cxx_flags -Werror)
    list(APPEND cuda_flags --Werror=all-warnings -Xcompiler=-Werror)
  endif()
  target_compile_options(${target} PRIVATE
    "$<$<COMPILE_LANGUAGE:CXX>:${cxx_flags}>"
    "$<$<COMPILE_LANGUAGE:CUDA>:${cuda_flags}>")
endfunction()
