#!/usr/bin/env bash
# One device call (about 9 minutes; session 28, bench/NOTES.md row 145): the fused decode tile
# (fused_decode.patch, applied to the working tree) with its GPU tests, then T = 1-4 on the
# four shapes with the fused kernel (FLASHMOE_BENCH_FUSED_DECODE=1, env1) against the same
# build's decode kernels (gpu), and one traced forward of each at Qwen3 T = 1. Run after row
# 144's bound said the fused tile can pay; from the repository root on the device, on a clean
# working tree (`git checkout -- src tests bench && rm src/device/fused_tile.cuh` afterwards).
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
apply_patch . bench/probes/fused_decode.patch || exit 1
filter='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/T:(1|2|3|4)/'
TESTS=ON ENV_VARIANTS="FLASHMOE_BENCH_FUSED_DECODE=1" FLASHMOE_BENCH_TOKENS=1,2,3,4 \
  bash bench/ab_session.sh "$filter"
grep -E "FusedDecode|ForcedDecode" "$out/ctest.log"
trace_one "$out/tr_decode" '^Qwen3-30B-A3B/bf16/T:1/' 1 2048,768
trace_one "$out/tr_fused" '^Qwen3-30B-A3B/bf16/T:1/' 1 2048,768 FLASHMOE_BENCH_FUSED_DECODE=1
