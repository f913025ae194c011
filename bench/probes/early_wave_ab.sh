#!/usr/bin/env bash
# One device call (about 7 minutes on a fresh machine; session 46, bench/NOTES.md row 175; run
# from the repository root with a clean working tree): a timing bound, results wrong by design.
# early_wave.patch lets the decode kernels' first grid-many tile tickets run before the tile
# table, each on a guessed m-tile (expert slot % E, token 0's row in every row); each counts into
# its ticket's real m-tile once the table is out. What a first wave that needs no routing could
# gain at most (a first wave computed for every token, or any other design that starts the
# stream at launch): the prelude taken off the stream's start, less what the wave's DRAM reads
# cost the routing beside it. Against HEAD's binary in the same call, two rounds, then warm
# traces of the patched tree at Qwen3 T = 64 and 256.
set -uo pipefail
TESTS=OFF PATCHES=bench/probes/early_wave.patch TOKENS=4,16,64,128,256 \
  FILTER='^(Qwen3-30B-A3B|OLMoE|DeepSeek-V2-Lite)/bf16/T:(4|16|64|128|256)/' \
  bash bench/probes/patch_ab.sh
source bench/probes/tree.sh  # $out, stamp, trace_one
trace_one "$out/trace_q64" '^Qwen3-30B-A3B/bf16/' 64 2048,768 |
  grep -E "expert tiles|TB/s|first|router|select|table"
trace_one "$out/trace_q256" '^Qwen3-30B-A3B/bf16/' 256 2048,768 |
  grep -E "expert tiles|TB/s|first|router|select|table"
stamp "traces done"
