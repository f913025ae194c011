#!/usr/bin/env bash
# One device call (run from the repository root): bench_moe of the working tree at token counts
# around the decode/prefill switch, once under FLASHMOE_BENCH_PREFILL_ROWS=r for each r of ROWS
# (0: the library's rule; r: the decode kernels while experts average at most r rows), two
# rounds, medians. CELLS: space-separated shape:T,T,... (rows an expert = T x K / E). TESTS=ON
# builds everything and runs the full GPU ctest first. Wrapped by switch_rows_ab.sh (row 163),
# switch_rows_wide.sh (row 164) and switch_land.sh (row 165).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
nvidia-smi --query-gpu=name --format=csv,noheader
if [[ ${TESTS:-OFF} == ON ]]; then
  cmake --preset gpu >"$out/build.log" 2>&1
  target=all
else
  cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
  target=bench_moe
fi
cmake --build --preset gpu -j 16 --target "$target" >>"$out/build.log" 2>&1 || {
  grep -v "ptxas info" "$out/build.log" | tail -30
  exit 1
}
stamp "built"
if [[ ${TESTS:-OFF} == ON ]]; then
  ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
  echo "ctest exit $?"
  grep -E "tests passed|\(Failed\)" "$out/ctest.log"
  stamp "tested"
fi
export FLASHMOE_BENCH_NO_CUBLAS=1
for round in 1 2; do
  for rows in $ROWS; do
    for cell in $CELLS; do
      FLASHMOE_BENCH_PREFILL_ROWS=$rows FLASHMOE_BENCH_TOKENS=${cell#*:} \
        build/gpu/bench/bench_moe --benchmark_filter="^${cell%%:*}/bf16/" \
        >>"$out/bench_rows$rows.txt" 2>&1
    done
  done
  stamp "round $round"
done
for rows in $ROWS; do
  echo "== FLASHMOE_BENCH_PREFILL_ROWS=$rows (0: the library's rule)"
  bench_medians "$out/bench_rows$rows.txt"
done
