#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root): row 164,
# how far past 32 rows an expert the decode kernels (the tall 48-row variant there) still beat
# the engine, now that row 163 found them 1-7% faster at 24-32 rows. bench_moe of the working
# tree at 40, 48 and 64 rows an expert for each shape, the library's rule (the engine) against
# FLASHMOE_BENCH_PREFILL_ROWS=64 (the decode kernels up to 64 rows), two rounds, medians.
# Rows an expert = T x K / E: OLMoE and Mixtral T / 8 and T / 4, Qwen3 T / 16, DeepSeek-V2-Lite
# 6 T / 64.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
source bench/probes/tree.sh
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
stamp "built"
export FLASHMOE_BENCH_NO_CUBLAS=1
cells=(
  'OLMoE:320,384,512'
  'Qwen3-30B-A3B:640,768,1024'
  'DeepSeek-V2-Lite:427,512,683'
  'Mixtral-8x7B:160,192,256'
)
for round in 1 2; do
  for rows in 0 64; do
    for cell in "${cells[@]}"; do
      FLASHMOE_BENCH_PREFILL_ROWS=$rows FLASHMOE_BENCH_TOKENS=${cell#*:} \
        build/gpu/bench/bench_moe --benchmark_filter="^${cell%%:*}/bf16/" \
        >>"$out/bench_rows$rows.txt" 2>&1
    done
  done
  stamp "round $round"
done
for rows in 0 64; do
  echo "== FLASHMOE_BENCH_PREFILL_ROWS=$rows (0: the library's rule)"
  bench_medians "$out/bench_rows$rows.txt"
done
