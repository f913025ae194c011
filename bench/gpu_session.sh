#!/usr/bin/env bash
# One call on the GPU machine: build with the `gpu` preset, run every test, run the benchmarks
# named by $BENCH_FILTER (default: the Qwen3 shape), and the demo. Logs go to $OUT (or ./out).
# Usage: bench/gpu_session.sh [benchmark filter regex]
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
filter=${1:-'Qwen3.*'}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/card.txt"
cmake --preset gpu >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build --preset gpu -j 16 >"$out/build.log" 2>&1 || { grep -B2 -A8 error "$out/build.log" | head -60; exit 1; }
if [ -z "${SKIP_TESTS:-}" ]; then
  ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
  echo "ctest exit $?"; grep -E "tests passed|Failed|\*\*\*" "$out/ctest.log" | head -30
fi
./build/gpu/bench/bench_moe --benchmark_filter="$filter" --benchmark_counters_tabular=true \
  --benchmark_out="$out/bench.json" --benchmark_out_format=json >"$out/bench.txt" 2>&1
grep -E "copy|TFLOPs|^(Qwen|OLMoE|Deep|Mixtral)" "$out/bench.txt"
if [ -z "${SKIP_DEMO:-}" ]; then ./build/gpu/examples/demo/flashmoe_demo 16 >"$out/demo.log" 2>&1; tail -15 "$out/demo.log"; fi
