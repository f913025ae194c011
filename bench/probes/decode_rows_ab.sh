#!/usr/bin/env bash
# One device call (about 5 minutes on a fresh machine; run from the repository root): row 169,
# the decode m-tile height rules measured. Builds bench_moe and test_forward_gpu, runs the
# forward tests that force each decode kernel and height, then bench_moe on cells where the rule
# takes the tall (48-row) kernels, under the rule and FLASHMOE_BENCH_DECODE_ROWS=32 / 16 (two
# rounds, medians), and traces OLMoE T = 256 under the rule and at 32 rows: whether the tall
# tiles cause the gate/up phase's slow first tenths there (bench/NOTES.md, session 42).
set -uo pipefail
SETTINGS="- FLASHMOE_BENCH_DECODE_ROWS=32 FLASHMOE_BENCH_DECODE_ROWS=16" \
  CELLS="OLMoE:192,256 Qwen3-30B-A3B:384,512 DeepSeek-V2-Lite:320" \
  GTEST_FILTER='Forward.Forced*:Forward.EveryDecodeKernel*' bash bench/probes/cells_ab.sh
source bench/probes/tree.sh  # $out, stamp, trace_one
trace_one "$out/tr_rule" '^OLMoE/bf16/' 256 2048,1024 | grep -A4 "expert weights streamed"
trace_one "$out/tr_32" '^OLMoE/bf16/' 256 2048,1024 FLASHMOE_BENCH_DECODE_ROWS=32 |
  grep -A4 "expert weights streamed"
grep -h "first expert tile\|variant decode, T = 256, 264 blocks with" "$out"/tr_*/*.txt
stamp "traced"
