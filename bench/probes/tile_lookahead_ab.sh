#!/usr/bin/env bash
# One device call (about 9 minutes on a fresh machine with the GPU tests; run from the repository
# root with a clean working tree): row 157, the decode kernels' look-ahead across tiles
# (`tile_lookahead.patch`): a finishing tile's thread 0 claims the block's next ticket and
# requests its first weight stages while the other threads count the tile and combine. Through
# patch_ab.sh: the patched tree with its full GPU ctest, against HEAD's binary (variant `head`)
# and against itself with the look-ahead off (FLASHMOE_PROBE_LOOKAHEAD=0, variant env1: the
# patch's code without its effect, since the patch moves the decode kernels' spills).
set -uo pipefail
PATCHES=bench/probes/tile_lookahead.patch ENV_VARIANTS="FLASHMOE_PROBE_LOOKAHEAD=0" \
  TESTS=${TESTS:-ON} TOKENS=${TOKENS:-1,16,64,256} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|Mixtral-8x7B)/bf16/'} bash bench/probes/patch_ab.sh
