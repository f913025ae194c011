#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): main's full GPU ctest and a short soak, then what the decode tiles' per-pair rows,
# h stores and releases cost in DRAM bytes and in time (bench/NOTES.md, row 158). Builds main
# with its tests and decode_ablation.patch's tree (bench only) side by side; ncu (metrics only,
# no cache flush, clocks as they are) reads DRAM bytes read and written for one forward of
# Qwen3 at T = 256 under each ablation bit; then bench_moe times the same bits, two rounds.
# BITS, TOKENS and SOAK_S override the defaults.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
fresh_tree abl
apply_patch .probe/abl bench/probes/decode_ablation.patch || exit 1
rm -rf build/gpu
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
(cmake --build --preset gpu -j 10 >>"$out/build.log" 2>&1; echo "gpu build $?") &
(cmake -S .probe/abl -B build/abl -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
   -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/abl.log" 2>&1
 cmake --build build/abl -j 6 --target bench_moe >>"$out/abl.log" 2>&1
 echo "abl build $?") &
wait
stamp "builds done"
ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
echo "ctest exit $?"
grep -E "tests passed|\(Failed\)" "$out/ctest.log"
stamp "tests done"
timeout $((${SOAK_S:-40} + 30)) build/gpu/tests/flashmoe_soak --seconds "${SOAK_S:-40}" \
  >"$out/soak.log" 2>&1
echo "soak exit $?"
tail -4 "$out/soak.log"
stamp "soak done"
bits=${BITS:-"0 4 8 16 32 64"}
metrics="gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
metrics="$metrics,lts__t_sectors_srcunit_tex_op_write.sum,lts__t_sectors_srcunit_tex_op_read.sum"
for a in $bits; do
  FLASHMOE_PROBE_ABLATE=$a FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=256 timeout 90 \
    ncu --clock-control none --cache-control none --metrics "$metrics" \
    --kernel-name regex:moe_kernel --launch-skip 40 --launch-count 2 --kill yes --csv \
    build/abl/bench/bench_moe --benchmark_filter='^Qwen3-30B-A3B/bf16/' \
    >"$out/ncu_a$a.csv" 2>"$out/ncu_a$a.err"
  echo "== ablate $a (ncu exit $?)"
  grep -E '"(gpu__time|dram__|lts__)' "$out/ncu_a$a.csv" |
    awk -F'","' '{print $(NF-2), $(NF-1), $NF}'
done
stamp "ncu done"
export FLASHMOE_BENCH_NO_CUBLAS=1
for round in 1 2; do
  for a in $bits; do
    FLASHMOE_PROBE_ABLATE=$a FLASHMOE_BENCH_TOKENS=${TOKENS:-64,256} build/abl/bench/bench_moe \
      --benchmark_filter='^Qwen3-30B-A3B/bf16/' >>"$out/bench_a$a.txt" 2>&1
  done
  FLASHMOE_BENCH_TOKENS=${TOKENS:-64,256} build/gpu/bench/bench_moe \
    --benchmark_filter='^Qwen3-30B-A3B/bf16/' >>"$out/bench_main.txt" 2>&1
  stamp "round $round done"
done
for v in main $(printf 'a%s ' $bits); do
  echo "== $v"
  bench_medians "$out/bench_$v.txt"
done
# Again at the end: the call's output keeps only its last 12,000 characters, and the ncu lines
# above can push the first summary out of it.
echo "ctest: $(grep -E "tests passed" "$out/ctest.log")"
echo "soak: $(tail -1 "$out/soak.log")"
