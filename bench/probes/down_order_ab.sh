#!/usr/bin/env bash
# One device call (about 9 minutes), planned in session 25 (bench/NOTES.md row 137): the working
# tree with down_order.patch (runtime switches of the down phase, FLASHMOE_BENCH_PROBE_BITS:
# 1 down tiles column-major, in the engine and the decode kernels; 2 w2 evict-first and 4 ypart
# lines discarded after the combine, the engine only) built with its tests and GPU ctest run on
# it; bits 1, 5 and 7 against 0 (main's down phase through the same binary) in two interleaved
# rounds, at the engine's cells and at T = 256 (Qwen3 and DeepSeek-V2-Lite run the decode
# kernels there); traces of Qwen3 T = 1024 under bits 0 and 7, read by trace_tiles.py (weights'
# stream rate per tenth) and trace_gaps.py (idle blocks per tenth).
# Run from the repository root on the device (a clean working tree: the patch goes in there).
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
apply_patch . bench/probes/down_order.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(256|512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:(256|1024)|Mixtral-8x7B/bf16/T:128)/'
TESTS=ON FLASHMOE_BENCH_TOKENS=128,256,512,1024,4096 \
  ENV_VARIANTS="FLASHMOE_BENCH_PROBE_BITS=1 FLASHMOE_BENCH_PROBE_BITS=5 FLASHMOE_BENCH_PROBE_BITS=7" \
  bash bench/ab_session.sh "$filter"
for bits in 0 7; do
  trace_one "$out/tr$bits" '^Qwen3-30B-A3B/bf16/T:1024/' 1024 2048,768 \
    FLASHMOE_BENCH_PROBE_BITS=$bits
done
