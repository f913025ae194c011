#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): probe patches against HEAD through bench/ab_session.sh. PATCHES (required,
# space-separated, applied in order to the device's copy of the tree) build the main tree, with
# its full GPU ctest unless TESTS=OFF; HEAD's library is the variant tree `head` (the A/A of the
# patch); ENV_VARIANTS (space-separated VAR=value) time the patched binary again under each
# setting. TOKENS and FILTER pick the cells. Rows 149-154 used it (row 149 as router_groups_ab.sh,
# now a wrapper of this one).
set -uo pipefail
if [[ -z "${PATCHES:-}" ]]; then
  echo "patch_ab.sh: set PATCHES to the probe patches to apply" >&2
  exit 2
fi
source bench/probes/tree.sh
fresh_tree head
# A warm machine keeps build/gpu, and the copy of the tree gives files an earlier patch touched
# back their old times, so make would keep that patch's objects: build the patched tree afresh.
rm -rf build/gpu
for patch in $PATCHES; do
  apply_patch . "$patch" || exit 1
done
filter=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'}
VARIANTS=head TESTS=${TESTS:-ON} FLASHMOE_BENCH_TOKENS=${TOKENS:-64,128,192,256,384} \
  ENV_VARIANTS=${ENV_VARIANTS-} bash bench/ab_session.sh "$filter"
