#!/usr/bin/env bash
# Row 185 in one device call (about 9 minutes on a fresh machine; run from the repository root):
# the working tree built with its tests, the full GPU ctest, then bench_moe in two interleaved
# rounds with the table-free decode launch on (the library's default since row 185: variant
# `gpu`) and off (env1: FLASHMOE_BENCH_TABLE_FREE=0, the tile table's path) in the same binary,
# at the T where it applies (2 to 16 on the thin kernels; T x K <= 256) and T = 1 / 32 as
# controls. TESTS=OFF skips the tests.
set -uo pipefail
tokens=${TOKENS:-1,2,4,8,16,32}
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/'}
TESTS=${TESTS:-ON} FLASHMOE_BENCH_TOKENS=$tokens ENV_VARIANTS="FLASHMOE_BENCH_TABLE_FREE=0" \
  bash bench/ab_session.sh "$filter"
