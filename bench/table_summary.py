#!/usr/bin/env python3
"""One line per bench_moe cell from its JSON output (--benchmark_out=FILE
--benchmark_out_format=json): shape, dtype, T, FlashMoE's median us, % of the floor, TFLOP/s,
% of the dense bf16 rate measured in the same run, and the cuBLAS baselines' times and ratios
(baseline / FlashMoE: above 1 means FlashMoE is faster). For the issues' closing tables.
With --peer FILE (JSON lines of bench/peers/, measured in the same call; the fastest line of a
cell wins), a last pair of columns: the peer's two grouped GEMMs alone and its ratio.

Usage: bench/table_summary.py [--peer peer.jsonl] out/table_bf16.json [more.json ...]
"""
import json
import sys


def main(argv):
    args = argv[1:]
    peer = {}
    if len(args) >= 2 and args[0] == "--peer":
        with open(args[1]) as f:
            for line in f:
                row = json.loads(line)
                # Several peers' lines: the faster one is the bar ("to beat" in the issues).
                peer[row["cell"]] = min(row["us"], peer.get(row["cell"], float("inf")))
        args = args[2:]
    if not args:
        print(__doc__)
        return 2
    print(f"{'cell':34s} {'us':>9s} {'%floor':>7s} {'TFLOP/s':>8s} {'%dense':>7s}"
          f" {'cublas_grp':>10s} {'ratio':>6s} {'cublas':>9s} {'ratio':>6s}"
          + (f" {'peer':>9s} {'ratio':>6s}" if peer else ""))
    for path in args:
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
                  f" {g('cublas_ratio'):6.2f}"
                  + (f" {peer.get(name, float('nan')):9.1f}"
                     f" {peer.get(name, float('nan')) / g('us_median'):6.2f}" if peer else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
