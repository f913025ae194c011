#!/usr/bin/env bash
# One device call (about 3 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 168, where the decode prelude's selects and tile table spend their time
# (table_phases.patch's checkpoints, read by table_phases.py) at Qwen3 T = 1 / 16 / 64 / 256 and
# OLMoE T = 256, one warm traced forward each.
set -uo pipefail
source bench/probes/tree.sh
apply_patch . bench/probes/table_phases.patch || exit 1
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  grep -v "ptxas info" "$out/build.log" | tail -30
  exit 1
}
stamp "built"
for cell in Qwen3-30B-A3B:1 Qwen3-30B-A3B:16 Qwen3-30B-A3B:64 Qwen3-30B-A3B:256 OLMoE:256; do
  dir="$out/tr_${cell%%:*}_${cell#*:}"
  mkdir -p "$dir"
  FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS="${cell#*:}" FLASHMOE_BENCH_TRACE_DIR="$dir" \
    build/gpu/bench/bench_moe --benchmark_filter="^${cell%%:*}/bf16/" >"$dir/bench.txt" 2>&1
  python3 bench/probes/table_phases.py "$dir"/*.json
  python3 bench/trace_prelude.py "$dir"/*.json | sed -n 2,7p
  rm -f "$dir"/*.json
done
stamp "traced"
