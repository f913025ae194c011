#!/usr/bin/env bash
# One device call (about 8 minutes): issue 20's third acceptance point, decode (T <= 128) within
# 2% of the library as it was before issue 20's engine (76ed7c2, the parent of its first
# commit) or better, measured in the same call: both builds, two interleaved rounds, cuBLAS off
# (bench/ab_session.sh), bf16 at T = 1, 4, 16, 64 and 128 on the four shapes. The old tree
# travels as .probe/pre20 (a `carry` path of the device call); make it on this machine first:
#   rm -rf .probe/pre20 && mkdir -p .probe/pre20 && git archive 76ed7c2 | tar -x -C .probe/pre20
# TOKENS overrides the token counts (each count adds about a minute).
set -uo pipefail
[ -f .probe/pre20/CMakeLists.txt ] || {
  echo "no .probe/pre20: make it from 76ed7c2 first (this script's header)"
  exit 1
}
tokens=${TOKENS:-1,4,16,64,128}
filter="^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/T:(${tokens//,/|})/"
VARIANTS=pre20 FLASHMOE_BENCH_TOKENS=$tokens bash bench/ab_session.sh "$filter"
