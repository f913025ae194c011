#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root): the
# working tree with the switch at 32 rows an expert on every device (row 165): its full GPU
# ctest, then bench_moe at 24-32 rows an expert under the library's rule against
# FLASHMOE_BENCH_PREFILL_ROWS=23 (the engine from 24 rows, the old rule for small experts; for
# Mixtral-8x7B's large experts the old rule began at 28, which 112 and 128 are), two rounds.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
source bench/probes/tree.sh
nvidia-smi --query-gpu=name --format=csv,noheader
cmake --preset gpu >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
stamp "built"
ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
echo "ctest exit $?"
grep -E "tests passed|\(Failed\)" "$out/ctest.log"
stamp "tested"
export FLASHMOE_BENCH_NO_CUBLAS=1
cells=(
  'OLMoE:192,224,256'
  'Qwen3-30B-A3B:384,448,512'
  'DeepSeek-V2-Lite:256,320'
  'Mixtral-8x7B:112,128'
)
for round in 1 2; do
  for rows in 0 23; do
    for cell in "${cells[@]}"; do
      FLASHMOE_BENCH_PREFILL_ROWS=$rows FLASHMOE_BENCH_TOKENS=${cell#*:} \
        build/gpu/bench/bench_moe --benchmark_filter="^${cell%%:*}/bf16/" \
        >>"$out/bench_rows$rows.txt" 2>&1
    done
  done
  stamp "round $round"
done
for rows in 0 23; do
  echo "== FLASHMOE_BENCH_PREFILL_ROWS=$rows (0: the library's rule)"
  bench_medians "$out/bench_rows$rows.txt"
done
