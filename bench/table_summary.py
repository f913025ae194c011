#!/usr/bin/env python3
"""One line per bench_moe cell from its JSON output (--benchmark_out=FILE
--benchmark_out_format=json): shape, dtype, T, FlashMoE's median us, % of the floor, TFLOP/s,
% of the dense bf16 rate measured in the same run, and the cuBLAS baselines' times and ratios
(baseline / FlashMoE: above 1 means FlashMoE is faster). For the issues' closing tables.

Usage: bench/table_summary.py out/table_bf16.json [more.json ...]
"""
import json
import sys


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    print(f"{'cell':34s} {'us':>9s} {'%floor':>7s} {'TFLOP/s':>8s} {'%dense':>7s}"
          f" {'cublas_grp':>10s} {'ratio':>6s} {'cublas':>9s} {'ratio':>6s}")
    for path in argv[1:]:
        with open(path) as f:
            doc = json.load(f)
        ctx = doc.get("context", {})
        print(f"# {path}: {ctx.get('device', '?')},"
              f" copy {ctx.get('copy_bandwidth_GBps', '?')} GB/s,"
              f" dense bf16 {ctx.get('dense_bf16_TFLOPs', '?')} TFLOP/s")
        for b in doc.get("benchmarks", []):
            if b.get("error_occurred"):
                print(f"{b['name']}: error {b.get('error_message', '')}")
                continue
            if "us_median" not in b:
                continue
            name = b["name"].split("/min_time")[0]
            g = lambda k: b.get(k, float("nan"))
            print(f"{name:34s} {g('us_median'):9.1f} {g('pct_of_floor'):7.1f} {g('TFLOPs'):8.1f}"
                  f" {g('pct_of_dense'):7.1f} {g('cublas_grouped_us'):10.1f}"
                  f" {g('cublas_grouped_ratio'):6.2f} {g('cublas_us'):9.1f}"
                  f" {g('cublas_ratio'):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
