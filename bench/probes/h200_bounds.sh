#!/usr/bin/env bash
# One device call (about 6 minutes; session 46; run from the repository root), meant for an H200,
# where the stream bounds of rows 143 and 174 were never measured (both ran on H100s only):
# 1. the weight stream's copy paths alone on one token's experts (row 143's StreamPath rows):
#    what any routed one-launch layer can reach at T = 1 on this card; and the prototype's
#    routing prelude alone (row 95: every block routes all tokens) beside an empty kernel;
# 2. row 174's warp-specialised stream at T = 1 and all_experts: its no-MMA ceiling, its swap-AB
#    consumer, row 174 f's discarded out lines, row 176's two blocks an SM on half rings and row
#    177's publisher warp;
# 3. bench_moe at T = 1, 4, 64 and 256, two rounds, and a warm trace of T = 256 (the expert
#    tiles' span that the ceiling is compared with).
# A tree already built on this machine (PART=5 of issue20_calls.sh) is reused. LAYER=0 skips
# part 3 and bench_moe's build (the stream bounds alone, about 3 minutes).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build, layer_rounds_and_traces
nvidia-smi --query-gpu=name --format=csv,noheader
layer=${LAYER:-1}
if [ "$layer" = 1 ]; then gpu_build OFF bench_moe bench_ws_mainloop || exit 1
else gpu_build OFF bench_ws_mainloop || exit 1; fi
ws=build/gpu/bench/bench_ws_mainloop
# One process a path: a path whose copy never lands traps, which fails the rest of its process.
for path in tma2d/r64_k128_s6 tma2d/r64_k128_s13 cp_async/r64_k128_s6 bulk1d_linear/r64_k128_s6 \
  bulk1d_linear/r64_k256_s3 ldg/r64 ldg_balanced; do
  $ws --benchmark_filter="^StreamPath/(Qwen3-30B-A3B|OLMoE|Qwen3-30B-A3B-32experts)/$path/" \
    >>"$out/stream_paths.txt" 2>&1
done
grep -E "^StreamPath" "$out/stream_paths.txt" | sed -E 's/\/iterations:[0-9]+\/manual_time//' |
  awk '{r = ""; for (i = 2; i <= NF; i++) if ($i ~ /^(us_median|weights_TBps|copy_GBps)=/)
        r = r " " $i; print $1 r}'
$ws --benchmark_filter='^DecodePrelude/' >"$out/prelude.txt" 2>&1
grep -E "^DecodePrelude" "$out/prelude.txt" | sed -E 's/\/iterations:[0-9]+\/manual_time//' |
  awk '{r = ""; for (i = 2; i <= NF; i++) if ($i ~ /^us_median=/) r = r " " $i; print $1 r}'
stamp "paths and prelude rows done"
shapes='(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)'
rows='no_mma/k128|no_mma/k128/store|no_mma/k128/store/discard_out'
rows+='|wg1/k128|wg1/k128/discard_out|wg2/in_flight1/k128'
rows+='|no_mma/k128/2cta|no_mma/k128/store/2cta|wg1/(in_flight1/)?k128/2cta'
rows+='|(wg1|no_mma)/k128(/store)?/(publisher|relaxed_pub)|wg2/in_flight1/k128/publisher'
ds_stream_rounds "($rows)"
[ "$layer" = 1 ] || exit 0
layer_rounds_and_traces 1,4,64,256
