#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; session 46, bench/NOTES.md row 179; run
# from the repository root with a clean working tree): deferred_count.patch, the decode kernels'
# gate/up count (the release that waits for the tile's h stores to be acknowledged) left pending
# by thread 0 and released at the block's next tile, right after that tile's first weight stages
# are requested and before any of its waits, or at the block's exit. Full GPU ctest on the
# patched tree (the waits' order is what could go wrong), then against HEAD's binary in the
# same call, two rounds, the decode kernels at T = 1-256.
set -uo pipefail
PATCHES=bench/probes/deferred_count.patch TOKENS=1,4,16,64,256 \
  FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/T:(1|4|16|64|256)/' \
  bash bench/probes/patch_ab.sh
