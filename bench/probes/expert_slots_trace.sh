#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root with a clean
# working tree): why row 151's expert slots gained 0.2% where 1.5-2% was predicted. Applies
# expert_slots.patch to the device's copy of the tree, builds bench_moe afresh, and traces one
# warmed forward of Qwen3 T = 64 and 128 with the slots by the rule (on at these T) and off
# (FLASHMOE_BENCH_EXPERT_SLOTS=1), each read by trace_tiles.py (the weights' stream per tenth of
# the span), trace_prelude.py (the routing chain) and trace_gaps.py. What to read: whether the
# first wave's gate/up tiles (claimed at about 4 us) end earlier with the slots than without, and
# whether the first tenths stream more bytes; if they do not, the early stages are not landing
# while routing runs.
set -uo pipefail
source bench/probes/tree.sh
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
apply_patch . bench/probes/expert_slots.patch || exit 1
rm -rf build/gpu  # a warm machine keeps an earlier patch's objects
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
echo "[$((SECONDS - start)) s] built"
for slots in 0 1; do
  echo "===== FLASHMOE_BENCH_EXPERT_SLOTS=$slots"
  trace_one "$out/slots$slots" '^Qwen3-30B-A3B/bf16/' 64,128 2048,768 \
    FLASHMOE_BENCH_EXPERT_SLOTS=$slots | grep -vE '^\s*$' | head -150
done
echo "[$((SECONDS - start)) s] done"
