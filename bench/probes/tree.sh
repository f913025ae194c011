# Sourced by the probe scripts (run from the repository root): probe trees and their patches.

# The start of a probe call: its output folder $out (OUT on the device, unless the script set
# out first) made, and the clock that stamp MESSAGE reads (seconds since the call began).
out=${out:-${OUT:-out}}
mkdir -p "$out"
start=${start:-$SECONDS}
stamp() { echo "[$((SECONDS - start)) s] $*"; }

# A fresh copy of HEAD under .probe/<name> (the files themselves where the device's copy of the
# working tree has no repository).
fresh_tree() {
  rm -rf ".probe/$1" && mkdir -p ".probe/$1"
  git archive HEAD 2>/dev/null | tar -x -C ".probe/$1" ||
    cp -r CMakeLists.txt CMakePresets.json bench cmake examples include src tests tools ".probe/$1/"
}

# A patch into a directory (. for the working tree): patch(1) where there is one, else git apply.
apply_patch() {
  if command -v patch >/dev/null; then
    patch -s -d "$1" -p1 <"$2"
  elif [ "$1" = . ]; then
    git apply "$2"
  else
    git apply --directory="$1" "$2"
  fi
}

# bench_moe of the variant tree .probe/<name> into build/<name> (sm_90a, Release, no tests),
# with JOBS parallel jobs (6 unless given), its log in $out/<name>.log:
# build_variant NAME [JOBS]
build_variant() {
  cmake -S ".probe/$1" -B "build/$1" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90a-real -DFLASHMOE_BUILD_TESTS=OFF \
    -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/$1.log" 2>&1
  cmake --build "build/$1" -j "${2:-6}" --target bench_moe >>"$out/$1.log" 2>&1
  echo "$1 build $?"
}

# One traced forward of the working tree's benchmarks matching a filter, under NAME=VALUE
# settings, each trace read into text beside it (weights' stream per tenth for the shape H,I,
# the prelude by phase, the gaps between a block's tasks) and printed:
# trace_one DIR FILTER TOKENS H,I [NAME=VALUE ...]
trace_one() {
  local dir=$1 filter=$2 tokens=$3 shape=$4
  shift 4
  mkdir -p "$dir"
  env FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS="$tokens" FLASHMOE_BENCH_TRACE_DIR="$dir" \
    "$@" build/gpu/bench/bench_moe --benchmark_filter="$filter" >"$dir/bench.txt" 2>&1
  for j in "$dir"/*.json; do
    [ -e "$j" ] || continue
    python3 bench/trace_tiles.py "$j" --shape "$shape" >"${j%.json}.tiles.txt" 2>&1
    python3 bench/trace_prelude.py "$j" >"${j%.json}.prelude.txt" 2>&1
    python3 bench/trace_gaps.py "$j" >"${j%.json}.gaps.txt" 2>&1
    rm -f "$j"
  done
  cat "$dir"/*.txt
}

# One line a benchmark of a bench_moe log with several rounds: its name and each round's median.
bench_medians() {
  grep -E "^(Qwen|OLMoE|Deep|Mixtral)" "$1" | sed -E 's/min_time:[0-9.]+\/manual_time//' |
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /^us_median=/) m[$1] = m[$1] " " substr($i, 11)}
         END {for (k in m) print k m[k]}' | sort
}

# bench_ws_mainloop's DecodeStream rows of the shapes $shapes and variants matching $1 (a regex),
# two rounds into $out/ws_stream.txt (T = 1 in the first only, all_experts in both), then one
# line a row: its name and each round's median.
ds_stream_rounds() {
  local rows
  for rows in '(all_experts|T:1)' all_experts; do
    build/gpu/bench/bench_ws_mainloop \
      --benchmark_filter="^DecodeStream/$shapes/$rows/$1/iter" >>"$out/ws_stream.txt" 2>&1
    stamp "round done"
  done
  grep -E "^DecodeStream" "$out/ws_stream.txt" | sed -E 's/\/iterations:[0-9]+\/manual_time//' |
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /^us_median=/) { sub("us_median=", "", $i);
          v[$1] = v[$1] " " $i } } END { for (k in v) print k v[k] }' | sort
}

# The working tree's gpu preset built for TARGETS, tests configured on or off (ON / OFF), its log
# in $out/build.log; on failure the log's tail and a non-zero status:
# gpu_build ON|OFF TARGET...
gpu_build() {
  local tests=$1
  shift
  cmake --preset gpu -DFLASHMOE_BUILD_TESTS="$tests" -DFLASHMOE_BUILD_EXAMPLES=OFF \
    >"$out/build.log" 2>&1
  cmake --build --preset gpu -j 14 --target "$@" >>"$out/build.log" 2>&1 || {
    tail -30 "$out/build.log"
    return 1
  }
  stamp "build done"
}

# bench_moe at TOKENS on the shapes $shapes (bf16, cuBLAS off), two rounds into
# $out/bench_moe.txt and their medians, then warm traces of Qwen3 and OLMoE T = 256 (the expert
# tiles' span and stream rates): layer_rounds_and_traces TOKENS
layer_rounds_and_traces() {
  local round
  for round in 1 2; do
    FLASHMOE_BENCH_NO_CUBLAS=1 FLASHMOE_BENCH_TOKENS=$1 build/gpu/bench/bench_moe \
      --benchmark_filter="^$shapes/bf16/" >>"$out/bench_moe.txt" 2>&1
  done
  bench_medians "$out/bench_moe.txt"
  stamp "bench_moe done"
  local keep='expert tiles|TB/s|both'
  trace_one "$out/trace_qwen3" '^Qwen3-30B-A3B/bf16/' 256 2048,768 | grep -E "$keep"
  trace_one "$out/trace_olmoe" '^OLMoE/bf16/' 256 2048,1024 | grep -E "$keep"
  stamp "traces done"
}
