#!/usr/bin/env bash
# One device call (about 7 minutes), session 27: GPU ctest of the working tree (the engine's
# switch at 24 rows an expert, 28 for large experts: bench/NOTES.md row 139), and traces of a
# tree with the router-phases and select-phases probes (tracing only), read by
# trace_prelude.py: where a select ticket's 7-9 us go. Run from the repository root on the device.
set -uo pipefail
out=${OUT:-out}/s
mkdir -p "$out/sp"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
source bench/probes/tree.sh
fresh_tree sp
for patch in router_phases select_phases; do
  apply_patch .probe/sp "bench/probes/$patch.patch" >>"$out/sp.log" 2>&1 || exit 1
done
(cmake -S .probe/sp -B build/sp -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
   -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >>"$out/sp.log" 2>&1
 cmake --build build/sp -j 5 --target bench_moe >>"$out/sp.log" 2>&1
 echo "sp build $?") &
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON >"$out/gpu.log" 2>&1
cmake --build --preset gpu -j 11 >>"$out/gpu.log" 2>&1
echo "gpu build $?"
wait
stamp "builds done"
FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=128,512,1024 FLASHMOE_BENCH_TRACE_DIR="$out/sp" \
  build/sp/bench/bench_moe \
  --benchmark_filter='^(Qwen3-30B-A3B/bf16/T:(512|1024)|Mixtral-8x7B/bf16/T:128|DeepSeek-V2-Lite/bf16/T:1024)/' \
  >"$out/sp/bench.txt" 2>&1
for j in "$out"/sp/*.json; do
  [ -e "$j" ] || continue
  python3 bench/trace_prelude.py "$j"
  gzip "$j"
done
rm -f "$out"/sp/*.svg "$out"/sp/*.txt
stamp "traces done"
ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
echo "ctest exit $?"
grep -E "tests passed|\(Failed\)|Not Run|Skipped" "$out/ctest.log" | head -20
stamp "tests done"
