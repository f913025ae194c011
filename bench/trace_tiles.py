#!/usr/bin/env python3
"""Splits a warp-specialised trace's expert tiles by m-tile: each expert's last m-tile (its
remainder rows: a half tile, or a full tile only partly filled) against its full m-tiles, for
gate/up and down events, so that what a remainder costs against a full tile is read from one
trace (bench/NOTES.md, the m-tiles' quantisation).

Usage: bench/trace_tiles.py trace_T4096.json   (what examples/trace writes; engine traces only)

An event's tile index is slot * per_slot + rest (gate/up: per_slot = the n-tiles of I; down:
n-tiles of H times K slices). The trace does not carry I or H, so per_slot is the largest number
that divides every expert's lowest tile index and tile count (an expert's slots are consecutive).
"""
import json
import math
import statistics
import sys


def per_slot_of(tiles_by_expert):
    g = 0
    for tiles in tiles_by_expert.values():
        g = math.gcd(g, min(tiles))
        g = math.gcd(g, max(tiles) - min(tiles) + 1)
    return g


def describe(name, durations):
    if not durations:
        return f"  {name:22s}      0"
    d = sorted(durations)
    pick = lambda q: d[min(len(d) - 1, int(q * len(d)))]
    return (f"  {name:22s} {len(d):6d}  mean {statistics.fmean(d):7.2f}  median {pick(0.5):7.2f}"
            f"  p10 {pick(0.1):7.2f}  p90 {pick(0.9):7.2f} us")


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    for kind in ("gate_up", "down"):
        mine = [e for e in events if e.get("cat") == kind]
        if not mine:
            print(f"{kind}: no events")
            continue
        tiles = {}
        for e in mine:
            tiles.setdefault(e["args"]["expert"], []).append(e["args"]["tile"])
        per_slot = per_slot_of(tiles)
        if per_slot == 0:
            print(f"{kind}: cannot infer tiles per m-tile")
            continue
        last_slot = {x: max(t) // per_slot for x, t in tiles.items()}
        slots = {x: max(t) // per_slot - min(t) // per_slot + 1 for x, t in tiles.items()}
        full, last, only = [], [], []
        for e in mine:
            x, slot = e["args"]["expert"], e["args"]["tile"] // per_slot
            if slot != last_slot[x]:
                full.append(e["dur"])
            elif slots[x] == 1:
                only.append(e["dur"])
            else:
                last.append(e["dur"])
        m_tiles = sum(slots.values())
        print(f"{kind}: {len(mine)} tiles, {per_slot} per m-tile, {m_tiles} m-tiles over "
              f"{len(tiles)} experts ({m_tiles / len(tiles):.2f} an expert)")
        print(describe("not an expert's last", full))
        print(describe("an expert's last", last))
        print(describe("an expert's only", only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
