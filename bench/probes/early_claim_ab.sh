#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine with TESTS=ON, about 5 with TESTS=OFF;
# session 47, bench/NOTES.md row 180; run from the repository root with a clean working tree).
# On an H200 it first runs `LAYER=0 h200_bounds.sh` (the stream bounds never measured there,
# about 2 minutes more) unless SKIP_BOUNDS=1.
# early_claim.patch in the working tree (thread 0 claims the block's next ticket before the loop
# top's first barrier and stores it after; a gate/up tile's count released by warp 1 with
# release order, as row 178), with its full GPU ctest unless TESTS=OFF, against HEAD's binary,
# two interleaved rounds, the decode kernels at T = 1-256 (row 178 alone was measured in
# session 47: deferred_count_ab.sh's `r178`).
set -uo pipefail
case $(nvidia-smi --query-gpu=name --format=csv,noheader) in
  *H200*) [ "${SKIP_BOUNDS:-0}" = 1 ] || LAYER=0 bash bench/probes/h200_bounds.sh ;;
esac
PATCHES=bench/probes/early_claim.patch TOKENS=1,4,16,64,256 \
  FILTER='^(Qwen3-30B-A3B|OLMoE)/bf16/T:(1|4|16|64|256)/' bash bench/probes/patch_ab.sh
