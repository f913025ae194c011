#!/usr/bin/env bash
# One device call (about 6 minutes with TESTS=ON; session 48, bench/NOTES.md row 182; run from
# the repository root with a clean working tree): ranked_select.patch (the top-k of a launch's
# one live token by the whole block, one expert a thread, each expert's rank counted at once
# instead of K serial warp rounds) with its full GPU ctest unless TESTS=OFF, against HEAD's
# binary, two interleaved rounds at T = 1 on the four shapes and T = 4 as a control.
set -uo pipefail
PATCHES=bench/probes/ranked_select.patch TOKENS=${TOKENS:-1,4} \
  FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/T:(1|4)/' \
  bash bench/probes/patch_ab.sh
