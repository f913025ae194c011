#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root): row 174 d.
# Row 174 c found the swap-AB epilogue's 5% over the stream's ceiling nearly unchanged with out's
# bytes halved, so the cost is not the bytes written. This times the epilogue (on zero products)
# with its parts left out, one at a time (timing-only variants): the proxy fence after h, out's
# stores, h's stores, all three; the MMA consumers without the fence; and a 1000-cycle spin a
# job in place of the epilogue (a stall with no memory traffic). VARIANTS (a regex) picks others:
# row 174 e's, VARIANTS='(no_mma/k128|no_mma/k128/store|no_mma/k128/store/contiguous|wg1/k128
# |wg1/k128/contiguous|wg1/k128/bf16/contiguous)' (one line): each tile's h and out as one block.
# Row 174 f's, VARIANTS='(no_mma/k128|no_mma/k128/store|no_mma/k128/store/no_h|no_mma/k128/store
# /(no_h/)?discard_out|wg1/k128|wg1/k128/discard_out)' (one line): out's lines dropped from L2.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build, ds_stream_rounds
gpu_build OFF bench_ws_mainloop || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
shapes='(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)'
variants='(no_mma/k128|no_mma/k128/store|no_mma/k128/store/(no_fence|no_out|no_h|none)'
variants+='|wg1/k128|wg1/k128/no_fence|no_mma/k128/delay1000)'
variants=${VARIANTS:-$variants}
ds_stream_rounds "$variants"
