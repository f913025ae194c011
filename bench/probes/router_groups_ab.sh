#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 149, decode router tasks of two token groups (`router_groups.patch`, applied
# here to the device's copy of the tree) against one group a task on the same build, and against
# HEAD's library (a probe tree built beside it): the GPU tests that cover the router split, then
# bench_moe (cuBLAS off) at the decode T where the rule differs, HEAD's binary and the patched one
# with FLASHMOE_BENCH_ROUTER_GROUPS=1 and 0 (the rule), interleaved over two rounds, and (TRACE=1)
# one warmed trace each of Qwen3 T = 256. Other patches the same way: PATCHES (space-separated,
# applied in order; e.g. row 150's `bench/probes/select_nocount.patch` alone with GROUPS_AB=0,
# TOKENS=2,4,16,64,256 and TESTS='*Decode*:*OneToken*:*Padded*:*Bitwise*:*Caller*').
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
source bench/probes/tree.sh
fresh_tree head
HEAD=.probe/head
for patch in ${PATCHES:-bench/probes/router_groups.patch}; do
  apply_patch . "$patch" || exit 1
done
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
(cmake -S "$HEAD" -B build/head -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
   -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/head.log" 2>&1
 cmake --build build/head -j 6 --target bench_moe >>"$out/head.log" 2>&1
 echo "head build $?") &
cmake --build --preset gpu -j 10 --target test_forward_gpu test_trace_gpu test_workspace \
  bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
wait
echo "[$((SECONDS - start)) s] built"
build/gpu/tests/test_workspace >"$out/test_workspace.log" 2>&1
echo "test_workspace exit $?"
build/gpu/tests/test_trace_gpu >"$out/test_trace.log" 2>&1
echo "test_trace_gpu exit $?"
build/gpu/tests/test_forward_gpu \
  --gtest_filter="${TESTS:-*RouterGroups*:*EveryDecodeKernel*:*OneToken*:*Padded*:*Bitwise*}" \
  >"$out/tests.log" 2>&1
echo "test_forward_gpu exit $?"
grep -hE "^\[  (PASSED|FAILED) |FAILED" "$out"/test_*.log "$out/tests.log" | head -20
echo "[$((SECONDS - start)) s] tested"
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'}
variants=${GROUPS_AB:-1 0}
[ -x build/head/bench/bench_moe ] && variants="head $variants"
for round in 1 2; do
  for g in $variants; do
    bin=build/gpu/bench/bench_moe
    [ "$g" = head ] && bin=build/head/bench/bench_moe
    FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-64,128,192,256,384} \
      FLASHMOE_BENCH_ROUTER_GROUPS=${g/head/0} $bin --benchmark_filter="$filter" \
      >"$out/bench_${g}_$round.txt" 2>&1
    echo "groups=$g round $round: $(grep -oE '^[A-Za-z0-9-]+/bf16/T:[0-9]+|us_median=[0-9.]+' \
      "$out/bench_${g}_$round.txt" | paste -sd' ' | sed 's/us_median=//g; s#/bf16/T:#@#g')"
  done
done
echo "[$((SECONDS - start)) s] timed"
[ "${TRACE:-0}" = 1 ] || exit 0
for g in ${GROUPS_AB:-1 0}; do
  mkdir -p "$out/trace_$g"
  FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=256 FLASHMOE_BENCH_ROUTER_GROUPS=$g \
    FLASHMOE_BENCH_TRACE_DIR="$out/trace_$g" build/gpu/bench/bench_moe \
    --benchmark_filter='^Qwen3-30B-A3B/bf16/' >/dev/null 2>&1
  echo "== groups=$g"
  sed -n '1,12p' "$out/trace_$g"/*.txt 2>/dev/null
  for j in "$out/trace_$g"/*.json; do python3 bench/trace_prelude.py "$j" 2>&1 | head -14; done
  rm -f "$out/trace_$g"/*.json
done
echo "[$((SECONDS - start)) s] done"
