#!/usr/bin/env bash
# One device call (about 8 minutes on a fresh machine; run from the repository root): row 165,
# the working tree with the switch at 32 rows an expert on every device: its full GPU ctest,
# then 24-32 rows an expert under the library's rule against FLASHMOE_BENCH_PREFILL_ROWS=23 (the
# engine from 24 rows, the old rule for small experts; for Mixtral-8x7B's large experts the old
# rule began at 28, which T = 112 and 128 are).
TESTS=ON SETTINGS="FLASHMOE_BENCH_PREFILL_ROWS=0 FLASHMOE_BENCH_PREFILL_ROWS=23" \
  CELLS="OLMoE:192,224,256 Qwen3-30B-A3B:384,448,512
    DeepSeek-V2-Lite:256,320 Mixtral-8x7B:112,128" \
  bash bench/probes/cells_ab.sh
