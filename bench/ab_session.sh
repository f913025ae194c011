#!/usr/bin/env bash
# A/B on the GPU machine in one call, as the versions in bench/NOTES.md were measured: builds
# the working tree with the `gpu` preset and each variant tree (a full copy of the project
# under .probe/<name>, carried to the machine) in parallel, then runs the benchmarks named by
# the filter on every build, in two interleaved rounds, cuBLAS off. Logs go to $OUT (or ./out).
# Usage: VARIANTS="base other" bench/ab_session.sh 'benchmark filter regex'
# (benchmark names go on past the token count, 'Qwen3-30B-A3B/bf16/T:1024/min_time:...': end
# a filter with '/', not '$'; T = 512 and 2048 need FLASHMOE_BENCH_TOKENS.)
# Environment: TESTS=ON (also build and run the tests of the working tree), TRACE_T="1 16"
# (trace the working tree at these T), ENV_VARIANTS="A=1 A=1,B=1 ..." (the working tree's
# benchmark again under each comma-separated list of NAME=VALUE settings, as variants env1, ...),
# FLAGS_<variant>="-DNAME=VALUE ..." (extra CMake options of that variant tree's build).
set -uo pipefail
out=${OUT:-out}
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }  # to size the next call's plan
mkdir -p "$out"
variants=${VARIANTS:-}
filter=${1:?benchmark filter}
nvidia-smi --query-gpu=name,memory.total --format=csv >"$out/session.log"
cmake --preset gpu -DFLASHMOE_BUILD_TESTS="${TESTS:-OFF}" -DFLASHMOE_BUILD_EXAMPLES=ON \
  >>"$out/session.log" 2>&1
(cmake --build --preset gpu -j 10 >>"$out/session.log" 2>&1; echo "gpu build $?") &
for v in $variants; do
  flags_name="FLAGS_$v"
  read -r -a flags <<<"${!flags_name:-}"
  (cmake -S ".probe/$v" -B "build/$v" -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_CUDA_ARCHITECTURES=90a-real -DFLASHMOE_BUILD_TESTS=OFF \
     -DFLASHMOE_BUILD_EXAMPLES=OFF "${flags[@]}" >"$out/$v.log" 2>&1
   cmake --build "build/$v" -j 6 --target bench_moe >>"$out/$v.log" 2>&1
   echo "$v build $?") &
done
wait
stamp "builds done"
if [ "${TESTS:-OFF}" = ON ]; then
  ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
  echo "ctest exit $?"
  grep -E "tests passed|\(Failed\)" "$out/ctest.log"
  stamp "tests done"
fi
export FLASHMOE_BENCH_NO_CUBLAS=1
env_names=()
i=0
read -r -a env_lists <<<"${ENV_VARIANTS:-}"
for e in "${env_lists[@]}"; do
  i=$((i + 1))
  env_names+=("env$i")
  echo "env$i: $e" >>"$out/session.log"
done
for round in 1 2; do
  for v in $variants gpu; do
    "build/$v/bench/bench_moe" --benchmark_filter="$filter" >>"$out/bench_$v.txt" 2>&1
  done
  i=0
  for e in "${env_lists[@]}"; do
    i=$((i + 1))
    IFS=, read -r -a settings <<<"$e"
    env "${settings[@]}" build/gpu/bench/bench_moe --benchmark_filter="$filter" \
      >>"$out/bench_env$i.txt" 2>&1
  done
  stamp "round $round done"
done
# One line per benchmark and build: the medians of the two rounds.
for v in $variants gpu "${env_names[@]}"; do
  echo "== $v $(grep -m1 "^$v: " "$out/session.log" | cut -d' ' -f2-)"
  grep -E "^(Qwen|OLMoE|Deep|Mixtral)" "$out/bench_$v.txt" |
    sed -E 's/min_time:[0-9.]+\/manual_time//' |
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /^us_median=/) m[$1] = m[$1] " " substr($i, 11)}
         END {for (k in m) print k m[k]}' | sort
done
if [ -n "${TRACE_T:-}" ]; then
  mkdir -p "$out/trace"
  ./build/gpu/examples/trace/flashmoe_trace "$out/trace" $TRACE_T >>"$out/session.log" 2>&1
  for t in $TRACE_T; do  # engine traces: full m-tiles against each expert's last, stream rates,
    # the prelude by phase and the gaps between a block's tasks
    python3 bench/trace_tiles.py "$out/trace/trace_T$t.json" --shape 2048,768 \
      >>"$out/trace/trace_T$t.txt" 2>&1
    python3 bench/trace_prelude.py "$out/trace/trace_T$t.json" >>"$out/trace/trace_T$t.txt" 2>&1
    python3 bench/trace_gaps.py "$out/trace/trace_T$t.json" >>"$out/trace/trace_T$t.txt" 2>&1
  done
  rm -f "$out"/trace/*.json "$out"/trace/*.svg
  cat "$out"/trace/*.txt
  stamp "traces done"
fi
