#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; session 46, bench/NOTES.md row 178; run
# from the repository root with a clean working tree): release_count.patch, the gate/up tiles'
# m-tile count (decode kernels and engine) added with release order instead of acq_rel. Its old
# value is never read, so the acquire only made thread 0 wait for the atomic's round trip, and
# the block with it at the next barrier. Full GPU ctest on the patched tree, then against HEAD's
# binary in the same call, two rounds: the decode kernels at T = 1-256 and the engine at 1024.
set -uo pipefail
PATCHES=bench/probes/release_count.patch TOKENS=1,4,16,64,256,1024 \
  FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/T:(1|4|16|64|256|1024)/' \
  bash bench/probes/patch_ab.sh
