#!/usr/bin/env python3
"""Splits a warp-specialised trace's expert tiles by m-tile: each expert's last m-tile (its
remainder rows: a half tile, or a full tile only partly filled) against its full m-tiles, for
gate/up and down events, so that what a remainder costs against a full tile is read from one
trace (bench/NOTES.md, the m-tiles' quantisation).

Usage: bench/trace_tiles.py trace_T4096.json [--shape H,I]   (engine traces: examples/trace, or
bench_moe's FLASHMOE_BENCH_TRACE_DIR). With --shape, also the expert weights' stream rate in each
tenth of the span (each tile's weight bytes spread evenly over its event): where the launch
streams below the copy rate.

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


def stream_rates(trace, events, hidden, inter, per_slot_by_kind):
    """Weight bytes a tile streams: gate/up 2 x its columns of I x H, down its columns of H x its
    K slice of I (2-byte weights)."""
    info = trace["otherData"]
    tn = {"gate_up": info["tile_n_gateup"], "down": info["tile_n_down"]}
    ks = max(1, info["down_k_slices"])
    klen = math.ceil(math.ceil(inter / 64) / ks) * 64  # whole 64-column steps, as the kernel
    t0 = min(e["ts"] for e in events)
    span = max(e["ts"] + e["dur"] for e in events) - t0
    tenth = span / 10
    rates = {k: [0.0] * 10 for k in tn}
    for kind, per_slot in per_slot_by_kind.items():
        for e in (e for e in events if e.get("cat") == kind):
            rest = e["args"]["tile"] % per_slot
            if kind == "gate_up":
                nbytes = 2 * min(tn[kind], inter - rest * tn[kind]) * hidden * 2
            else:
                n, s = divmod(rest, ks)
                nbytes = min(tn[kind], hidden - n * tn[kind]) * min(klen, inter - s * klen) * 2
            a, b = e["ts"] - t0, e["ts"] - t0 + max(e["dur"], 1e-3)
            for w in range(int(a // tenth), min(9, int(b // tenth)) + 1):
                lo, hi = max(a, w * tenth), min(b, (w + 1) * tenth)
                if hi > lo:
                    rates[kind][w] += nbytes * (hi - lo) / (b - a)
    print(f"expert weights streamed, TB/s in each tenth of the span ({tenth:.1f} us):")
    for kind, r in rates.items():
        print(f"  {kind:8s}" + "".join(f"{x / tenth / 1e6:7.2f}" for x in r))
    total = [rates["gate_up"][w] + rates["down"][w] for w in range(10)]
    print(f"  {'both':8s}" + "".join(f"{x / tenth / 1e6:7.2f}" for x in total))


def main():
    args = sys.argv[1:]
    shape = None
    if len(args) == 3 and args[1] == "--shape":
        shape = tuple(int(v) for v in args[2].split(","))
        args = args[:1]
    if len(args) != 1 or (shape is not None and len(shape) != 2):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    with open(args[0]) as f:
        trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    per_slot_by_kind = {}
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
        per_slot_by_kind[kind] = per_slot
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
        # Tiles released together (the first wave after the tile table) against the rest: in
        # session 33's H200 traces the first wave's gate/up tiles took 20-36% longer than the
        # later ones of the same size (bench/NOTES.md, row 153).
        start = min(e["ts"] for e in mine)
        first = [e["dur"] for e in mine if e["ts"] < start + 1.0]
        print(describe("started in the 1st us", first))
        print(describe("started later", [e["dur"] for e in mine if e["ts"] >= start + 1.0]))
    if shape is not None and len(per_slot_by_kind) == 2:
        stream_rates(trace, events, shape[0], shape[1], per_slot_by_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
