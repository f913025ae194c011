#!/usr/bin/env bash
# Runs NVIDIA compute-sanitizer's memcheck, racecheck, synccheck and initcheck over a fast subset
# of the GPU tests that reaches every kernel variant: the 16-, 32- and 48-row decode kernels
# (Forward.EveryDecodeKernelMatchesReference), the prefill kernel (forwards at T >= 300 on the
# tests' small shapes), caller routing, a bad caller id, beta, x == y, the routing variants,
# the watchdog fault (memcheck and synccheck), tracing (test_trace_gpu) and the engine options
# (test_engine_gpu).
#
# Usage: tools/sanitize.sh [options] [-- extra compute-sanitizer arguments]
#   --build-dir DIR  build tree of the `gpu` preset (default: build/gpu)
#   --log-dir DIR    where the logs go, one per tool (default: build/sanitize)
#   --tools LIST     comma-separated subset of memcheck,racecheck,synccheck,initcheck
#   --timeout S      limit per tool and test binary, in seconds (default: 1800)
#   --no-build       do not (re)build the three test binaries first
# Prints one result line per tool and a final line; exits 1 if any tool reported an error, a
# test failed or a run timed out. Every finding is reported, including ones that may be false
# positives of the tools on this kernel (copy-engine writes to shared memory completed through
# mbarriers, and thread 0 / warps 8-11 across __syncthreads in the warp-specialised kernel, which
# tools/racecheck_model.cu reproduces on a race-free kernel, for racecheck; workspace reads
# initcheck cannot prove initialised); the logs say which test and kernel they came from.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=$repo/build/gpu
log_dir=$repo/build/sanitize
tools=(memcheck racecheck synccheck initcheck)
timeout_s=1800
build=1
extra=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
while (($#)); do
  case $1 in
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    --log-dir) log_dir=${2:?--log-dir needs a value}; shift 2 ;;
    --log-dir=*) log_dir=${1#*=}; shift ;;
    --tools) IFS=, read -r -a tools <<<"${2:?--tools needs a value}"; shift 2 ;;
    --tools=*) IFS=, read -r -a tools <<<"${1#*=}"; shift ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "sanitize.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for tool in "${tools[@]}"; do
  case $tool in
    memcheck | racecheck | synccheck | initcheck) ;;
    *) echo "sanitize.sh: unknown tool '$tool'" >&2; exit 2 ;;
  esac
done
[[ $timeout_s =~ ^[0-9]+$ ]] || { echo "sanitize.sh: --timeout takes seconds" >&2; exit 2; }

# --- The test subset -----------------------------------------------------------------------
# Forward tests on the small shapes (H <= 4096, E <= 32, T <= 1000): decode kernels of all three
# heights and four tile pairs, prefill (InPlaceXEqualsY at T = 1000, caller routing at T = 300,
# the sigmoid/GELU variants at T = 512; on sm_90 with sm_90a code the warp-specialised kernel,
# both m-tile heights, skewed routing and E = 1), fp16 (beta), -inf bias, a bad caller id (the
# kernel's error exit), and the watchdog fault (two rounds of a hung decode and prefill forward,
# 100 ms each, then good forwards). Left out: the big ForwardMatrix shapes (hours under
# memcheck), the 1000-replay graph test and the grid-size sweep (slow, no kernel path of their
# own), the stalled-copy watchdog test (it asserts a wall-clock bound that instrumentation
# breaks).
forward_filter="Forward.EveryDecodeKernelMatchesReference"
forward_filter+=":Forward.CallerSuppliedRoutingIncludingRepeatedExperts"
forward_filter+=":Forward.BadCallerIdIsReportedAndYIsUntouched"
forward_filter+=":Forward.BetaAccumulatesIntoY"
forward_filter+=":Forward.InPlaceXEqualsY"
forward_filter+=":Forward.SigmoidBiasScalingAndGeluVariants"
forward_filter+=":Forward.MinusInfinityBiasMasksExperts"
forward_filter+=":Forward.PrefillRunsTheWarpSpecialisedKernelOnSm90a"
# The watchdog fault: memcheck and synccheck only. Under racecheck the instrumented kernel is so
# slow that the test's good forwards after the fault (watchdog_ms = 100) time out for real
# (first run, H200: a down tile waiting more than 100 ms for its gate/up tiles).
watchdog_filter="Forward.WatchdogTurnsAHangIntoDeviceTimeoutAndTheLayerRecovers"
# memcheck only (the cheapest tool): the small ForwardMatrix shapes, T = 1 to 4096 (E = 1, K = E,
# I not a tile multiple in both dtypes, E = 512 and 1024 with K = 16 and 32).
matrix_filter="Shapes/ForwardMatrix.*/E1_K1_bf16:Shapes/ForwardMatrix.*/K_equals_E_fp16"
matrix_filter+=":Shapes/ForwardMatrix.*/I_not_tile_multiple_*"
matrix_filter+=":Shapes/ForwardMatrix.*/E512_K16_bf16:Shapes/ForwardMatrix.*/E1024_K32_bf16"
# Tracing: decode at every height and prefill, K-sliced down tiles, buffer overflow.
trace_filter="TraceGpu.*"
# Engine options: shared scratch across shapes, set_weights, device token counts (also in a
# graph), non-finite tokens, event-ordered streams, the status word. Left out: the overlap test,
# which needs two kernels resident at once (the sanitizers serialise launches, so the second
# forward would find the scratch free and the test would fail for that reason alone).
engine_filter="Engine.*:-Engine.OverlappingForwardsAreCaughtAndWriteNothing"

# --- Tools and binaries ----------------------------------------------------------------------
find_sanitizer() {
  local candidates=() nvcc
  [[ -n ${COMPUTE_SANITIZER:-} ]] && candidates+=("$COMPUTE_SANITIZER")
  command -v compute-sanitizer >/dev/null 2>&1 && candidates+=("$(command -v compute-sanitizer)")
  nvcc=$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' "$build_dir/CMakeCache.txt" 2>/dev/null)
  [[ -n $nvcc ]] && candidates+=("$(dirname "$nvcc")/compute-sanitizer")
  [[ -n ${CUDA_PATH:-} ]] && candidates+=("$CUDA_PATH/bin/compute-sanitizer")
  candidates+=(/usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer)
  for c in "${candidates[@]}"; do
    if [[ -x $c ]]; then echo "$c"; return 0; fi
  done
  return 1
}
sanitizer=$(find_sanitizer) || {
  echo "sanitize.sh: compute-sanitizer not found (set COMPUTE_SANITIZER, or put it on PATH)" >&2
  exit 2
}
if [[ ! -f $build_dir/CMakeCache.txt ]]; then
  echo "sanitize.sh: $build_dir is not a build tree; run: cmake --preset gpu" >&2
  exit 2
fi
bins=(test_forward_gpu test_trace_gpu test_engine_gpu)
if ((build)); then
  echo "building ${bins[*]} in $build_dir" >&2
  cmake --build "$build_dir" -j "$(nproc)" --target "${bins[@]}" >/dev/null || {
    echo "sanitize.sh: build failed (cmake --build $build_dir --target ${bins[*]})" >&2
    exit 2
  }
fi
for bin in "${bins[@]}"; do
  [[ -x $build_dir/tests/$bin ]] || { echo "sanitize.sh: $build_dir/tests/$bin is missing" >&2; exit 2; }
done
mkdir -p "$log_dir" || exit 2
log_dir=$(cd "$log_dir" && pwd)

# --- Runs ------------------------------------------------------------------------------------
# run TOOL BIN FILTER LOG: appends the run's output to LOG; prints "rc errors warnings failed
# skipped" (errors and warnings as the tool's summary counts them).
run() {
  local tool=$1 bin=$2 filter=$3 log=$4 rc=0 args part errors warnings failed skipped
  args=(--tool "$tool" --error-exitcode 86 --print-limit 200
        # Tests provoke CUDA API errors on purpose (a failing cudaMalloc, host pointers); the
        # tests check every API status themselves.
        --report-api-errors no)
  [[ $tool == racecheck ]] && args+=(--racecheck-report all)
  part=$(mktemp)
  {
    echo "=== $tool $bin --gtest_filter=$filter"
    echo "=== $sanitizer ${args[*]} ${extra[*]}"
  } >>"$log"
  timeout --kill-after=30 "$timeout_s" "$sanitizer" "${args[@]}" "${extra[@]}" \
    "$build_dir/tests/$bin" --gtest_filter="$filter" --gtest_color=no >"$part" 2>&1 || rc=$?
  cat "$part" >>"$log"
  if [[ $tool == racecheck ]] && grep -q 'RACECHECK SUMMARY' "$part"; then
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"
    errors=$(grep -o 'RACECHECK SUMMARY:.*' "$part" | grep -Eo '[0-9]+ errors?' | grep -Eo '[0-9]+' |
      awk '{s += $1} END {print s + 0}')
    warnings=$(grep -o 'RACECHECK SUMMARY:.*' "$part" | grep -Eo '[0-9]+ warnings?' |
      grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
  else
    errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$part" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
    warnings=0
  fi
  grep -q 'ERROR SUMMARY\|RACECHECK SUMMARY' "$part" || errors='?'
  # gtest names each failed or skipped test twice (as it ends, and in the summary).
  failed=$(awk '/^\[  FAILED  \] [A-Za-z]/ { print $4 }' "$part" | sort -u | wc -l)
  skipped=$(awk '/^\[  SKIPPED \] [A-Za-z]/ { print $4 }' "$part" | sort -u | wc -l)
  # Without a GPU the tests skip (or fail in the gpu preset): that is no sanitizer pass.
  if grep -q 'no CUDA GPU on this machine\|FLASHMOE_REQUIRE_GPU: no GPU' "$part" && ((rc == 0)); then
    rc=1
  fi
  rm -f "$part"
  echo "$rc $errors $warnings $failed $skipped"
}

total_start=$SECONDS
failed_tools=()
echo "compute-sanitizer: $sanitizer; logs: $log_dir" >&2
for tool in "${tools[@]}"; do
  start=$SECONDS
  log=$log_dir/$tool.log
  : >"$log"
  runs=("test_forward_gpu|$forward_filter" "test_trace_gpu|$trace_filter"
        "test_engine_gpu|$engine_filter")
  [[ $tool == memcheck || $tool == synccheck ]] && runs[0]+=":$watchdog_filter"
  [[ $tool == memcheck ]] && runs+=("test_forward_gpu|$matrix_filter")
  status=PASS
  notes=()
  sum_errors=0
  for entry in "${runs[@]}"; do
    bin=${entry%%|*}
    filter=${entry#*|}
    echo "  $tool: $bin --gtest_filter=$filter" >&2
    read -r rc errors warnings failed skipped < <(run "$tool" "$bin" "$filter" "$log")
    short=${bin#test_}
    short=${short%_gpu}
    note="$short:"
    if [[ $errors == '?' ]]; then
      note+=" no sanitizer summary"
      status=FAIL
    else
      sum_errors=$((sum_errors + errors))
      note+=" $errors errors"
      ((warnings > 0)) && note+=", $warnings warnings"
      ((errors > 0)) && status=FAIL
    fi
    ((failed > 0)) && { note+=", $failed tests failed"; status=FAIL; }
    ((skipped > 0)) && note+=", $skipped skipped"
    case $rc in
      0) ;;
      86) status=FAIL ;;
      124 | 137) note+=", TIMED OUT after ${timeout_s} s"; status=FAIL ;;
      *) note+=", exit $rc"; status=FAIL ;;
    esac
    notes+=("$note")
  done
  [[ $status == FAIL ]] && failed_tools+=("$tool")
  joined=$(printf '%s; ' "${notes[@]}")
  printf '%-10s %s  %d errors  (%s)  %d s  %s\n' "$tool" "$status" "$sum_errors" "${joined%; }" \
    $((SECONDS - start)) "$log"
done

if ((${#failed_tools[@]})); then
  echo "sanitize: FAIL (${failed_tools[*]}) in $((SECONDS - total_start)) s; logs in $log_dir"
  exit 1
fi
echo "sanitize: PASS (${tools[*]}) in $((SECONDS - total_start)) s; logs in $log_dir"
