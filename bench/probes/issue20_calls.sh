#!/usr/bin/env bash
# Issue 20's closing numbers in two device calls on one warm H200, `.probe/pre20` carried in both
# (make it as decode_noloss.sh's header says). PART=1 (about 8 minutes): the working tree (tests
# on) and pre20's bench_moe built side by side, the GPU tests, the bf16 table. PART=2 (about 6
# minutes; the very next call, while the machine is warm, so that both builds are still there):
# the fp16 table and decode_noloss.sh. PART=3 (about 5 minutes, right after; no .probe/pre20
# needed): issue 21's numbers on the same card, issue21_traces.sh and stream_paths.sh (rows
# 143-144 were measured on an H100 only). PART=4 (about 9 minutes, on a card other than the
# H200 whose peers the issue's table holds): bench/peers/torch_grouped_mm.py (a peer's two
# grouped GEMMs alone, on this card) beside both tables in one call; PART=2 then gives the decode
# point. PART=5 (about 8 minutes; run in session 37): issue 21's table on the card at hand,
# bench_moe at T = 1-256 (cuBLAS on) and both peers (torch_grouped_mm.py and the tuned Triton
# grouped GEMM, bench/peers/) at the same T (DECODE_TOKENS trims the list when device time is
# short). PART=6 (about 9 minutes, a session's first call; no .probe/pre20 needed): the tree
# built with tests while both peers run on the idle GPU at
# T = 1-256 (their lines also kept in build/peers/ for PART=7), then the GPU tests. PART=7
# (about 6 minutes, the next call on the same warm machine): bench_moe at T = 1-256, bf16 and
# fp16, summarised beside PART=6's peers. PART=8 (about 9 minutes, any warm or fresh machine):
# issue 20's bf16 table at T = 256-4096 beside both peers on that card (bench_moe built while
# they run). Run from the repository root on the device.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
[ "${PART:-1}" -ge 3 ] || [ -f .probe/pre20/CMakeLists.txt ] || {
  echo "no .probe/pre20: make it from 76ed7c2 first (decode_noloss.sh's header)"
  exit 1
}
case ${PART:-1} in
  1)
    cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=ON >"$out/build.log" 2>&1
    (cmake -S .probe/pre20 -B build/pre20 -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_ARCHITECTURES=90a-real -DFLASHMOE_BUILD_TESTS=OFF \
       -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/pre20.log" 2>&1
     cmake --build build/pre20 -j 4 --target bench_moe >>"$out/pre20.log" 2>&1
     echo "pre20 build $?") &
    cmake --build --preset gpu -j 12 >>"$out/build.log" 2>&1 || {
      tail -30 "$out/build.log"
      exit 1
    }
    wait
    stamp "built"
    ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
    echo "ctest exit $?"
    grep -E "tests passed|\(Failed\)|Not Run|Timeout" "$out/ctest.log" | head -20
    stamp "tested"
    DTYPES=bf16 bash bench/probes/issue_table.sh
    ;;
  2)
    DTYPES=fp16 bash bench/probes/issue_table.sh
    stamp "fp16 table"
    bash bench/probes/decode_noloss.sh
    ;;
  3)
    bash bench/probes/issue21_traces.sh
    stamp "traces"
    bash bench/probes/stream_paths.sh
    ;;
  4)
    (cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
     cmake --build --preset gpu -j 14 --target bench_moe >>"$out/build.log" 2>&1) &
    OUT=$out TOKENS=1,4,16,64,128,256,512,1024,2048,4096 DTYPES=bf16 \
      timeout 200 python3 bench/peers/torch_grouped_mm.py
    OUT=$out TOKENS=256,512,1024,2048,4096 DTYPES=fp16 timeout 100 python3 bench/peers/torch_grouped_mm.py
    wait
    stamp "peer"
    bash bench/probes/issue_table.sh
    ;;
  5)
    (cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
     cmake --build --preset gpu -j 14 --target bench_moe >>"$out/build.log" 2>&1) &
    decode=${DECODE_TOKENS:-1,2,4,8,16,64,128,256}
    OUT=$out TOKENS=$decode timeout 120 python3 bench/peers/torch_grouped_mm.py
    OUT=$out TOKENS=$decode timeout 240 python3 bench/peers/triton_grouped_gemm.py
    wait
    stamp "peers"
    TOKENS=$decode DTYPES=bf16 bash bench/probes/issue_table.sh
    cat "$out"/peer_*.jsonl >"$out/peers.jsonl"
    python3 bench/table_summary.py --peer "$out/peers.jsonl" "$out/table_bf16.json"
    ;;
  6)
    (cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=ON >"$out/build.log" 2>&1
     cmake --build --preset gpu -j 14 >>"$out/build.log" 2>&1
     echo "build exit $?") &
    decode=1,2,4,8,16,64,128,256
    OUT=$out TOKENS=$decode timeout 100 python3 bench/peers/torch_grouped_mm.py
    OUT=$out TOKENS=$decode timeout 270 python3 bench/peers/triton_grouped_gemm.py
    mkdir -p build/peers && cat "$out"/peer_*.jsonl >build/peers/decode.jsonl
    wait
    stamp "peers, built"
    ctest --preset gpu -j 4 --timeout 300 >"$out/ctest.log" 2>&1
    echo "ctest exit $?"
    grep -E "tests passed|\(Failed\)|Not Run|Timeout" "$out/ctest.log" | head -20
    ;;
  8)
    (cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
     cmake --build --preset gpu -j 14 --target bench_moe >>"$out/build.log" 2>&1) &
    prefill=256,512,1024,2048,4096
    OUT=$out TOKENS=$prefill timeout 110 python3 bench/peers/torch_grouped_mm.py
    OUT=$out TOKENS=$prefill timeout 230 python3 bench/peers/triton_grouped_gemm.py 2>"$out/triton.err"
    mkdir -p build/peers && cat "$out"/peer_*.jsonl >build/peers/prefill.jsonl
    wait
    stamp "peers, built"
    DTYPES=bf16 bash bench/probes/issue_table.sh >"$out/table.log" 2>&1
    python3 bench/table_summary.py --peer build/peers/prefill.jsonl "$out/table_bf16.json"
    ;;
  7)
    TOKENS=1,2,4,8,16,64,128,256 bash bench/probes/issue_table.sh
    for dt in bf16 fp16; do
      python3 bench/table_summary.py --peer build/peers/decode.jsonl "$out/table_$dt.json"
    done
    ;;
esac
stamp "done"
