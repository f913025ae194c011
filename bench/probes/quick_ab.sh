#!/usr/bin/env bash
# A short device call (about 5 minutes) for sessions whose device time is scarce: rows 137
# (down_order.patch in the working tree, bits 1 and 7 against 0 through one binary) and 135-136
# (weights_ahead.patch + gather_lead.patch as the variant tree `ahead`) against main's engine
# at the engine's cells, no tests (a kept probe gets its GPU ctest in the landing call).
# Run from the repository root on the device (a clean working tree: the patches go in there).
set -uo pipefail
source bench/probes/tree.sh
fresh_tree ahead
apply_patch .probe/ahead bench/probes/weights_ahead.patch || exit 1
apply_patch .probe/ahead bench/probes/gather_lead.patch || exit 1
apply_patch . bench/probes/down_order.patch || exit 1
filter='^(Qwen3-30B-A3B/bf16/T:(512|1024|4096)|OLMoE/bf16/T:512|'
filter+='DeepSeek-V2-Lite/bf16/T:1024)/'
VARIANTS=ahead FLASHMOE_BENCH_TOKENS=512,1024,4096 \
  ENV_VARIANTS="FLASHMOE_BENCH_PROBE_BITS=1 FLASHMOE_BENCH_PROBE_BITS=7" \
  bash bench/ab_session.sh "$filter"
