#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 173 b, what row 173's loss is made of. bench_moe only, two rounds, cuBLAS
# off, in one call:
#   head      HEAD's binary
#   late      run_ahead_late.patch: row 173 with the claim kAhead + 2 steps before the K loop's
#             end, so that a block holds its next ticket only for its tile's last stages
#   late_off  the same binary with FLASHMOE_PROBE_RUNAHEAD=0 (its code without its effect)
#   nofence   run_ahead_late_nofence.patch with the run-ahead off: the code less run's two proxy
#             fences (not safe with the run-ahead on, so only timed off)
#   fence     run_fence.patch: HEAD plus those fences alone
# TOKENS and FILTER pick the cells.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, fresh_tree, apply_patch, build_variant, bench_medians
for v in head nofence fence; do fresh_tree "$v"; done
apply_patch .probe/nofence bench/probes/run_ahead_late_nofence.patch || exit 1
apply_patch .probe/fence bench/probes/run_fence.patch || exit 1
# A warm machine keeps build folders whose objects may be newer than these trees' sources.
rm -rf build/gpu build/head build/nofence build/fence
apply_patch . bench/probes/run_ahead_late.patch || exit 1
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
(cmake --build --preset gpu -j 4 --target bench_moe >>"$out/build.log" 2>&1; echo "gpu build $?") &
for v in head nofence fence; do build_variant "$v" 4 & done
wait
stamp "builds done"
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'}
export FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-64,256}
for round in 1 2; do
  build/head/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_head.txt" 2>&1
  build/gpu/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_late.txt" 2>&1
  FLASHMOE_PROBE_RUNAHEAD=0 build/gpu/bench/bench_moe --benchmark_filter="$filter" \
    >>"$out/bench_late_off.txt" 2>&1
  FLASHMOE_PROBE_RUNAHEAD=0 build/nofence/bench/bench_moe --benchmark_filter="$filter" \
    >>"$out/bench_nofence.txt" 2>&1
  build/fence/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_fence.txt" 2>&1
  stamp "round $round done"
done
for v in head late late_off nofence fence; do
  echo "== $v"
  bench_medians "$out/bench_$v.txt"
done
