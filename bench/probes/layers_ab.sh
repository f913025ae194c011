#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root): what an
# engine's colder layers cost. bench_moe (cuBLAS off) at Qwen3 and OLMoE T = 1, 4, 64 with its
# timed forwards on one layer (FLASHMOE_BENCH_LAYERS=1, bench_moe's standard rows) and cycling
# over eight layers of the shape (=8: each forward finds the previous layer's weights, router and
# translations, not its own), interleaved over two rounds; then one warmed trace of Qwen3 T = 4
# each way, whose trace_tiles.py split says whether the first wave of gate/up tiles is slower
# when the layers are cold (bench/NOTES.md, row 153).
set -uo pipefail
source bench/probes/tree.sh
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
rm -rf build/gpu  # a warm machine may hold a probe patch's objects (patch_ab.sh)
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
echo "[$((SECONDS - start)) s] built"
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE)/bf16/'}
for round in 1 2; do
  for n in 1 8; do
    FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-1,4,64} FLASHMOE_BENCH_LAYERS=$n \
      build/gpu/bench/bench_moe --benchmark_filter="$filter" >"$out/bench_${n}_$round.txt" 2>&1
    echo "layers=$n round $round: $(grep -oE '^[A-Za-z0-9-]+/bf16/T:[0-9]+|us_median=[0-9.]+' \
      "$out/bench_${n}_$round.txt" | paste -sd' ' | sed 's/us_median=//g')"
  done
done
echo "[$((SECONDS - start)) s] timed"
for n in 1 8; do
  dir="$out/trace_layers$n"
  trace_one "$dir" '^Qwen3-30B-A3B/bf16/' 4 2048,768 FLASHMOE_BENCH_LAYERS=$n >/dev/null
  for t in "$dir"/*.tiles.txt; do
    echo "--- layers=$n $(basename "$t" .tiles.txt)"
    grep -E "^(gate_up|down):|started|^  (gate_up|down|both) " "$t"
  done
done
echo "[$((SECONDS - start)) s] done"
