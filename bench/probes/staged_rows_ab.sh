#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine with the GPU tests; run from the repository
# root with a clean working tree): row 159, the decode and 256-thread kernels' h and per-pair row
# stores staged in shared memory and written in 16-byte chunks (`staged_rows.patch`), with its
# full GPU ctest, against HEAD's binary (variant `head`).
set -uo pipefail
PATCHES=bench/probes/staged_rows.patch ENV_VARIANTS= TESTS=${TESTS:-ON} \
  TOKENS=${TOKENS:-1,16,64,256} \
  FILTER=${FILTER:-'^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite|Mixtral-8x7B)/bf16/'} \
  bash bench/probes/patch_ab.sh
