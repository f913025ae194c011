#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine): row 148, decode launches whose last
# m-tiles' down tiles run alone at the end (session 33's traces: Mixtral T = 1's second expert
# 128 down tiles of 58 us on 128 of 264 slots, a 60 us tail), with their down tiles forced into
# K slices (testing::set_down_slices, FLASHMOE_BENCH_DOWN_SLICES; narrow tiles may now take as
# many as the scratch holds) against the models' choice, on the same build: the new GPU test and
# its neighbours, then bench_moe (cuBLAS off) with SLICES (default 0 = the models, 2, 4)
# interleaved over two rounds, and one warmed trace per setting of Mixtral T = 1.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target test_forward_gpu bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
echo "[$((SECONDS - start)) s] built"
build/gpu/tests/test_forward_gpu \
  --gtest_filter='*ForcedDownSlices*:*ForcedDecode*:*EveryDecodeKernel*:*OneToken*' \
  >"$out/tests.log" 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran" "$out/tests.log" | head -20
echo "[$((SECONDS - start)) s] tested"
# Only Mixtral's I may be sliced (the scratch's planes: a 256-column tile over I past 2048);
# Qwen3 T = 4 is the control (one slice whatever is asked).
filter=${FILTER:-'^(Mixtral-8x7B/bf16/T:(1|2|4|8|16|64)|Qwen3-30B-A3B/bf16/T:4)/'}
for round in 1 2; do
  for s in ${SLICES:-0 2 4}; do
    FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-1,2,4,8,16,64} \
      FLASHMOE_BENCH_DOWN_SLICES=$s build/gpu/bench/bench_moe --benchmark_filter="$filter" \
      >"$out/bench_${s}_$round.txt" 2>&1
    echo "slices=$s round $round: $(grep -oE '^[A-Za-z0-9-]+/bf16/T:[0-9]+|us_median=[0-9.]+' \
      "$out/bench_${s}_$round.txt" | paste -sd' ' | sed 's/us_median=//g; s#/bf16/T:#@#g')"
  done
done
echo "[$((SECONDS - start)) s] timed"
for s in ${SLICES:-0 2 4}; do
  mkdir -p "$out/trace_$s"
  FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=1 FLASHMOE_BENCH_DOWN_SLICES=$s \
    FLASHMOE_BENCH_TRACE_DIR="$out/trace_$s" build/gpu/bench/bench_moe \
    --benchmark_filter='^Mixtral-8x7B/bf16/' >/dev/null 2>&1
  echo "== slices=$s"
  sed -n '1,12p' "$out/trace_$s"/*.txt 2>/dev/null
  rm -f "$out/trace_$s"/*.json
done
echo "[$((SECONDS - start)) s] done"
