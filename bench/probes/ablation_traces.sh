#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine; run from the repository root with a clean
# working tree): where in the launch the per-pair rows' time goes (bench/NOTES.md, rows 158-160).
# Applies decode_ablation.patch to the working tree, builds bench_moe, then for each ablation bit
# (BITS; default none, 8 no rows and no combine, 16 no combine, 144 no combine with the rows
# stored into two rows a block) one traced forward of Qwen3 at T = 256 and 64 (the library's
# summary: first expert tile, blocks streaming per tenth, tail; trace_prelude.py and
# trace_gaps.py), and the same bits timed by bench_moe, two rounds.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
rm -rf build/gpu
apply_patch . bench/probes/decode_ablation.patch || exit 1
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
stamp "built"
bits=${BITS:-"0 8 16 144"}
tokens=${TOKENS:-64,256}
for a in $bits; do
  trace_one "$out/tr_a$a" '^Qwen3-30B-A3B/bf16/' "$tokens" 2048,768 FLASHMOE_PROBE_ABLATE="$a" \
    >"$out/tr_a$a.txt"
  echo "=== ablate $a"
  keys="FlashMoE trace|span|^  (kind|router|routing|gate_up|down|combine|wait) |first task|tail"
  grep -E "$keys|busy|expert tiles" "$out/tr_a$a.txt" | cut -c1-160 | head -40
done
stamp "traced"
export FLASHMOE_BENCH_NO_CUBLAS=1
for round in 1 2; do
  for a in $bits; do
    FLASHMOE_PROBE_ABLATE=$a FLASHMOE_BENCH_TOKENS=$tokens build/gpu/bench/bench_moe \
      --benchmark_filter='^Qwen3-30B-A3B/bf16/' >>"$out/bench_a$a.txt" 2>&1
  done
done
stamp "timed"
for a in $bits; do
  echo "== ablate $a"
  bench_medians "$out/bench_a$a.txt"
done
