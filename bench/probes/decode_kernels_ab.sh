#!/usr/bin/env bash
# One device call (about 6 minutes on a fresh machine; run from the repository root): row 166,
# choose_decode_kernel's pick at large decode T, where it always takes the widest tiles, against
# each of the four tile-width kernels forced (FLASHMOE_BENCH_DECODE_KERNEL=1-4: narrow gate/up
# with 32-, 64- and 128-column down tiles, then wide gate/up with 128-column down). Since row 165
# the decode kernels run up to 32 rows an expert, and their tail at T = 256 is one down tile
# long (24-25 us at OLMoE and DeepSeek-V2-Lite): narrower down tiles shorten it.
SETTINGS="- FLASHMOE_BENCH_DECODE_KERNEL=1 FLASHMOE_BENCH_DECODE_KERNEL=2
  FLASHMOE_BENCH_DECODE_KERNEL=3 FLASHMOE_BENCH_DECODE_KERNEL=4" \
  CELLS="Qwen3-30B-A3B:128,256,512 OLMoE:128,256
    DeepSeek-V2-Lite:256,320 Mixtral-8x7B:32,128" \
  bash bench/probes/cells_ab.sh
