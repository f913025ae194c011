#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 153, expert tiles (the decode kernels' gate/up and down tiles, the engine's
# gate/up jobs: the engine runs OLMoE T = 256 and Mixtral from T = 128) that each start their K
# walk at a step of their own
# (`k_rotation.patch`, applied here to the device's copy of the tree). Through
# patch_ab.sh: the patched tree with its full GPU ctest, against HEAD's binary (variant
# `head`) and against itself with every walk from step 0 (FLASHMOE_BENCH_K_ROTATION=0, variant
# env1), two rounds; then one warmed trace each of Qwen3 T = 1, 4 and 64 and OLMoE T = 256 (the
# engine) with the rotation on and off. Their trace_tiles.py lines "started in the 1st us" and
# "started later" say whether the first wave of gate/up tiles (20-36% longer than the later ones
# in session 33's H200 traces) now runs as fast as the rest.
set -uo pipefail
source bench/probes/tree.sh
out=${OUT:-out}
PATCHES=bench/probes/k_rotation.patch ENV_VARIANTS=FLASHMOE_BENCH_K_ROTATION=0 \
  TOKENS=${TOKENS:-1,4,64,256} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|Mixtral-8x7B)/bf16/'} bash bench/probes/patch_ab.sh
for rot in 1 0; do
  echo "===== FLASHMOE_BENCH_K_ROTATION=$rot"
  for cell in "qwen3 ^Qwen3-30B-A3B/bf16/ 1,4,64 2048,768" "olmoe ^OLMoE/bf16/ 256 2048,1024"; do
    read -r name filter tokens shape <<<"$cell"
    dir="$out/trace_rot$rot/$name"
    trace_one "$dir" "$filter" "$tokens" "$shape" FLASHMOE_BENCH_K_ROTATION=$rot >/dev/null
    grep -hE "^(Qwen3|OLMoE)" "$dir/bench.txt" | sed -E 's/ +scratch.*//'
    for t in "$dir"/*.tiles.txt; do
      echo "--- $(basename "$t" .tiles.txt)"
      grep -E "^(gate_up|down):|started|^  (gate_up|down|both) " "$t"
    done
  done
done
