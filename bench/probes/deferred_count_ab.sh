#!/usr/bin/env bash
# One device call (about 10 minutes on a fresh machine with TESTS=ON, about 7 with TESTS=OFF;
# session 46, bench/NOTES.md rows 178-179; run from the repository root with a clean working
# tree): deferred_count.patch in the working tree (the decode kernels' gate/up count left pending
# by thread 0 and released at the block's next tile, right after its first weight stages are
# requested and before any of its waits, or at the block's exit; with release order, as row 178)
# with its full GPU ctest unless TESTS=OFF (the waits' order is what could go wrong), against
# HEAD's binary (`head`) and row 178 alone (`r178`, release_count.patch: the release order
# without the deferral), two interleaved rounds, the decode kernels at T = 1-256.
set -uo pipefail
source bench/probes/tree.sh  # fresh_tree, apply_patch
fresh_tree head
fresh_tree r178
apply_patch .probe/r178 bench/probes/release_count.patch || exit 1
# A warm machine keeps build/gpu; build the patched working tree afresh (patch_ab.sh's note).
rm -rf build/gpu
apply_patch . bench/probes/deferred_count.patch || exit 1
VARIANTS="head r178" TESTS=${TESTS:-ON} FLASHMOE_BENCH_TOKENS=1,4,16,64,256 \
  bash bench/ab_session.sh '^(Qwen3-30B-A3B|OLMoE)/bf16/T:(1|4|16|64|256)/'
