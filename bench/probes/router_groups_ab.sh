#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 149, decode router tasks of two token groups (`router_groups.patch`, applied
# here to the device's copy of the tree) through bench/ab_session.sh: the patched tree with its
# full GPU ctest, against HEAD's library (the variant tree `head`, whose spills differ) and
# against itself with one group a task (FLASHMOE_BENCH_ROUTER_GROUPS=1, variant env1), at the
# decode T where the rule differs. Other patches the same way: PATCHES (space-separated, applied
# in order) and ENV_VARIANTS; row 150: PATCHES=bench/probes/select_nocount.patch ENV_VARIANTS=
# TOKENS=2,4,16,64,256.
set -uo pipefail
source bench/probes/tree.sh
fresh_tree head
# A warm machine keeps build/gpu, and the copy of the tree gives files an earlier patch touched
# back their old times, so make would keep that patch's objects: build the patched tree afresh.
rm -rf build/gpu
for patch in ${PATCHES:-bench/probes/router_groups.patch}; do
  apply_patch . "$patch" || exit 1
done
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'}
VARIANTS=head TESTS=${TESTS:-ON} FLASHMOE_BENCH_TOKENS=${TOKENS:-64,128,192,256,384} \
  ENV_VARIANTS=${ENV_VARIANTS-FLASHMOE_BENCH_ROUTER_GROUPS=1} bash bench/ab_session.sh "$filter"
