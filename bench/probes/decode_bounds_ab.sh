#!/usr/bin/env bash
# One device call (about 6 minutes; session 28, bench/NOTES.md row 144): two timing bounds of
# the decode kernels (decode_bounds.patch, results wrong by design), each its own probe tree
# against main in one build call: `db1` down tiles that do not wait for their m-tile's h (the
# launch as one stream of every chosen expert's bytes, without the gate/up -> down order: what
# a fused gate/up + down tile or any down-weights-ahead design could reach at most), `db2` no
# combine (what the combine costs in the tail). Qwen3 T = 1, 2, 4, 16, OLMoE T = 1, Mixtral
# T = 1, 2. Run from the repository root on the device.
set -uo pipefail
source bench/probes/tree.sh
for n in 1 2; do
  fresh_tree "db$n"
  apply_patch ".probe/db$n" bench/probes/decode_bounds.patch || exit 1
  sed -i "s/kDecodeProbe = 0;/kDecodeProbe = $n;/" ".probe/db$n/src/device/expert_tiles.cuh"
  grep -q "kDecodeProbe = $n;" ".probe/db$n/src/device/expert_tiles.cuh" || exit 1
done
filter='^(Qwen3-30B-A3B/bf16/T:(1|2|4|16)|OLMoE/bf16/T:1|Mixtral-8x7B/bf16/T:(1|2))/'
VARIANTS="db1 db2" FLASHMOE_BENCH_TOKENS=1,2,4,16 bash bench/ab_session.sh "$filter"
