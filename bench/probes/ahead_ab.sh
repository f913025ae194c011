#!/usr/bin/env bash
# One device call (about 8 minutes), planned in session 25 (bench/NOTES.md rows 135-136): the
# working tree with weights_ahead.patch and gather_lead.patch (a job's first weight boxes stream
# while its inputs are written; the gathers interleaved with the gate/up tiles after one wave)
# built with its tests and GPU ctest run on it, against main (`base`) and main with
# weights_ahead.patch alone (`wa`), and the working tree again with the gather lead off (env1:
# the weights ahead alone, through the new code) and at half a wave (env2), in two interleaved
# rounds; a trace of the working tree at Qwen3 T = 512 and 1024.
# Run from the repository root on the device (a clean working tree: the patches go in there).
set -uo pipefail
source bench/probes/tree.sh
fresh_tree base
fresh_tree wa
apply_patch .probe/wa bench/probes/weights_ahead.patch || exit 1
apply_patch . bench/probes/weights_ahead.patch || exit 1
apply_patch . bench/probes/gather_lead.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:128)/'
TESTS=ON VARIANTS="base wa" TRACE_T="512 1024" FLASHMOE_BENCH_TOKENS=128,512,1024,4096 \
  ENV_VARIANTS="FLASHMOE_BENCH_GATHER_LEAD=0 FLASHMOE_BENCH_GATHER_LEAD=0.5" \
  bash bench/ab_session.sh "$filter"
