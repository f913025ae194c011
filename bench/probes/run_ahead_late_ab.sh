#!/usr/bin/env bash
# One short device call (about 4 minutes on a fresh machine; run from the repository root):
# row 173 b, the run-ahead with the claim moved late in the K loop (run_ahead_late.patch: kAhead
# + 2 steps before its end, so that a block holds its next ticket only for the last stages of
# its current tile), bench_moe only: HEAD's binary, the patched one, and the patched one with
# the run-ahead off (FLASHMOE_PROBE_RUNAHEAD=0), two rounds at T = 256 (TOKENS, FILTER).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, fresh_tree, apply_patch, bench_medians
fresh_tree head
rm -rf build/gpu
apply_patch . bench/probes/run_ahead_late.patch || exit 1
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
(cmake --build --preset gpu -j 8 --target bench_moe >>"$out/build.log" 2>&1; echo "gpu build $?") &
(cmake -S .probe/head -B build/head -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
   -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/head.log" 2>&1
 cmake --build build/head -j 8 --target bench_moe >>"$out/head.log" 2>&1
 echo "head build $?") &
wait
stamp "builds done"
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE)/bf16/'}
export FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-256}
for round in 1 2; do
  build/head/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_head.txt" 2>&1
  build/gpu/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_gpu.txt" 2>&1
  FLASHMOE_PROBE_RUNAHEAD=0 build/gpu/bench/bench_moe --benchmark_filter="$filter" \
    >>"$out/bench_off.txt" 2>&1
  stamp "round $round done"
  for v in head gpu off; do
    echo "== $v"
    bench_medians "$out/bench_$v.txt"
  done
done
