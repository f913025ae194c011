#!/usr/bin/env bash
# One device call (about 6 minutes with TESTS=ON; session 48, bench/NOTES.md row 181; run from
# the repository root with a clean working tree): table_counts.patch (decode launches of 2 or
# more live tokens and at most one pair a thread: the selects register their pairs without the
# expert counter's atomic, and the tile table's builder counts them in shared memory and writes
# the row map from registers) with its full GPU ctest unless TESTS=OFF, against HEAD's binary,
# two interleaved rounds at the token counts it touches (T = 2-32 at Qwen3 and OLMoE) and T = 1
# and 64 as controls (T = 64 takes the old path: 512 pairs).
set -uo pipefail
PATCHES=bench/probes/table_counts.patch TOKENS=${TOKENS:-1,2,4,16,32,64} \
  FILTER='^(Qwen3-30B-A3B|OLMoE)/bf16/T:(1|2|4|16|32|64)/' bash bench/probes/patch_ab.sh
