#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine; run from the repository root): row 174 b,
# what the swap-AB consumers cost the warp-specialised decode stream at all_experts (row 174: 5-6%
# over its no-MMA ceiling whatever the consumer variant). bench_ws_mainloop's DecodeStream rows, two
# rounds: wg1/k128 (the consumers as they are), wg1/k128/no_store (the MMAs without the epilogue: no
# exchange, barrier or stores of h and out), no_mma/k128/store (the epilogue on zero products
# without the MMAs), no_mma/k128 (neither), wg2/in_flight1/k128, and stages of 256 K columns
# (wg1/k256, no_mma/k256: half the per-stage waits and releases), and paired tiles (wg1/pair...: 128
# weight rows a tile, two MMAs a K step, the epilogue from registers; no_mma/pair/k128 their
# ceiling), and paired tiles on slots of 32 and 48 token rows (n32, n48: the MMA's N at OLMoE T =
# 256, whose experts average 32 rows).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build, ds_stream_rounds
gpu_build ON bench_ws_mainloop test_ws_mainloop_gpu || exit 1
# The consumer variants against the CPU (256-column stages, paired tiles, 32 and 48 rows: new).
build/gpu/tests/test_ws_mainloop_gpu --gtest_filter='WsDecodeStream.*' 2>&1 | tail -3
shapes='(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)'
variants='(wg1/k128|wg1/k128/no_store|no_mma/k128|no_mma/k128/store|wg2/in_flight1/k128'
variants+='|wg1/k256|no_mma/k256|wg1/pair|wg1/pair/k128|wg1/pair/in_flight1/k128|no_mma/pair/k128'
variants+='|wg1/pair/k128/n32|wg1/pair/k128/n48|no_mma/pair/k128/n48)'
ds_stream_rounds "$variants"
