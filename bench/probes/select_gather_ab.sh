#!/usr/bin/env bash
# One device call (about 7 minutes), planned in session 27 (bench/NOTES.md row 140), on a clean
# working tree (main, the `gpu` build): `ga` = main + gather_hoist.patch (the engine's gathers
# look up their rows' pairs first), `sg` = main + select_gather.patch (that, and the select
# tickets summing the router's partials themselves), `cs` = main + count_stride.patch (the
# expert row counters a 128-byte line apart), at the engine's cells, no tests; then the
# `sg` tree's prelude at Qwen3 T = 1024
# and where each build's 128-row engine keeps its local loads and stores in the SASS (sg's
# spills are 436 / 952 bytes against main's 140 / 424: row 77's warning). Run from the
# repository root on the device.
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
fresh_tree ga
apply_patch .probe/ga bench/probes/gather_hoist.patch || exit 1
fresh_tree sg
apply_patch .probe/sg bench/probes/select_gather.patch || exit 1
fresh_tree cs
apply_patch .probe/cs bench/probes/count_stride.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:128)/'
VARIANTS="ga sg cs" FLASHMOE_BENCH_TOKENS=128,512,1024,4096 bash bench/ab_session.sh "$filter"
mkdir -p "$out/tr"
FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=1024 FLASHMOE_BENCH_TRACE_DIR="$out/tr" \
  build/sg/bench/bench_moe --benchmark_filter='^Qwen3-30B-A3B/bf16/T:1024/' >"$out/tr/bench.txt" 2>&1
for j in "$out"/tr/*.json; do
  [ -e "$j" ] && python3 bench/trace_prelude.py "$j" && rm -f "$j"
done
for b in gpu ga sg cs; do
  lib=$(find "build/$b" -name 'libflashmoe*.a' | head -1)
  cuobjdump -sass "$lib" 2>/dev/null |
    awk '/Function : .*moe_ws_kernel.*WsShapeILi128.*nv_bfloat16/ {p = 1; next}
         /Function :/ {p = 0} p' >"/tmp/ws_$b.sass"
  # Local memory ops by the last marker before them: tensor-core MMAs (the router's HMMA or
  # any HGMMA), the copy engine (UTMALDG/UBLKCP), a warp reduction (the select), setmaxnreg.
  echo "== $b: LDL/STL by the last marker before them"
  awk '/HMMA/ {m = "HMMA"} /HGMMA/ {m = "HGMMA"} /UTMALDG|UBLKCP/ {m = "TMA"}
       /REDUX/ {m = "REDUX"} /SETMAXREG/ {m = "SETMAXNREG"}
       /LDL|STL/ {n[m]++} END {for (k in n) print n[k], k}' "/tmp/ws_$b.sass" | sort -rn
done
