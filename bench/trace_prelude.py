#!/usr/bin/env python3
"""Reads the routing prelude of a prefill or engine trace: where the time goes from the launch
to each block's first expert tile (router tasks, select tickets, the tile table, row maps,
gathers, waits), so that a change to the prelude is planned from numbers (bench/NOTES.md).

Usage: bench/trace_prelude.py trace_T1024.json   (examples/trace, or bench_moe's
FLASHMOE_BENCH_TRACE_DIR). Times are microseconds from the first block's entry.

Router tasks traced with bench/probes/router_phases.patch also carry three checkpoints (Wait
events with expert -20: row pointers set, -22: the weight prologue issued, -21: the K loop
done), which split each task into setup, prologue, K loop and the partials' stores. Select
tickets traced with bench/probes/select_phases.patch carry five more (expert -40: partials
summed, -44: thread 0's token selected (start) and its pairs registered (end), -41: thread 0
done, -42: every warp done, -43: combine counters zeroed), which split each ticket into the
partials' sum, the top-k, the pairs' registration, the other warps, the zeroing and the count.
"""
import json
import statistics
import sys

# Checkpoint events of the router-phases probe: expert id -> name.
CHECKPOINTS = {-20: "setup", -22: "prologue", -21: "k_loop"}
EXPERT_KINDS = ("gate_up", "down")


def load(path):
    """A trace JSON's metadata, its task events (dicts: kind, block, start, end, expert, tile) and
    each block's exit, all in microseconds from the first block's entry."""
    with open(path) as f:
        doc = json.load(f)
    meta = doc.get("otherData", {})
    events, entries, exits = [], [], {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            args = e.get("args", {})
            events.append({
                "kind": e.get("cat", ""),
                "block": e["tid"],
                "start": e["ts"],
                "end": e["ts"] + e["dur"],
                "expert": args.get("expert", -1),
                "tile": args.get("tile", -1),
            })
        elif e.get("ph") == "i" and e.get("name") == "block entry":
            entries.append(e["ts"])
        elif e.get("ph") == "i" and e.get("name") == "block exit":
            exits[e["tid"]] = e["ts"]
    base = min(entries) if entries else min((e["start"] for e in events), default=0.0)
    for e in events:
        e["start"] -= base
        e["end"] -= base
    return meta, events, {b: t - base for b, t in exits.items()}


def phase_of(e):
    """The prelude phase an event belongs to, or None (expert tiles, combines)."""
    kind, expert, tile = e["kind"], e["expert"], e["tile"]
    if kind == "router":
        return "router"
    if kind == "wait":
        if expert in CHECKPOINTS or expert <= -30:
            return None  # probes' checkpoints and totals (trace_gaps.py reads the latter)
        if expert == -2:
            return "wait router chunk"
        if expert < 0:
            return "wait routing"  # the table, the selects' count or the row maps
        return None  # a tile waiting for its m-tile
    if kind == "routing":
        if tile < 0:
            return "tile table"
        return "row map" if expert == -3 else "select"
    if kind == "gather":
        return "gather"
    return None


def quantiles(values):
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return v[0], pick(0.5), v[-1]


def phase_table(events):
    rows = {}
    for e in events:
        phase = phase_of(e)
        if phase is not None:
            rows.setdefault(phase, []).append(e)
    order = ["router", "wait router chunk", "select", "tile table", "wait routing", "row map",
             "gather"]
    lines = [f"  {'phase':18s} {'count':>5s} {'first':>8s} {'med start':>9s} {'med end':>8s}"
             f" {'last end':>8s} {'mean us':>8s} {'max us':>7s}"]
    for name in order + sorted(set(rows) - set(order)):
        if name not in rows:
            continue
        evs = rows[name]
        durs = [e["end"] - e["start"] for e in evs]
        starts = [e["start"] for e in evs]
        ends = [e["end"] for e in evs]
        lines.append(f"  {name:18s} {len(evs):5d} {min(starts):8.2f} {quantiles(starts)[1]:9.2f}"
                     f" {quantiles(ends)[1]:8.2f} {max(ends):8.2f} {statistics.fmean(durs):8.2f}"
                     f" {max(durs):7.2f}")
    return lines


def split_lines(what, parts):
    """Median, mean and max of each named part (lists of microseconds)."""
    lines = [f"{what} split by the probe's checkpoints (us):"]
    for name, v in parts.items():
        if v:
            lines.append(f"  {name:9s} median {quantiles(v)[1]:6.2f}"
                         f"  mean {statistics.fmean(v):6.2f}  max {max(v):6.2f}")
    return lines


def router_split(events):
    """Median and mean of each router task's parts, from the probe's checkpoints."""
    marks = {}
    for e in events:
        if e["kind"] == "wait" and e["expert"] in CHECKPOINTS:
            marks.setdefault((e["block"], e["tile"]), {})[CHECKPOINTS[e["expert"]]] = e["end"]
    if not marks:
        return []
    parts = {"setup": [], "prologue": [], "k_loop": [], "stores": []}
    for e in events:
        if e["kind"] != "router":
            continue
        m = marks.get((e["block"], e["tile"]))
        if not m or len(m) != len(CHECKPOINTS):
            continue
        parts["setup"].append(m["setup"] - e["start"])
        parts["prologue"].append(m["prologue"] - m["setup"])
        parts["k_loop"].append(m["k_loop"] - m["prologue"])
        parts["stores"].append(e["end"] - m["k_loop"])
    return split_lines("router tasks", parts)


SELECT_MARKS = (-40, -44, -41, -42, -43)


def select_split(events):
    """Median and mean of each select ticket's parts, from the select-phases probe."""
    marks = {}
    for e in events:
        if e["kind"] == "wait" and e["expert"] in SELECT_MARKS:
            marks.setdefault((e["block"], e["tile"]), {})[e["expert"]] = e
    if not marks:
        return []
    parts = {"partials": [], "top-k": [], "register": [], "others": [], "zero": [],
             "count": []}
    for e in events:
        if e["kind"] != "routing" or e["tile"] < 0 or e["expert"] == -3:
            continue
        m = marks.get((e["block"], e["tile"]))
        if not m or len(m) != len(SELECT_MARKS):
            continue
        parts["partials"].append(m[-40]["end"] - e["start"])
        parts["top-k"].append(m[-44]["start"] - m[-40]["end"])
        parts["register"].append(m[-41]["end"] - m[-44]["start"])
        parts["others"].append(m[-42]["end"] - m[-41]["end"])
        parts["zero"].append(m[-43]["end"] - m[-42]["end"])
        parts["count"].append(e["end"] - m[-43]["end"])
    return split_lines("select tickets", parts)


def first_tiles(events):
    """Each block's first expert tile: when it starts, and what the block did before."""
    first = {}
    for e in events:
        if e["kind"] in EXPERT_KINDS:
            b = e["block"]
            if b not in first or e["start"] < first[b]:
                first[b] = e["start"]
    if not first:
        return ["no expert tiles in the trace"]
    starts = sorted(first.values())
    lo, med, hi = quantiles(starts)
    lines = [f"first expert tile per block: earliest {lo:.2f} us, median {med:.2f}, latest {hi:.2f}"
             f" ({len(starts)} blocks)"]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        at = starts[int(q * (len(starts) - 1))]
        lines.append(f"  {int(q * 100):3d}% of blocks have started one by {at:.2f} us")
    busy = {}
    for e in events:
        phase = phase_of(e)
        if phase is None or e["block"] not in first or e["start"] >= first[e["block"]]:
            continue
        busy[phase] = busy.get(phase, 0.0) + (e["end"] - e["start"])
    n = len(first)
    ranked = sorted(busy.items(), key=lambda kv: -kv[1])
    lines.append("  before it, per block on average (us): " +
                 ", ".join(f"{k} {v / n:.2f}" for k, v in ranked))
    return lines


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    meta, events, _ = load(argv[1])
    print(f"{argv[1]}: variant {meta.get('variant', '?')}, T = {meta.get('num_tokens', '?')}, "
          f"{meta.get('grid_blocks', '?')} blocks, router tasks {meta.get('router_tasks', '?')} "
          f"({meta.get('router_tile_m', '?')} x {meta.get('router_tile_n', '?')}, "
          f"{meta.get('router_k_slices', '?')} K slices), "
          f"gather parts {meta.get('gather_parts', '?')}")
    lines = phase_table(events) + router_split(events) + select_split(events)
    for line in lines + first_tiles(events):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
