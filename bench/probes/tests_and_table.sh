#!/usr/bin/env bash
# One device call for a session with little device time (about 7 minutes on a fresh machine):
# the working tree built with its tests while both peers (bench/peers/) run on the idle GPU at
# $DECODE_TOKENS, then the full GPU ctest, then issue 21's bf16 table at the same T beside the
# peers (table_summary.py --peer), then loaded_latency.sh (row 184). Run from the repository root.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
decode=${DECODE_TOKENS:-1,4,16,64}
(cmake --preset gpu -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_EXAMPLES=ON >"$out/build.log" 2>&1
 cmake --build --preset gpu -j 14 >>"$out/build.log" 2>&1
 echo "build exit $?") &
OUT=$out TOKENS=$decode timeout 100 python3 bench/peers/torch_grouped_mm.py
OUT=$out TOKENS=$decode timeout 200 python3 bench/peers/triton_grouped_gemm.py
wait
stamp "peers, built"
ctest --preset gpu -j 4 --timeout 200 >"$out/ctest.log" 2>&1
echo "ctest exit $?"
grep -E "tests passed|\(Failed\)|Not Run|Timeout" "$out/ctest.log" | head -20
stamp "tested"
TOKENS=$decode DTYPES=bf16 bash bench/probes/issue_table.sh
cat "$out"/peer_*.jsonl >build/peers.jsonl
python3 bench/table_summary.py --peer build/peers.jsonl "$out/table_bf16.json"
stamp "table"
bash bench/probes/loaded_latency.sh
stamp "done"
