#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine): row 147, the one-token gate/up path
# (testing::set_one_token_gateup, FLASHMOE_BENCH_ONE_TOKEN) against the tile table's, on the same
# build: its GPU tests and the neighbouring ones, then bench_moe at T = 1 and 2 (T = 2 never takes
# the path: the control) on three shapes, the two settings interleaved over two rounds.
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
  --gtest_filter='*OneToken*:*CallerSupplied*:*BadCallerId*:*ForcedDecode*:*Watchdog*' \
  >"$out/tests.log" 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran" "$out/tests.log" | head -20
echo "[$((SECONDS - start)) s] tested"
for round in 1 2; do
  for v in 0 1; do
    FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=${TOKENS:-1,2} FLASHMOE_BENCH_ONE_TOKEN=$v \
      build/gpu/bench/bench_moe --benchmark_filter='^(Qwen3-30B-A3B|OLMoE|Mixtral-8x7B)/bf16/' \
      >"$out/bench_${v}_$round.txt" 2>&1
    echo "one_token=$v round $round: $(grep -oE '^[A-Za-z0-9-]+/bf16/T:[0-9]+|us_median=[0-9.]+' \
      "$out/bench_${v}_$round.txt" | paste -sd' ' | sed 's/us_median=//g')"
  done
done
echo "[$((SECONDS - start)) s] done"
