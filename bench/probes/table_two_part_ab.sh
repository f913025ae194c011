#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 171, the decode tile table published in two parts (table_two_part.patch):
# the ticket total once the m-tile records are written, the row map after it under kRowMapDone,
# which a tile waits for only before it looks up its rows (its first weight stages are requested
# before). Against HEAD's binary with the full GPU ctest, and the patched tree traced at Qwen3
# T = 64 and 256 (the first expert tile against HEAD's: about 13.9 and 27 us on an H100).
PATCHES=bench/probes/table_two_part.patch TESTS=ON TOKENS=${TOKENS:-2,16,64,256} \
  TRACE_T="64 256" FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/' \
  bash bench/probes/patch_ab.sh
