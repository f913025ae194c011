#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 161, the decode combine dropping the ypart lines it summed from L2
# (`decode_discard.patch`, on only under FLASHMOE_PROBE_DISCARD=1): the patched tree with its
# full GPU ctest (discard off), HEAD's binary (variant `head`), the patched binary with the
# discard on (env1), then test_forward_gpu again with the discard on.
set -uo pipefail
out=${OUT:-out}
PATCHES=bench/probes/decode_discard.patch ENV_VARIANTS="FLASHMOE_PROBE_DISCARD=1" \
  TESTS=${TESTS:-ON} TOKENS=${TOKENS:-16,64,256} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/'} bash bench/probes/patch_ab.sh
if [ -x build/gpu/tests/test_forward_gpu ]; then
  FLASHMOE_PROBE_DISCARD=1 build/gpu/tests/test_forward_gpu >"$out/discard_tests.log" 2>&1
  echo "test_forward_gpu with the discard on: exit $?"
  grep -E "PASSED|FAILED" "$out/discard_tests.log" | tail -5
fi
