#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 167, the decode tile table's row map placed in shared memory and copied out
# in order (table_smem.patch) against HEAD, with the full GPU ctest and Qwen3 traces at T = 64
# and 256 of the patched tree (the tile table's span is the prediction's check).
PATCHES=bench/probes/table_smem.patch TESTS=ON TOKENS=${TOKENS:-16,64,128,256} TRACE_T="64 256" \
  FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/' bash bench/probes/patch_ab.sh
