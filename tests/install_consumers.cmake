# Script (cmake -P) behind the install_consumers test:
#  1. cmake --install the build tree into a fresh prefix under WORK_DIR;
#  2. configure, build and run examples/consumer_cpp (find_package(FlashMoE)) with
#     CMAKE_PREFIX_PATH set to that prefix alone;
#  3. compile examples/consumer_c/main.c with cc and `pkg-config --cflags --libs flashmoe`
#     (PKG_CONFIG_PATH: the prefix alone) and run it.
# Any failure, or a source-tree path in the consumer builds, fails the test.
cmake_minimum_required(VERSION 3.25)

foreach(var FLASHMOE_SOURCE_DIR FLASHMOE_BUILD_DIR WORK_DIR LIBDIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_consumers.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT C_COMPILER)
  set(C_COMPILER cc)
endif()
if(NOT PKG_CONFIG)
  set(PKG_CONFIG pkg-config)
endif()

# run(<what> COMMAND ...): execute_process that echoes its output and stops on failure.
function(run what)
  execute_process(${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message(STATUS "[${what}]\n${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumers: ${what} failed (${rc})")
  endif()
endfunction()

set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# Nothing but the prefix may be found: drop environment hints to other FlashMoE copies.
foreach(var CMAKE_PREFIX_PATH FlashMoE_DIR FlashMoE_ROOT FLASHMOE_ROOT PKG_CONFIG_PATH CPATH
            CPLUS_INCLUDE_PATH C_INCLUDE_PATH LIBRARY_PATH)
  unset(ENV{${var}})
endforeach()

# 1. Install.
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
run("install" COMMAND "${CMAKE_COMMAND}" --install "${FLASHMOE_BUILD_DIR}" --prefix "${prefix}"
                      ${config_args})
foreach(f include/flashmoe/flashmoe.hpp include/flashmoe/flashmoe.h
          ${LIBDIR}/libflashmoe.a ${LIBDIR}/cmake/FlashMoE/FlashMoEConfig.cmake
          ${LIBDIR}/pkgconfig/flashmoe.pc)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "install_consumers: ${prefix}/${f} was not installed")
  endif()
endforeach()

# A consumer must not see the source or build tree. The work dir lies inside the build dir,
# so look for the specific paths that would betray a leak.
function(check_no_leak file)
  file(READ "${file}" text)
  foreach(leak "${FLASHMOE_SOURCE_DIR}/include" "${FLASHMOE_SOURCE_DIR}/src"
               "${FLASHMOE_BUILD_DIR}/libflashmoe.a" "${FLASHMOE_BUILD_DIR}/FlashMoEConfig.cmake")
    string(FIND "${text}" "${leak}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "install_consumers: ${file} refers to ${leak}")
    endif()
  endforeach()
endfunction()

foreach(f ${LIBDIR}/cmake/FlashMoE/FlashMoETargets.cmake ${LIBDIR}/pkgconfig/flashmoe.pc)
  check_no_leak("${prefix}/${f}")
endforeach()

# 2. The CMake consumer (a plain C++ project).
set(cpp_build "${WORK_DIR}/consumer_cpp-build")
set(cpp_args
  -S "${FLASHMOE_SOURCE_DIR}/examples/consumer_cpp"
  -B "${cpp_build}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
if(GENERATOR)
  list(APPEND cpp_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND cpp_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
run("configure consumer_cpp" COMMAND "${CMAKE_COMMAND}" ${cpp_args})

file(STRINGS "${cpp_build}/CMakeCache.txt" found_dir REGEX "^FlashMoE_DIR:")
string(REGEX REPLACE "^[^=]*=" "" found_dir "${found_dir}")
file(REAL_PATH "${found_dir}" found_dir)
file(REAL_PATH "${prefix}" real_prefix)
string(FIND "${found_dir}" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "install_consumers: FlashMoE found in ${found_dir}, not in ${prefix}")
endif()

run("build consumer_cpp" COMMAND "${CMAKE_COMMAND}" --build "${cpp_build}" --config Release)
file(GLOB_RECURSE cpp_build_files "${cpp_build}/compile_commands.json"
     "${cpp_build}/CMakeFiles/*/flags.make" "${cpp_build}/CMakeFiles/*/link.txt"
     "${cpp_build}/build.ninja")
foreach(f IN LISTS cpp_build_files)
  check_no_leak("${f}")
endforeach()
find_program(cpp_app NAMES flashmoe_consumer_cpp PATHS "${cpp_build}" "${cpp_build}/Release"
             NO_DEFAULT_PATH NO_CACHE REQUIRED)
run("run consumer_cpp" COMMAND "${cpp_app}")

# 3. The C consumer through pkg-config.
set(ENV{PKG_CONFIG_PATH} "${prefix}/${LIBDIR}/pkgconfig")
set(ENV{PKG_CONFIG_LIBDIR} "${prefix}/${LIBDIR}/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs flashmoe
  RESULT_VARIABLE rc OUTPUT_VARIABLE pc_flags ERROR_VARIABLE pc_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_consumers: pkg-config --cflags --libs flashmoe failed: ${pc_err}")
endif()
message(STATUS "pkg-config --cflags --libs flashmoe: ${pc_flags}")
foreach(leak "-I${FLASHMOE_SOURCE_DIR}/include" "-I${FLASHMOE_SOURCE_DIR}/src"
             "-L${FLASHMOE_BUILD_DIR} ")
  string(FIND "${pc_flags} " "${leak}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "install_consumers: pkg-config flags refer to ${leak}")
  endif()
endforeach()
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
set(c_app "${WORK_DIR}/flashmoe_consumer_c")
run("compile consumer_c" COMMAND "${C_COMPILER}" -std=c99 -Wall -Wextra -pedantic -Werror
    "${FLASHMOE_SOURCE_DIR}/examples/consumer_c/main.c" ${pc_flags} -o "${c_app}")
# libcudart.so is found through ld.so.conf on most CUDA installs; help where it is not.
if(CUDA_LIBDIR)
  if(DEFINED ENV{LD_LIBRARY_PATH} AND NOT "$ENV{LD_LIBRARY_PATH}" STREQUAL "")
    set(ENV{LD_LIBRARY_PATH} "$ENV{LD_LIBRARY_PATH}:${CUDA_LIBDIR}")
  else()
    set(ENV{LD_LIBRARY_PATH} "${CUDA_LIBDIR}")
  endif()
endif()
run("run consumer_c" COMMAND "${c_app}")

message(STATUS "install_consumers: all consumers built and ran against ${prefix}")
