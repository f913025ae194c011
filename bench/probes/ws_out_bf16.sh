#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root): row 174 c.
# Row 174 b put the swap-AB consumers' 5-6% over the stream's ceiling in the epilogue's stores
# (the MMAs alone cost 0.6-1%), which write out in fp32; the library's ypart is bf16. This times
# the stores halved (the .../bf16 rows) beside row 174 b's rows, after the WsDecodeStream GPU test
# (the bf16 variants against the CPU), and bench_moe at T = 1 and 256 in the same call (cuBLAS
# off), so that on an H200 the stream's ceiling stands beside the layer issue 21 times.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build, bench_medians, ds_stream_rounds
gpu_build ON bench_ws_mainloop test_ws_mainloop_gpu bench_moe || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
build/gpu/tests/test_ws_mainloop_gpu --gtest_filter='WsDecodeStream.*' 2>&1 | tail -3
shapes='(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)'
variants='(no_mma/k128|wg1/k128|wg1/k128/no_store|no_mma/k128/store|wg1/k128/bf16'
variants+='|no_mma/k128/store/bf16|wg1/pair/k128|no_mma/pair/k128|wg1/pair/k128/bf16)'
ds_stream_rounds "$variants"
export FLASHMOE_BENCH_NO_CUBLAS=1
for round in 1 2; do
  FLASHMOE_BENCH_TOKENS=1,256 build/gpu/bench/bench_moe --benchmark_filter="^$shapes/bf16/" \
    >>"$out/bench_moe.txt" 2>&1
done
bench_medians "$out/bench_moe.txt"
stamp "bench_moe done"
