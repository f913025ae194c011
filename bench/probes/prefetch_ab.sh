#!/usr/bin/env bash
# One device call (about 8 minutes), planned in session 25 (bench/NOTES.md row 138): the working
# tree with first_wave_prefetch.patch (each engine block asks L2 for the first stages of its
# guessed first gate/up tile's weights at launch, while routing runs) built with its tests and
# GPU ctest run on it; FLASHMOE_BENCH_PREFETCH = 8 (8 stages, normal priority: rows 27 / 59's
# kind), 264 (8 stages, evict-last) and 272 (16 stages, evict-last) against 0 through the same
# binary, in two interleaved rounds; a trace of Qwen3 T = 1024 under 264 (the first tiles' start
# and the first tenths' stream rate).
# Run from the repository root on the device (a clean working tree: the patch goes in there).
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
apply_patch . bench/probes/first_wave_prefetch.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:128)/'
TESTS=ON FLASHMOE_BENCH_TOKENS=128,512,1024,4096 \
  ENV_VARIANTS="FLASHMOE_BENCH_PREFETCH=8 FLASHMOE_BENCH_PREFETCH=264 FLASHMOE_BENCH_PREFETCH=272" \
  bash bench/ab_session.sh "$filter"
trace_one "$out/tr264" '^Qwen3-30B-A3B/bf16/T:1024/' 1024 2048,768 FLASHMOE_BENCH_PREFETCH=264
