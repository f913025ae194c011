#!/usr/bin/env bash
# One device call (about 5 minutes; session 28, bench/NOTES.md row 143): the decode weight
# stream's copy paths alone (bench_ws_mainloop's StreamPath rows, bench/stream_paths.cuh: the
# decode kernels' 64 x 64 boxes with and without evict-first, deeper and smaller stages, one
# block an SM, cp.async, 1-D bulk copies of row pieces and of contiguous stages, plain loads)
# on one token's experts (Qwen3, OLMoE, Mixtral) and Qwen3's 32, beside the whole layer at the
# same selections (bench_moe T = 1 and 4) and the copy rate, in one call. Run from the
# repository root on the device.
set -uo pipefail
out=${OUT:-out}
start=$SECONDS
mkdir -p "$out"
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_ws_mainloop bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
echo "[$((SECONDS - start)) s] built"
# One process a path: a path whose copy never lands traps, which fails the rest of its process.
for path in tma2d/r64_k128_s6 tma2d_evict_first/r64_k128_s6 tma2d/r32_k128_s12 \
  tma2d/r64_k128_s13 cp_async/r64_k128_s6 bulk1d_rows/r64_k128_s6 bulk1d_rows/r32_k256_s6 \
  bulk1d_rows/r16_k512_s6 bulk1d_linear/r64_k128_s6 \
  bulk1d_linear/r64_k256_s3 ldg/r64; do
  build/gpu/bench/bench_ws_mainloop --benchmark_filter="^StreamPath/[^/]+/$path/" \
    --benchmark_counters_tabular=true >>"$out/stream_paths.txt" 2>&1
done
echo "[$((SECONDS - start)) s] paths done"
FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=1,4 build/gpu/bench/bench_moe \
  --benchmark_filter='^(Qwen3-30B-A3B|OLMoE|Mixtral-8x7B)/bf16/T:(1|4)/' >"$out/layer.txt" 2>&1
build/gpu/bench/bench_ws_mainloop --benchmark_filter='^DecodeStream/.*/no_mma' \
  >"$out/decode_stream.txt" 2>&1
echo "[$((SECONDS - start)) s] layer and no-MMA stream done"
grep -E "copy|^StreamPath|ERROR|error" "$out/stream_paths.txt" | cut -c1-150
grep -E "copy|^(Qwen|OLMoE|Mixtral)" "$out/layer.txt" | cut -c1-150
grep -E "^DecodeStream" "$out/decode_stream.txt" | cut -c1-150
