#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 173, the decode kernels' run-ahead across tiles (run_ahead.patch): a tile's
# thread 0 claims and locates the block's next ticket early in its K loop, and requests that
# tile's first weight stages as soon as its own pipeline is free, before its epilogue. The
# patched tree (tests on) against HEAD's bench_moe built beside it, and against itself with the
# run-ahead off (FLASHMOE_PROBE_RUNAHEAD=0: the patch's code without its effect), two rounds;
# then the patched tree's forward GPU tests, within what is left of the call (CTEST_S).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, fresh_tree, apply_patch, build_variant, bench_medians
fresh_tree head
rm -rf build/gpu build/head  # a warm machine's objects may be newer than these sources
apply_patch . bench/probes/run_ahead.patch || exit 1
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
(cmake --build --preset gpu -j 10 >>"$out/build.log" 2>&1; echo "gpu build $?") &
build_variant head &
wait
stamp "builds done"
[ -x build/gpu/bench/bench_moe ] || { tail -30 "$out/build.log"; exit 1; }
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'}
export FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-16,64,256}
for round in 1 2; do
  build/head/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_head.txt" 2>&1
  build/gpu/bench/bench_moe --benchmark_filter="$filter" >>"$out/bench_gpu.txt" 2>&1
  FLASHMOE_PROBE_RUNAHEAD=0 build/gpu/bench/bench_moe --benchmark_filter="$filter" \
    >>"$out/bench_off.txt" 2>&1
  stamp "round $round done"
done
for v in head gpu off; do
  echo "== $v"
  bench_medians "$out/bench_$v.txt"
done
timeout "${CTEST_S:-150}" ctest --preset gpu -j 4 --timeout 120 -R forward_gpu \
  >"$out/ctest.log" 2>&1
echo "ctest (forward_gpu) exit $?"
grep -E "tests passed|\(Failed\)|Timeout" "$out/ctest.log"
stamp "tests done"
