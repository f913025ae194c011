#!/usr/bin/env bash
# One device call (about 8 minutes), planned in session 27 (bench/NOTES.md row 142): the
# tracer's state in shared memory (tracer_smem.patch, applied to the working tree: GPU ctest on
# it) against main (`base`) at decode and engine cells, then the SASS's local memory of both
# builds' 128-row engine and of every kernel (the decode kernels too). Run from the repository
# root on the device, on a clean working tree; `git checkout -- src` afterwards if it loses.
# NOTRACE=1 adds main built with FLASHMOE_ENABLE_TRACE=OFF (`notrace`: no tracer at all, the
# bound on what any tracer layout can give back; about a minute more).
set -uo pipefail
out=${OUT:-out}
source bench/probes/tree.sh
fresh_tree base
variants=base
if [ "${NOTRACE:-0}" = 1 ]; then
  fresh_tree notrace
  variants="base notrace"
  export FLAGS_notrace=-DFLASHMOE_ENABLE_TRACE=OFF
fi
apply_patch . bench/probes/tracer_smem.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(1|16|256|512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024|Mixtral-8x7B/bf16/T:(1|128))/'
TESTS=ON VARIANTS=$variants FLASHMOE_BENCH_TOKENS=1,16,128,256,512,1024,4096 \
  bash bench/ab_session.sh "$filter"
for b in gpu $variants; do
  lib=$(find "build/$b" -name 'libflashmoe*.a' | head -1)
  cuobjdump -sass "$lib" 2>/dev/null >"/tmp/all_$b.sass"
  echo "== $b: LDL/STL per kernel (the 8 most)"
  awk '/Function :/ {f = $3} /LDL|STL/ {n[f]++} END {for (k in n) print n[k], substr(k, 1, 90)}' \
    "/tmp/all_$b.sass" | sort -rn | head -8
done
