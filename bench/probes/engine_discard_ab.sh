#!/usr/bin/env bash
# One device call (about 9 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 162, the engine's combine dropping the ypart lines it summed from L2, as the
# decode kernels' do since row 161 (`engine_discard.patch`: one helper in combine.cuh for both,
# so the decode cells are timed too, for the moved code). The patched tree with its full GPU
# ctest, HEAD's binary as the variant `head`.
set -uo pipefail
PATCHES=bench/probes/engine_discard.patch TESTS=${TESTS:-ON} TOKENS=${TOKENS:-64,256,1024,4096} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/'} \
  bash bench/probes/patch_ab.sh
