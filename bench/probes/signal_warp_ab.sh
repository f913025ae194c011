#!/usr/bin/env bash
# One device call (about 8 minutes), planned in session 24 (bench/NOTES.md rows 133-134): the
# working tree with signal_warp.patch (the counts and the m-tile publishes on warp 9) built with
# its tests and GPU ctest run on it, against main (`base`) and main with count_warp.patch (`cw`,
# the counts only), in two interleaved rounds; a trace of the patched tree at Qwen3 T = 1024.
# Run from the repository root on the device (a clean working tree: the patch goes in there).
set -uo pipefail
source bench/probes/tree.sh
fresh_tree base
fresh_tree cw
apply_patch .probe/cw bench/probes/count_warp.patch || exit 1
apply_patch . bench/probes/signal_warp.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:128)/'
TESTS=ON VARIANTS="base cw" TRACE_T=1024 FLASHMOE_BENCH_TOKENS=128,512,1024,4096 \
  bash bench/ab_session.sh "$filter"
