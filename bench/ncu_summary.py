#!/usr/bin/env python3
"""Reads what bench/ncu_source.sh exported and prints what a session needs in a few screens:
the details page's headline metrics (throughputs, warp states) and the source lines (or SASS
instructions) that hold the most warp-stall samples, each with its largest stall reasons.

Usage: bench/ncu_summary.py DIR [LINES]   (DIR holds ncu_details.csv and ncu_source_*.csv)
Column names differ between ncu versions, so columns are found by what their names contain.
"""
import csv
import os
import sys


def number(text):
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def details(path):
    wanted = ("Throughput", "Duration", "Warp Cycles Per Issued", "Issued Ipc", "Stall",
              "Achieved Occupancy", "Registers Per Thread", "L2 Hit Rate", "L1/TEX Hit Rate",
              "Memory Throughput", "DRAM", "Executed Ipc")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next((i for i, r in enumerate(rows) if "Metric Name" in r), None)
    if head is None:
        print(f"{path}: no 'Metric Name' column")
        return
    cols = rows[head]
    name, unit, value = (cols.index(c) for c in ("Metric Name", "Metric Unit", "Metric Value"))
    section = cols.index("Section Name") if "Section Name" in cols else None
    print(f"== {os.path.basename(path)}: headline metrics")
    seen = set()
    for r in rows[head + 1:]:
        if len(r) <= max(name, unit, value):
            continue
        if any(w in r[name] for w in wanted) and r[name] not in seen:
            seen.add(r[name])
            where = f"[{r[section]}] " if section is not None else ""
            print(f"  {where}{r[name]}: {r[value]} {r[unit]}")


def source(path, lines):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next((i for i, r in enumerate(rows)
                 if any("Sampling" in c and "All" in c for c in r)), None)
    if head is None:
        print(f"{path}: no warp-sampling column; columns: {rows[0] if rows else []}")
        return
    cols = rows[head]
    total_col = next(i for i, c in enumerate(cols) if "Sampling" in c and "All" in c)
    text_col = next((i for i, c in enumerate(cols) if c in ("Source", "Line", "# Source")), None)
    addr_col = next((i for i, c in enumerate(cols) if "Address" in c or c == "#"), None)
    # Per-reason columns: numeric sample counts whose names say stall (ncu: stall_* or
    # "Warp Stall Sampling (...)" variants other than the totals).
    reason_cols = [i for i, c in enumerate(cols)
                   if i != total_col and ("stall" in c.lower()) and "Not-issued" not in c
                   and "All" not in c]
    body = [r for r in rows[head + 1:] if len(r) > total_col and number(r[total_col])]
    total = sum(number(r[total_col]) for r in body) or 1.0
    body.sort(key=lambda r: -number(r[total_col]))
    print(f"== {os.path.basename(path)}: {len(body)} rows with samples, {total:.0f} samples; "
          f"top {lines}")
    for r in body[:lines]:
        share = 100.0 * number(r[total_col]) / total
        reasons = sorted(((number(r[i]) or 0.0, cols[i]) for i in reason_cols), reverse=True)
        top = ", ".join(f"{c} {v:.0f}" for v, c in reasons[:3] if v > 0)
        where = r[addr_col] if addr_col is not None else ""
        text = (r[text_col] if text_col is not None else "").strip()[:90]
        print(f"  {share:5.1f}%  {where:>8}  {text}  | {top}")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    folder = sys.argv[1]
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    path = os.path.join(folder, "ncu_details.csv")
    if os.path.exists(path):
        details(path)
    for kind in ("cuda", "sass", "cuda,sass"):
        path = os.path.join(folder, f"ncu_source_{kind}.csv")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            source(path, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
