#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine; run from the repository root): issue 21's
# bf16 table at $DECODE_TOKENS beside both peers (bench/peers/), and on the same card the T = 1
# bounds that the closing argument rests on: the one-token weight stream alone on three copy
# paths (StreamPath: the decode kernels' boxes, 1-D bulk copies, every block an equal share of
# plain loads) and the prototype's routing prelude beside an empty kernel (DecodePrelude).
# bench_moe and bench_ws_mainloop build (no tests) while the peers run on the idle GPU.
set -uo pipefail
source bench/probes/tree.sh  # $out, stamp
nvidia-smi --query-gpu=name --format=csv,noheader
decode=${DECODE_TOKENS:-1,2,8,128,256}
(cmake --preset gpu -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_EXAMPLES=OFF >"$out/build.log" 2>&1
 cmake --build --preset gpu -j 14 --target bench_moe bench_ws_mainloop >>"$out/build.log" 2>&1
 echo "build exit $?") &
OUT=$out TOKENS=$decode timeout 100 python3 bench/peers/torch_grouped_mm.py >/dev/null
OUT=$out TOKENS=$decode timeout 200 python3 bench/peers/triton_grouped_gemm.py >/dev/null
wait
stamp "peers, built"
TOKENS=$decode DTYPES=bf16 bash bench/probes/issue_table.sh >/dev/null
cat "$out"/peer_*.jsonl >build/peers.jsonl
python3 bench/table_summary.py --peer build/peers.jsonl "$out/table_bf16.json"
stamp "table"
ws=build/gpu/bench/bench_ws_mainloop
# One process a path: a path whose copy never lands traps, which fails the rest of its process.
for path in tma2d/r64_k128_s6 bulk1d_linear/r64_k128_s6 ldg_balanced; do
  $ws --benchmark_filter="^StreamPath/(Qwen3-30B-A3B|OLMoE)/$path/" >>"$out/bounds.txt" 2>&1
done
$ws --benchmark_filter='^DecodePrelude/' >>"$out/bounds.txt" 2>&1
grep -E "^(StreamPath|DecodePrelude)" "$out/bounds.txt" |
  sed -E 's/\/iterations:[0-9]+\/manual_time//' |
  awk '{r = ""; for (i = 2; i <= NF; i++) if ($i ~ /^(us_median|weights_TBps)=/) r = r " " $i;
        print $1 r}'
stamp "done"
