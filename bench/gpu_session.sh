#!/usr/bin/env bash
# One call on the GPU machine: build with the `gpu` preset, run every test, the benchmarks
# named by the filter (default: the Qwen3 shape), the demo and the trace example. Logs go to
# $OUT (or ./out): at most 8 files, as the device tool returns no more.
# Usage: bench/gpu_session.sh [benchmark filter regex]
# Environment: SKIP_TESTS=1, SKIP_DEMO=1, SKIP_TRACE=1, TRACE_OVERHEAD=1 (also benchmark a
# build with FLASHMOE_ENABLE_TRACE=OFF, to compare with tracing compiled in but off, on
# $OVERHEAD_FILTER, default the Qwen3 shape in bf16), TRACE_T="1 256" (token counts traced).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
filter=${1:-'Qwen3.*'}
log="$out/session.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$log"
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=ON >>"$log" 2>&1 || { tail -30 "$log"; exit 1; }
cmake --build --preset gpu -j 16 >>"$log" 2>&1 || { grep -B2 -A8 error "$log" | head -60; exit 1; }
if [ -z "${SKIP_TESTS:-}" ]; then
  ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
  echo "ctest exit $?"; grep -E "tests passed|Failed|\*\*\*" "$out/ctest.log" | head -30
fi
bench() {  # $1 = build dir, $2 = output file (appended), $3 = filter
  "$1/bench/bench_moe" --benchmark_filter="${3:-$filter}" --benchmark_counters_tabular=true >"$2.tmp" 2>&1
  cat "$2.tmp" >>"$2" && rm "$2.tmp"
  grep -E "copy|TFLOPs|^(Qwen|OLMoE|Deep|Mixtral)" "$2" | tail -n +1 | sed -E 's/min_time:[0-9.]+\/manual_time//'
}
bench build/gpu "$out/bench.txt"
if [ -n "${TRACE_OVERHEAD:-}" ]; then
  export FLASHMOE_BENCH_NO_CUBLAS=1  # the A/B compares FlashMoE builds only
  cmake -S . -B build/notrace -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
    -DFLASHMOE_ENABLE_TRACE=OFF -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >>"$log" 2>&1
  cmake --build build/notrace -j 16 --target bench_moe >>"$log" 2>&1 || { tail -20 "$log"; exit 1; }
  echo "== FLASHMOE_ENABLE_TRACE=OFF"
  bench build/notrace "$out/bench_notrace.txt" "${OVERHEAD_FILTER:-Qwen3.*/bf16}"
  echo "== tracing compiled in, off, again"
  bench build/gpu "$out/bench_again.txt" "${OVERHEAD_FILTER:-Qwen3.*/bf16}" >/dev/null; cat "$out/bench_again.txt" >>"$out/bench_notrace.txt"
  grep -E "^(Qwen|OLMoE|Deep|Mixtral)" "$out/bench_again.txt" | sed -E 's/min_time:[0-9.]+\/manual_time//'; rm "$out/bench_again.txt"
fi
if [ -z "${SKIP_DEMO:-}" ]; then ./build/gpu/examples/demo/flashmoe_demo 16 >"$out/demo.log" 2>&1; tail -12 "$out/demo.log"; cat "$out/demo.log" >>"$log"; rm "$out/demo.log"; fi
if [ -z "${SKIP_TRACE:-}" ]; then
  mkdir -p "$out/trace" && ./build/gpu/examples/trace/flashmoe_trace "$out/trace" ${TRACE_T:-1 256} >>"$log" 2>&1
  rm -f "$out"/trace/*.json  # large; the SVG and the summary come back
  cat "$out"/trace/*.txt
fi
