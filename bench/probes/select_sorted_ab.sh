#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; run from the repository root with a clean
# working tree): row 170, each lane's top-k candidates sorted once so that a round pops the
# winner's head (select_sorted.patch, E <= 256), against HEAD's binary, with the full GPU ctest
# (the patch picks the same experts in the same order by construction; the tests hold it to the
# reference) and the patched tree traced at Qwen3 T = 1 and 64.
PATCHES=bench/probes/select_sorted.patch TESTS=ON TOKENS=${TOKENS:-1,4,16,64} \
  TRACE_T="1 64" FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/' \
  bash bench/probes/patch_ab.sh
