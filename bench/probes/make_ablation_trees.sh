#!/usr/bin/env bash
# Probe trees for bench/ab_session.sh (VARIANTS="abl1 abl2 ..."): a copy of HEAD under
# .probe/abl<N> with ws_epilogue_ablation.patch applied and kProbeAblate = N. Timing only: the
# trees' results are wrong by design. Bits of N: 1 no h stores, 2 the activation the identity,
# 4 no ypart stores, 8 no combine counts (so no combine), 16 the m-tile count's release relaxed,
# 32 h stored as zeros (the down tiles multiply zeros), 64 no proxy fence after the h stores,
# 128 the weight boxes on even K steps only, 256 the A boxes on even K steps only (half the
# copy-engine bytes of that operand: whether the tiles wait on L2 -> SM traffic), 512 the ypart
# values into a 16 KB shared-memory buffer instead of global memory. Check a new
# combination with ptxas first: 384 (128 and 256) makes the 128-row engine's wgmma serialise.
# Usage: bench/probes/make_ablation_trees.sh 1 2 4 8 16
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for n in "$@"; do
  d=".probe/abl$n"
  rm -rf "$d"
  mkdir -p "$d"
  git archive HEAD | tar x -C "$d"
  (cd "$d" && patch -s -p1 <../../bench/probes/ws_epilogue_ablation.patch &&
    sed -i "s/kProbeAblate = 0;/kProbeAblate = $n;/" src/device/ws_epilogue.cuh)
  grep -q "kProbeAblate = $n;" "$d/src/device/ws_epilogue.cuh"
done
