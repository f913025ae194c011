#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 162, scratch lines dropped from L2 once nobody reads them again this launch
# (`engine_discard.patch`, FLASHMOE_PROBE_DISCARD, default 7): bit 1 the warp-specialised
# engine's combine's ypart lines, as the decode kernels' do since row 161 (one helper in
# combine.cuh for both, so the decode cells are timed for the moved code too); bit 2 each engine
# m-tile's x_sorted rows, by its last gate/up tile; bit 4 each 256-thread kernel m-tile's h rows,
# by its last down tile. The patched tree (7) with its full GPU ctest, HEAD's binary as the
# variant `head`, then the patched binary at 1 and at 0. Decode cells: 7 against 1 is bit 4;
# engine cells: 7 against 1 is bit 2, 1 against 0 bit 1.
set -uo pipefail
PATCHES=bench/probes/engine_discard.patch TESTS=${TESTS:-ON} TOKENS=${TOKENS:-256,1024,4096} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'} \
  ENV_VARIANTS="FLASHMOE_PROBE_DISCARD=1 FLASHMOE_PROBE_DISCARD=0" bash bench/probes/patch_ab.sh
