#!/usr/bin/env bash
# One device call (about 5 minutes on a fresh machine): ncu's memory, occupancy and stall
# sections for the Triton peer's two grouped GEMMs and for FlashMoE's decode kernel on the same
# cells (Qwen3-30B-A3B bf16 T = 1 and 64 by default), to see why the peer streams the chosen
# experts' weights faster (session 33). One launch each, the peer's 3rd of 4, FlashMoE's after
# its warm-up; clocks as they are (--clock-control none).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
(cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
 cmake --build --preset gpu -j 14 --target bench_moe >>"$out/build.log" 2>&1
 echo "build exit $?") &
sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy"
sections="$sections --section LaunchStats --section WarpStateStats --section SchedulerStats"
# name:T:gate/up block shape:down block shape, as triton_grouped_gemm.py printed them (H200).
t1="Qwen3-30B-A3B:1:16,64,128,1,4,4:16,64,128,1,4,3"
t64="Qwen3-30B-A3B:64:16,128,128,1,4,3:16,128,128,1,4,3"
cells=${CELLS:-"$t1;$t64"}
CELLS=$cells timeout 150 ncu --clock-control none $sections --kernel-name grouped_gemm \
  --launch-skip 4 --launch-count 2 -f -o "$out/peer_t1" python3 bench/peers/ncu_triton_cells.py \
  >"$out/peer_ncu.log" 2>&1
CELLS=${cells#*;} timeout 150 ncu --clock-control none $sections --kernel-name grouped_gemm \
  --launch-skip 4 --launch-count 2 -f -o "$out/peer_t64" python3 bench/peers/ncu_triton_cells.py \
  >>"$out/peer_ncu.log" 2>&1
wait
echo "[$((SECONDS - start)) s] peer profiled, built"
for t in ${TOKENS:-1 64}; do
  FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=$t timeout 150 ncu --clock-control none \
    $sections --kernel-name regex:moe_kernel --launch-skip 40 --launch-count 1 -f \
    -o "$out/flashmoe_t$t" build/gpu/bench/bench_moe --benchmark_filter='^Qwen3-30B-A3B/bf16/' \
    >"$out/flashmoe_ncu_t$t.log" 2>&1
  echo "[$((SECONDS - start)) s] FlashMoE T = $t: exit $?"
done
for r in "$out"/*.ncu-rep; do
  ncu -i "$r" --page details >"${r%.ncu-rep}.txt" 2>&1
  echo "== $r"
  keys="^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy"
  keys="$keys|Registers Per|Dynamic Shared|Grid Size|Block Size|Waves Per SM|No Eligible"
  keys="$keys|Issued Warp|L2 Hit Rate |Warp Cycles Per Issued"
  grep -E "$keys" "${r%.ncu-rep}.txt" | head -60
done
echo "[$((SECONDS - start)) s] done"
