#!/usr/bin/env bash
# One device call (about 5 minutes on a fresh machine; run from the repository root): row 169,
# the decode m-tile height rules measured. Builds bench_moe and test_forward_gpu, runs the
# forward tests that force each decode kernel and height, then bench_moe on cells where the rule
# takes the tall (48-row) kernels, under the rule and FLASHMOE_BENCH_DECODE_ROWS=32 / 16 (two
# rounds, medians), and traces OLMoE T = 256 under the rule and at 32 rows: whether the tall
# tiles cause the gate/up phase's slow first tenths there (bench/NOTES.md, session 42).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, trace_one, bench_medians
nvidia-smi --query-gpu=name --format=csv,noheader
cmake --preset gpu -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe test_forward_gpu >>"$out/build.log" 2>&1 || {
  grep -v "ptxas info" "$out/build.log" | tail -30
  exit 1
}
stamp "built"
build/gpu/tests/test_forward_gpu --gtest_filter='Forward.Forced*:Forward.EveryDecodeKernel*' \
  >"$out/test.log" 2>&1
echo "test_forward_gpu exit $?"
grep -E "^\[  (PASSED|FAILED) " "$out/test.log"
stamp "tested"
settings=(FLASHMOE_BENCH_UNSET=1 FLASHMOE_BENCH_DECODE_ROWS=32 FLASHMOE_BENCH_DECODE_ROWS=16)
cells="OLMoE:192,256 Qwen3-30B-A3B:384,512 DeepSeek-V2-Lite:320"
for round in 1 2; do
  for i in "${!settings[@]}"; do
    for cell in $cells; do
      env FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS="${cell#*:}" "${settings[$i]}" \
        build/gpu/bench/bench_moe --benchmark_filter="^${cell%%:*}/bf16/" \
        >>"$out/bench_$i.txt" 2>&1
    done
  done
  stamp "round $round"
done
for i in "${!settings[@]}"; do
  echo "== ${settings[$i]}"
  bench_medians "$out/bench_$i.txt"
done
trace_one "$out/tr_rule" '^OLMoE/bf16/' 256 2048,1024 | grep -A4 "expert weights streamed"
trace_one "$out/tr_32" '^OLMoE/bf16/' 256 2048,1024 FLASHMOE_BENCH_DECODE_ROWS=32 |
  grep -A4 "expert weights streamed"
grep -h "first expert tile\|variant decode, T = 256, 264 blocks with" "$out"/tr_*/*.txt
stamp "traced"
