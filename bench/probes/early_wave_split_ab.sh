#!/usr/bin/env bash
# One device call (about 7 minutes; session 48, bench/NOTES.md row 183; run from the repository
# root with a clean working tree): a timing bound, results wrong by design. Row 175's early wave
# (early_wave.patch, rebased onto row 180 as early_wave_split.patch) with its size as a knob:
# FLASHMOE_PROBE_EARLY_WAVE is the share of a grid's tile tickets, in thousandths (default 1000),
# that stream guessed gate/up tiles before the tile table. Row 175 found routing five- to
# six-fold slower beside a full wave; this asks whether that follows the wave's DRAM load (a
# smaller wave slows routing less) or any stream at all. Against HEAD's binary, two rounds, no
# tests; then warm traces of Qwen3 T = 64 at a quarter wave and a full one.
set -uo pipefail
TESTS=OFF PATCHES=bench/probes/early_wave_split.patch TOKENS=4,16,64 \
  ENV_VARIANTS="FLASHMOE_PROBE_EARLY_WAVE=0 FLASHMOE_PROBE_EARLY_WAVE=125 \
FLASHMOE_PROBE_EARLY_WAVE=250 FLASHMOE_PROBE_EARLY_WAVE=500" \
  FILTER='^(Qwen3-30B-A3B|OLMoE)/bf16/T:(4|16|64)/' bash bench/probes/patch_ab.sh
source bench/probes/tree.sh  # $out, stamp, trace_one
for wave in 250 1000; do
  trace_one "$out/trace_q64_w$wave" '^Qwen3-30B-A3B/bf16/' 64 2048,768 \
    FLASHMOE_PROBE_EARLY_WAVE=$wave | grep -E "expert tiles|TB/s|first|router|select|table"
done
stamp "traces done"
