#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): where the decode kernels' time grows with T on the same weight bytes (bench/
# NOTES.md, session 37: Qwen3 T = 64 -> 256 +45 us on an H200, the peer +13). Applies
# decode_ablation.patch (results wrong whenever FLASHMOE_PROBE_ABLATE is set) and times, in one
# build, each bit of work left out against none, and HEAD's binary (the A/A of the patch):
# 1 the gate/up tiles' token rows, 2 the down tiles' h rows, 4 the h stores, 8 the partial rows
# and the combine, 16 the combine alone. Qwen3 and OLMoE at T = 16, 64, 256 (OLMoE T = 256 runs
# the engine, which the bits do not touch: a control). TOKENS and FILTER override the cells.
set -uo pipefail
bits="FLASHMOE_PROBE_ABLATE=1 FLASHMOE_PROBE_ABLATE=2 FLASHMOE_PROBE_ABLATE=4"
bits="$bits FLASHMOE_PROBE_ABLATE=8 FLASHMOE_PROBE_ABLATE=16"
PATCHES=bench/probes/decode_ablation.patch ENV_VARIANTS="$bits" TESTS=OFF \
  TOKENS=${TOKENS:-16,64,256} FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE)/bf16/'} \
  bash bench/probes/patch_ab.sh
