#!/usr/bin/env bash
# One device call (about 6 minutes), planned in session 24 (bench/NOTES.md): the decode/engine
# switch measured between 16 and 28 rows an expert on all four shapes (env1 forces the engine
# from 9 rows; the default switches at kEngineMinRows), traces from a tree with the
# router-phases and engine-waits probes (tracing only) read by trace_prelude.py and
# trace_gaps.py, and the 128-row engine's spills located in its SASS. Run from the repository
# root on the device.
set -uo pipefail
out=${OUT:-out}/s
mkdir -p "$out/rt"
source bench/probes/tree.sh
fresh_tree rt
for patch in router_phases engine_waits; do
  apply_patch .probe/rt "bench/probes/$patch.patch" >>"$out/rt.log" 2>&1 || exit 1
done
(cmake -S .probe/rt -B build/rt -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
   -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >>"$out/rt.log" 2>&1
 cmake --build build/rt -j 6 --target bench_moe >>"$out/rt.log" 2>&1
 echo "rt build $?") &
filter='^(Qwen3-30B-A3B/bf16/T:(256|320|384)|OLMoE/bf16/T:(128|160|192)|'
filter+='DeepSeek-V2-Lite/bf16/T:(192|256)|Mixtral-8x7B/bf16/T:(64|80|96))/'
OUT="$out" FLASHMOE_BENCH_TOKENS=64,80,96,128,160,192,256,320,384 \
  ENV_VARIANTS="FLASHMOE_BENCH_PREFILL_ROWS=8" bash bench/ab_session.sh "$filter" 2>&1 | tail -45
wait
FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=128,512,1024 FLASHMOE_BENCH_TRACE_DIR="$out/rt" \
  build/rt/bench/bench_moe \
  --benchmark_filter='^(Qwen3-30B-A3B/bf16/T:(512|1024)|Mixtral-8x7B/bf16/T:128)/' \
  >"$out/rt/bench.txt" 2>&1
for j in "$out"/rt/*.json; do
  [ -e "$j" ] || continue
  python3 bench/trace_prelude.py "$j"
  python3 bench/trace_gaps.py "$j"
  gzip "$j"
done
rm -f "$out"/rt/*.svg
lib=$(find build/gpu -name 'libflashmoe*.a' | head -1)
cuobjdump -sass "$lib" >/tmp/all.sass 2>/dev/null
echo "local loads and stores by function (the 12 most):"
awk '/Function :/ {f = $3} /LDL|STL/ {n[f]++} END {for (k in n) print n[k], k}' /tmp/all.sass |
  sort -rn | head -12
awk '/Function : .*moe_ws_kernel.*WsShapeILi128/ {p = 1}
     /Function :/ && !/WsShapeILi128/ {p = 0} p' /tmp/all.sass | gzip >"$out/ws128.sass.gz"
