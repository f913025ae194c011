#!/usr/bin/env bash
# One device call (run from the repository root): bench_moe of the working tree on chosen cells
# under each of several run-time settings, two rounds, medians. SETTINGS: space-separated
# NAME=VALUE, one bench_moe setting a variant (`-`: none, the library's rules). CELLS:
# space-separated shape:T,T,... TESTS=ON builds everything and runs the full GPU ctest first;
# GTEST_FILTER instead builds test_forward_gpu beside bench_moe and runs the tests it names.
# Wrapped by switch_rows_ab.sh (row 163), switch_rows_wide.sh (row 164), switch_land.sh (row 165),
# decode_kernels_ab.sh (row 166) and decode_rows_ab.sh (row 169).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
nvidia-smi --query-gpu=name --format=csv,noheader
if [[ ${TESTS:-OFF} == ON ]]; then
  cmake --preset gpu >"$out/build.log" 2>&1
  targets=(all)
elif [[ -n ${GTEST_FILTER:-} ]]; then
  cmake --preset gpu -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
  targets=(bench_moe test_forward_gpu)
else
  cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
  targets=(bench_moe)
fi
cmake --build --preset gpu -j 16 --target "${targets[@]}" >>"$out/build.log" 2>&1 || {
  grep -v "ptxas info" "$out/build.log" | tail -30
  exit 1
}
stamp "built"
if [[ ${TESTS:-OFF} == ON ]]; then
  ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
  echo "ctest exit $?"
  grep -E "tests passed|\(Failed\)" "$out/ctest.log"
  stamp "tested"
elif [[ -n ${GTEST_FILTER:-} ]]; then
  build/gpu/tests/test_forward_gpu --gtest_filter="$GTEST_FILTER" >"$out/test.log" 2>&1
  echo "test_forward_gpu exit $?"
  grep -E "^\[  (PASSED|FAILED) " "$out/test.log"
  stamp "tested"
fi
read -r -d "" -a settings <<<"$SETTINGS"  # every line of it
for round in 1 2; do
  for i in "${!settings[@]}"; do
    setting=${settings[$i]}
    [[ $setting == - ]] && setting=FLASHMOE_BENCH_UNSET=1
    for cell in $CELLS; do
      env FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS="${cell#*:}" "$setting" \
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
