#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root): row 174's
# consumers against their ceiling over time. ncu's PM sampling (as pm_sampling.sh: counters
# every SAMPLE_INTERVAL, no cache flush, clocks as they are) of one warp-specialised decode
# stream launch at Qwen3 all_experts (bench_ws_mainloop's DecodeStream rows) for each VARIANTS
# entry: whether the consumers' 6% is spread over the launch or sits at its start, its phase
# change or its tail, and the DRAM and L2 write counts (rows 174 e-f and 176: the epilogue's
# stores cost 13-21 us whatever their bytes, layout or overlap; session 46's set is
# VARIANTS='no_mma/k128 no_mma/k128/store wg1/k128/no_store wg1/k128'). Each report is read by
# pm_sampling.py.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp, gpu_build
# BUILT=1: bench_ws_mainloop is already built in this call (after another probe's build).
if [ "${BUILT:-0}" != 1 ]; then gpu_build OFF bench_ws_mainloop || exit 1; fi
interval=()
ncu --help | grep -q pm-sampling-interval &&
  interval=(--pm-sampling-interval "${SAMPLE_INTERVAL:-1000}")
shape=${SHAPE:-Qwen3-30B-A3B}
metrics=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_write.sum
metrics+=,lts__t_sector_hit_rate.pct,gpu__time_duration.sum
for variant in ${VARIANTS:-wg1/k128 no_mma/k128 wg1/pair/k128 no_mma/pair/k128}; do
  name=${variant//\//_}
  timeout 120 ncu --clock-control none --cache-control none --section PmSampling \
    "${interval[@]}" \
    --metrics "$metrics" \
    --kernel-name regex:ws_decode_stream_kernel --launch-skip 20 --launch-count 1 --kill yes \
    -f -o "$out/pm_$name" build/gpu/bench/bench_ws_mainloop \
    --benchmark_filter="^DecodeStream/$shape/all_experts/$variant/iter" >"$out/pm_$name.log" 2>&1
  echo "== $variant (ncu exit $?)"
  ncu -i "$out/pm_$name.ncu-rep" --page raw --csv --print-metric-instances values \
    >"$out/pm_$name.csv" 2>&1
  python3 bench/probes/pm_sampling.py "$out/pm_$name.csv"
  stamp "$variant done"
done
