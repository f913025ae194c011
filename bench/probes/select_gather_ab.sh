#!/usr/bin/env bash
# One device call (about 6 minutes), session 27 (bench/NOTES.md row 140): the working tree (the
# select tickets sum the router's partials themselves, and the gathers look up their rows'
# pairs first) against HEAD (`base`) and HEAD with the gather change alone (`ga`), at the
# engine's cells, no tests; then the working tree's prelude at Qwen3 T = 1024 and where the
# 128-row engine's local loads and stores sit in its SASS. Run from the repository root.
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
fresh_tree base
fresh_tree ga
apply_patch .probe/ga bench/probes/gather_hoist.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:128)/'
VARIANTS="base ga" FLASHMOE_BENCH_TOKENS=128,512,1024,4096 bash bench/ab_session.sh "$filter"
trace_one "$out/tr" '^Qwen3-30B-A3B/bf16/T:1024/' 1024 2048,768 | grep -A12 "phase  "
for b in gpu ga; do
  lib=$(find build/$b -name 'libflashmoe*.a' | head -1)
  cuobjdump -sass "$lib" 2>/dev/null |
    awk '/Function : .*moe_ws_kernel.*WsShapeILi128.*nv_bfloat16/ {p = 1; next}
         /Function :/ {p = 0} p' >"/tmp/ws_$b.sass"
  # Local memory ops by the nearest preceding marker: the router's or the tiles' MMAs, the
  # copy engine (UTMALDG/UBLKCP), a warp reduction (the select), or none yet.
  echo "== $b: LDL/STL by the last marker before them"
  awk '/HMMA/ {m = "HMMA"} /HGMMA/ {m = "HGMMA"} /UTMALDG|UBLKCP/ {m = "TMA"}
       /REDUX/ {m = "REDUX"} /SETMAXREG|USETMAXREG/ {m = "SETMAXNREG"}
       /LDL|STL/ {n[m]++} END {for (k in n) print n[k], k}' "/tmp/ws_$b.sass" | sort -rn
done
