#!/usr/bin/env bash
# One device call (about 5 minutes on a fresh machine; run from the repository root): the DRAM
# and L2 rates over time inside one decode forward, from ncu's PM sampling (the counters read
# every SAMPLE_INTERVAL, no cache flush, clocks as they are), for the gate/up dip of session 42
# (OLMoE T = 256: the stream's first tenths 8-13% under the later ones in the tracer). Cells:
# OLMoE T = 256 on the rule's tall kernels and forced to the 32-row ones, and Qwen3 T = 256.
# Each report is read by pm_sampling.py (the DRAM deficit over the tiles' span, rates in bins).
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
cmake --build --preset gpu -j 14 --target bench_moe >>"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
stamp "build done"
ncu --version | tail -1
interval=()
ncu --help | grep -q pm-sampling-interval &&
  interval=(--pm-sampling-interval "${SAMPLE_INTERVAL:-1000}")
# cell NAME FILTER [NAME=VALUE ...]: one forward of the cell's T = 256 under ncu's PM sampling.
cell() {
  local name=$1 filter=$2
  shift 2
  env FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=256 "$@" timeout 120 \
    ncu --clock-control none --cache-control none --section PmSampling \
    "${interval[@]}" \
    --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \
    --kernel-name regex:moe_kernel --launch-skip 40 --launch-count 1 --kill yes \
    -f -o "$out/pm_$name" build/gpu/bench/bench_moe --benchmark_filter="$filter" \
    >"$out/pm_$name.log" 2>&1
  echo "== $name (ncu exit $?)"
  tail -3 "$out/pm_$name.log"
  ncu -i "$out/pm_$name.ncu-rep" --page raw --csv --print-metric-instances values \
    >"$out/pm_$name.csv" 2>&1
  ncu -i "$out/pm_$name.ncu-rep" --page details --print-details all >"$out/pm_$name.txt" 2>&1
  python3 bench/probes/pm_sampling.py "$out/pm_$name.csv"
  stamp "$name done"
}
cell olmoe_rule '^OLMoE/bf16/'
cell olmoe_32 '^OLMoE/bf16/' FLASHMOE_BENCH_DECODE_ROWS=32
cell qwen3_rule '^Qwen3-30B-A3B/bf16/'
