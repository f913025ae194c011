#!/usr/bin/env bash
# One device call: the working tree's bench_moe (cuBLAS baselines on) at the token counts of
# $TOKENS (default issue 20's, 256-4096) for the four shapes, bf16 then fp16 (so that a call cut
# short still returns the first), summarised by bench/table_summary.py. Run from the repository
# root on the device.
set -uo pipefail
out=${OUT:-out}
start=$SECONDS
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
echo "[$((SECONDS - start)) s] built"
for dt in ${DTYPES:-bf16 fp16}; do
  FLASHMOE_BENCH_TOKENS=${TOKENS:-256,512,1024,2048,4096} build/gpu/bench/bench_moe \
    --benchmark_filter="^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/$dt/" \
    --benchmark_out="$out/table_$dt.json" --benchmark_out_format=json >"$out/table_$dt.txt" 2>&1
  echo "[$((SECONDS - start)) s] $dt done"
  python3 bench/table_summary.py "$out/table_$dt.json"
done
