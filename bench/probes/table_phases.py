#!/usr/bin/env python3
"""Reads the checkpoints of bench/probes/table_phases.patch from a trace JSON: each decode
select's chunk count (-50), its top-k and registration (-51), the zeroing and barrier (-52) and
the routing count (-53), with thread 0's top-k split into its logits (-54), softmax (-55), K rounds
(-56) and pairs' registration (-57); the tile table's count loads (-61), scans (-62), m-tile
records (-63), row map (-64), barrier (-65), and its release with one load back (-66).
Usage: table_phases.py TRACE.json ..."""
import json
import statistics
import sys

NAMES = {-50: "select: chunk count", -51: "select: count + top-k + pairs",
         -54: "  top-k: logits loaded", -55: "  top-k: softmax", -56: "  top-k: K rounds",
         -57: "  top-k: pairs registered",
         -52: "select: zeroing, barrier", -53: "select: routing count",
         -61: "table: counts loaded", -62: "table: scans", -63: "table: m-tile records",
         -64: "table: row map", -65: "table: barrier", -66: "table: release + load back"}
for path in sys.argv[1:]:
    doc = json.load(open(path))
    base = min(e["ts"] for e in doc["traceEvents"] if e.get("ph") in ("X", "i"))
    rows = {}
    for e in doc["traceEvents"]:
        if e.get("ph") != "X":
            continue
        x = e.get("args", {}).get("expert", 0)
        if x in NAMES:
            rows.setdefault(x, []).append((e["ts"] - base, e["dur"]))
    print(path)
    for x in (-50, -51, -54, -55, -56, -57, -52, -53, -61, -62, -63, -64, -65, -66):
        if x not in rows:
            continue
        d = [r[1] for r in rows[x]]
        last = max(rows[x])
        print(f"  {NAMES[x]:34s} n {len(d):4d}  mean {statistics.mean(d):6.2f}  max {max(d):6.2f}"
              f"  last starts {last[0]:7.2f} us")
