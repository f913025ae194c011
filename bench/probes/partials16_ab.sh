#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 155, the decode kernels' per-pair rows in the activation type
# (`partials16.patch`, variant tree p16) and row 156, the same with the down tiles' routing
# weights read into shared memory at the tile's start (`partials16_weights.patch`, the working
# tree), against HEAD's binary. Builds bench_moe of each and test_forward_gpu of the working tree,
# runs two interleaved rounds of bench_moe at T = 16, 64, 256 on Qwen3, OLMoE and Mixtral
# (TOKENS, FILTER override; cuBLAS off), then test_forward_gpu (the decode matrix, forced kernels
# and down slices against the CPU reference). Logs under $OUT.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
fresh_tree head
fresh_tree p16
apply_patch .probe/p16 bench/probes/partials16.patch || exit 1
rm -rf build/gpu
apply_patch . bench/probes/partials16_weights.patch || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/cfg.log" 2>&1
(cmake --build build/gpu -j 8 --target bench_moe test_forward_gpu >"$out/gpu.log" 2>&1
 echo "gpu build $?") &
for v in head p16; do
  (cmake -S ".probe/$v" -B "build/$v" -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_CUDA_ARCHITECTURES=90a-real -DFLASHMOE_BUILD_TESTS=OFF \
     -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/$v.log" 2>&1
   cmake --build "build/$v" -j 5 --target bench_moe >>"$out/$v.log" 2>&1
   echo "$v build $?") &
done
wait
stamp "builds done"
export FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-16,64,256}
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|Mixtral-8x7B)/bf16/'}
for round in 1 2; do
  for v in head p16 gpu; do
    "build/$v/bench/bench_moe" --benchmark_filter="$filter" >>"$out/bench_$v.txt" 2>&1
  done
  stamp "round $round done"
done
for v in head p16 gpu; do
  echo "== $v"
  grep -E "^(Qwen|OLMoE|Deep|Mixtral)" "$out/bench_$v.txt" |
    sed -E 's/min_time:[0-9.]+\/manual_time//' |
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /^us_median=/) m[$1] = m[$1] " " substr($i, 11)}
         END {for (k in m) print k m[k]}' | sort
done
timeout ${TEST_S:-120} build/gpu/tests/test_forward_gpu --gtest_brief=1 >"$out/test.log" 2>&1
echo "test_forward_gpu exit $?"
grep -E "PASSED|FAILED|Failure" "$out/test.log" | head -20
stamp "tests done"
