#!/usr/bin/env bash
# One device call (about 3 minutes after issue20_calls.sh's PART=1 on the same warm machine, which
# leaves build/gpu; about 6 with a fresh build): issue 21's traces read in numbers. One traced
# forward each of Qwen3 T = 1, 4, 16, 64, 256, OLMoE T = 1, 256 and Mixtral T = 1, 128 (bench_moe's
# FLASHMOE_BENCH_TRACE_DIR), each summarised by the library's text summary (time to the first
# expert tile, blocks streaming per tenth, tail) and by trace_prelude.py (the routing chain), the
# JSON traces gzipped into $OUT/t21.tar.gz for the closing note; then the same rows timed with and
# without caller routing (FLASHMOE_BENCH_CALLER_ROUTING). Run from the repository root.
set -uo pipefail
out=${OUT:-out}/t21
mkdir -p "$out"
start=$SECONDS
if [ ! -x build/gpu/bench/bench_moe ]; then
  cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
  cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
    tail -30 "$out/build.log"
    exit 1
  }
fi
echo "[$((SECONDS - start)) s] built"
filter='^(Qwen3-30B-A3B/bf16/T:(1|4|16|64|256)|OLMoE/bf16/T:(1|256)|Mixtral-8x7B/bf16/T:(1|128))/'
FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=1,4,16,64,128,256 FLASHMOE_BENCH_TRACE_DIR="$out" \
  build/gpu/bench/bench_moe --benchmark_filter="$filter" \
  >"$out/bench.txt" 2>&1
echo "[$((SECONDS - start)) s] traced"
grep -E "^(Qwen3|OLMoE|Mixtral)" "$out/bench.txt" | sed 's/ *scratch.*//'
for j in "$out"/*.json; do
  [ -e "$j" ] || continue
  echo "=== $(basename "$j" .json)"
  t="${j%.json}.txt"
  [ -e "$t" ] && sed -n '1,60p' "$t"
  python3 bench/trace_prelude.py "$j" 2>&1 | head -30
  gzip "$j"
done
rm -f "$out"/*.svg
# The same rows with caller routing (the routing each input got above): the router and top-k's
# share of each forward, in the same call.
for cr in 0 1; do
  FLASHMOE_BENCH_CALLER_ROUTING=$cr FLASHMOE_BENCH_NO_CUBLAS=1 \
    FLASHMOE_BENCH_TOKENS=1,4,16,64,128,256 build/gpu/bench/bench_moe \
    --benchmark_filter="$filter" >"$out/caller_$cr.txt" 2>&1
  echo "caller routing $cr:"
  grep -E "^(Qwen3|OLMoE|Mixtral)" "$out/caller_$cr.txt" | sed 's/ *scratch.*//'
done
# One file back (a device call returns at most 8).
tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")" && rm -rf "$out"
echo "[$((SECONDS - start)) s] done"
