#!/usr/bin/env bash
# One decode launch under Nsight Compute with PC sampling, exported per source line, to split a
# stretch of the kernel (e.g. the T = 1 routing chain) into instruction-fetch, memory and
# barrier stalls. Builds bench_moe with the `gpu` preset (the library is built with -lineinfo),
# profiles one forward of the benchmark named by the filter (a launch inside its CUDA graph,
# after the warm-up) and writes to $OUT (or ./out): the report, its source page as CSV (CUDA
# lines and SASS), the details page and ncu's log, packed into ncu.tgz, and prints
# bench/ncu_summary.py's reading of them (LINES=30 source lines).
# Usage: bench/ncu_source.sh ['benchmark filter ending with /'] [kernel-name regex]
# (default: Qwen3-30B-A3B/bf16/T:1/ and the decode kernels, `moe_kernel`, not `moe_ws_kernel`). The clocks are left as
# they are (--clock-control none).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
filter=${1:-'^Qwen3-30B-A3B/bf16/T:1/'}
kernel=${2:-'(^|:)moe_kernel'}
cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/ncu_build.log" 2>&1
cmake --build --preset gpu -j 16 --target bench_moe >>"$out/ncu_build.log" 2>&1 ||
  { tail -30 "$out/ncu_build.log"; exit 1; }
export FLASHMOE_BENCH_NO_CUBLAS=1
# Skip the first launches (warm-up, graph capture's first replays) and profile one.
ncu --clock-control none --set full --import-source yes \
  --kernel-name-base function -k "regex:$kernel" --launch-skip "${SKIP:-20}" --launch-count 1 \
  -f -o "$out/ncu" build/gpu/bench/bench_moe --benchmark_filter="$filter" \
  >"$out/ncu_run.log" 2>&1
echo "ncu exit $?"
tail -5 "$out/ncu_run.log"
rep="$out/ncu.ncu-rep"
[ -f "$rep" ] || exit 1
ncu -i "$rep" --page details --csv >"$out/ncu_details.csv" 2>&1
# The source page: ncu versions differ in what --print-source takes; keep whichever works.
for src in cuda,sass sass cuda; do
  if ncu -i "$rep" --page source --csv --print-source "$src" >"$out/ncu_source_$src.csv" \
    2>"$out/ncu_source_$src.err"; then
    echo "source page ($src): $(wc -l <"$out/ncu_source_$src.csv") lines"
  fi
done
python3 "$(dirname "$0")/ncu_summary.py" "$out" "${LINES:-30}"
# One compressed file for everything ncu wrote (the device tool brings back at most 8 files).
(cd "$out" && files=$(ls ncu.ncu-rep ncu_*.csv ncu_*.err ncu_*.log 2>/dev/null;:) &&
  [ -n "$files" ] && tar czf ncu.tgz $files && rm -f $files)
ls -la "$out"
