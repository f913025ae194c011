#!/usr/bin/env bash
# One device call (about 6 minutes; session 28, bench/NOTES.md row 144): two timing bounds of
# the decode kernels (decode_bounds.patch, results wrong by design), each its own probe tree
# against main in one build call: `db1` down tiles that do not wait for their m-tile's h (the
# launch as one stream of every chosen expert's bytes, without the gate/up -> down order: what
# a fused gate/up + down tile or any down-weights-ahead design could reach at most), `db2` no
# combine (what the combine costs in the tail). Qwen3 T = 1, 2, 4, 16, OLMoE T = 1, Mixtral
# T = 1, 2. KERNELS=1 adds the working tree's four decode tile-width kernels forced in turn
# (FLASHMOE_BENCH_DECODE_KERNEL=1-4, env1-env4: is the rule's pick still the fastest? about two
# minutes more). Run from the repository root on the device.
set -uo pipefail
source bench/probes/tree.sh
for n in 1 2; do
  fresh_tree "db$n"
  apply_patch ".probe/db$n" bench/probes/decode_bounds.patch || exit 1
  sed -i "s/kDecodeProbe = 0;/kDecodeProbe = $n;/" ".probe/db$n/src/device/expert_tiles.cuh"
  grep -q "kDecodeProbe = $n;" ".probe/db$n/src/device/expert_tiles.cuh" || exit 1
done
filter='^(Qwen3-30B-A3B/bf16/T:(1|2|4|16)|OLMoE/bf16/T:1|Mixtral-8x7B/bf16/T:(1|2))/'
envs=""
if [ "${KERNELS:-0}" = 1 ]; then
  envs="FLASHMOE_BENCH_DECODE_KERNEL=1 FLASHMOE_BENCH_DECODE_KERNEL=2"
  envs+=" FLASHMOE_BENCH_DECODE_KERNEL=3 FLASHMOE_BENCH_DECODE_KERNEL=4"
fi
ENV_VARIANTS=$envs VARIANTS="db1 db2" FLASHMOE_BENCH_TOKENS=1,2,4,16 \
  bash bench/ab_session.sh "$filter"
