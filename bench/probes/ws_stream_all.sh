#!/usr/bin/env bash
# One short device call (about 5 minutes on a fresh machine; run from the repository root): row
# 174's first question, whether a warp-specialised stream beats the decode kernels' tile phase
# where every expert is touched. bench_ws_mainloop's DecodeStream rows (rows 94-96's prototype:
# one block an SM, a producer warp onto a 200 KB ring, swap-AB consumers, and its no-MMA
# ceiling) at all_experts (the bytes of T = 256; 16 token rows a slot), beside bench_moe at
# T = 256 (two rounds, cuBLAS off) and a warm trace of bench_moe's T = 256 forwards, whose
# expert tiles' span is the stream to beat (the prelude and tail are not the prototype's).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build, layer_rounds_and_traces
gpu_build OFF bench_moe bench_ws_mainloop || exit 1
shapes='(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)'
build/gpu/bench/bench_ws_mainloop --benchmark_filter="^DecodeStream/$shapes/(all_experts|T:1)/" \
  >"$out/ws_stream.txt" 2>&1
grep -E "^DecodeStream" "$out/ws_stream.txt" | sed -E 's/min_time:[0-9.]+\/manual_time//' |
  awk '{r = ""; for (i = 2; i <= NF; i++) if ($i ~ /^(us_median|weights_TBps)=/) r = r " " $i;
        print $1 r}'
stamp "stream rows done"
layer_rounds_and_traces 1,256
