#!/usr/bin/env bash
# loaded_latency.cu on the device: a routing chain's step costs with and without a stream beside
# it (bench/NOTES.md row 184). About a minute. Run from the repository root.
set -euo pipefail
out=${OUT:-out}
mkdir -p "$out" build
nvcc -arch=sm_90a -O3 -std=c++17 -DFMT_HEADER_ONLY=1 -Iinclude -Isrc -Ibench \
  -o build/loaded_latency bench/probes/loaded_latency.cu
timeout 120 build/loaded_latency | tee "$out/loaded_latency.txt"
