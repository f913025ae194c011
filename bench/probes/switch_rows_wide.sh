#!/usr/bin/env bash
# One device call (about 4 minutes on a fresh machine; run from the repository root): row 164,
# how far past 32 rows an expert the decode kernels (the tall 48-row variant there) still beat
# the engine: 40, 48 and 64 rows an expert for each shape, the library's rule (the engine)
# against FLASHMOE_BENCH_PREFILL_ROWS=64 (the decode kernels up to 64 rows). Rows an expert =
# T x K / E: OLMoE and Mixtral T / 8 and T / 4, Qwen3 T / 16, DeepSeek-V2-Lite 6 T / 64.
SETTINGS="FLASHMOE_BENCH_PREFILL_ROWS=0 FLASHMOE_BENCH_PREFILL_ROWS=64" \
  CELLS="OLMoE:320,384,512 Qwen3-30B-A3B:640,768,1024
    DeepSeek-V2-Lite:427,512,683 Mixtral-8x7B:160,192,256" \
  bash bench/probes/cells_ab.sh
