#!/usr/bin/env bash
# One device call (about 9 minutes on a fresh machine with TESTS=ON; session 47, bench/NOTES.md
# row 180; run from the repository root with a clean working tree; about 6 with TESTS=OFF). On an
# H200 it first runs `LAYER=0 h200_bounds.sh` (the stream bounds never measured there, about 2
# minutes more) unless SKIP_BOUNDS=1.
# early_claim.patch in the working tree (thread 0 claims the block's next ticket before the loop
# top's first barrier and stores it after; a gate/up tile's count released by warp 1 with
# release order, as row 178), with its full GPU ctest unless TESTS=OFF, against HEAD's
# binary (`head`) and row 178 alone (`r178`), two interleaved rounds, the decode kernels at
# T = 1-256.
set -uo pipefail
case $(nvidia-smi --query-gpu=name --format=csv,noheader) in
  *H200*) [ "${SKIP_BOUNDS:-0}" = 1 ] || LAYER=0 bash bench/probes/h200_bounds.sh ;;
esac
source bench/probes/tree.sh  # fresh_tree, apply_patch
variants=${AB_VARIANTS:-head r178}  # AB_VARIANTS=head: the A/B against HEAD alone
fresh_tree head
if [[ $variants == *r178* ]]; then
  fresh_tree r178
  apply_patch .probe/r178 bench/probes/release_count.patch || exit 1
fi
# A warm machine keeps build/gpu; build the patched working tree afresh (patch_ab.sh's note).
rm -rf build/gpu
apply_patch . bench/probes/early_claim.patch || exit 1
VARIANTS="$variants" TESTS=${TESTS:-ON} FLASHMOE_BENCH_TOKENS=1,4,16,64,256 \
  bash bench/ab_session.sh '^(Qwen3-30B-A3B|OLMoE)/bf16/T:(1|4|16|64|256)/'
