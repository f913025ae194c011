#!/usr/bin/env bash
# One device call (about 5 minutes on a fresh machine; run from the repository root): the
# engine's switch (workspace.hpp: the engine from 24 rows an expert, 28 for large experts)
# measured again now that the decode kernels' large-T cells are 4-5% faster than when it was set
# (rows 155-156 and 161 against rows 93 and 139). bench_moe of the working tree at T around the
# switch for each shape, the library's rule against FLASHMOE_BENCH_PREFILL_ROWS=32 (the decode
# kernels up to 32 rows an expert), two rounds, medians. Rows an expert = T x K / E: OLMoE 192 /
# 224 / 256 are 24 / 28 / 32, Qwen3 384 / 448 / 512 the same, DeepSeek-V2-Lite 256 / 320 are 24
# / 30, Mixtral 112 / 128 are 28 / 32. Then one traced forward of Qwen3 T = 256 on each kernel
# family, for the two routing preludes side by side.
# Since 7c55a83 (row 165) the library's rule is 32 rows: the two bench variants are the same and
# only the traces still compare two kernel families.
set -uo pipefail
SETTINGS="FLASHMOE_BENCH_PREFILL_ROWS=0 FLASHMOE_BENCH_PREFILL_ROWS=32" \
  CELLS="OLMoE:192,224,256 Qwen3-30B-A3B:384,448,512
    DeepSeek-V2-Lite:256,320 Mixtral-8x7B:112,128" \
  bash bench/probes/cells_ab.sh || exit 1
source bench/probes/tree.sh
# The two preludes at Qwen3 T = 256 (16 rows an expert): the decode kernels' (CUDA-core router
# tasks, selects inline, one table builder) and the engine's (tensor-core router tiles, select
# and row-map tickets), one warm traced forward each.
for rows in 0 8; do
  trace_one "$out/tr_rows$rows" '^Qwen3-30B-A3B/bf16/' 256 2048,768 \
    FLASHMOE_BENCH_PREFILL_ROWS=$rows >"$out/tr_rows$rows.txt"
done
for rows in 0 8; do
  echo "== Qwen3 T = 256 trace, FLASHMOE_BENCH_PREFILL_ROWS=$rows (8: the engine)"
  grep -E "variant|^  (router|select|tile table|row map|wait routing) |first expert tile|tail" \
    "$out/tr_rows$rows.txt" | cut -c1-150 | head -14
done
