#!/usr/bin/env python3
"""Where the blocks of a prefill or engine trace sit idle once their expert tiles have started:
the gaps between a block's traced tasks (gathers, gate/up and down tiles, combines), by the
kind of task that ends each gap and by tenth of the span, and the block's end (its last task to
its exit). With bench/probes/engine_waits.patch the trace also carries each engine block's
producer totals (Wait events, expert -30: waits for an m-tile's inputs, -31: for a free job
slot, -32: decoding tickets), which say what the producer waited for in those gaps, and the
combine counts of a down tile that completed no token (combine events of expert -5, listed here
as "counts"), which are otherwise not traced.

Usage: bench/trace_gaps.py trace_T1024.json   (examples/trace, or bench_moe's
FLASHMOE_BENCH_TRACE_DIR).
"""
import statistics
import sys

from trace_prelude import load  # the same loader (this folder)

TASKS = ("gather", "gate_up", "down", "combine", "counts")
PRODUCER_TOTALS = {-30: "m-tile inputs", -31: "free job slot", -32: "ticket decode"}


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    meta, events, exits = load(argv[1])
    # load() counts from the first block's entry.
    span = max(max(exits.values(), default=0.0), max((e["end"] for e in events), default=0.0))
    by_block = {}
    for e in events:
        kind = "counts" if e["kind"] == "combine" and e["expert"] == -5 else e["kind"]
        if kind in TASKS:
            by_block.setdefault(e["block"], []).append((e["start"], e["end"], kind))
    gaps_by_kind, gaps_per_block, end_gaps = {}, [], []
    tenths = [0.0] * 10

    def spread(a, b):  # idle interval [a, b) into the tenths of the span
        for i in range(10):
            lo, hi = span * i / 10, span * (i + 1) / 10
            tenths[i] += max(0.0, min(b, hi) - max(a, lo))

    for block, tasks in by_block.items():
        tasks.sort()
        total, busy_until = 0.0, None
        for start, end, kind in tasks:
            if kind in ("gate_up", "down") or busy_until is not None:
                if busy_until is not None and start > busy_until:
                    gaps_by_kind.setdefault(kind, []).append(start - busy_until)
                    spread(busy_until, start)
                    total += start - busy_until
                busy_until = end if busy_until is None else max(busy_until, end)
        if busy_until is None:
            continue
        gaps_per_block.append(total)
        if block in exits and exits[block] > busy_until:
            end_gaps.append(exits[block] - busy_until)
            spread(busy_until, exits[block])
    print(f"{argv[1]}: variant {meta.get('variant', '?')}, T = {meta.get('num_tokens', '?')}, "
          f"{len(by_block)} blocks with tasks, span {span:.2f} us")
    if not gaps_per_block:
        print("no expert tiles in the trace")
        return 0
    print("gaps between a block's tasks after its first expert tile: mean "
          f"{statistics.fmean(gaps_per_block):.2f} us a block, max {max(gaps_per_block):.2f}")
    print(f"  {'before a':10s} {'gaps':>6s} {'total us':>10s} {'mean us':>8s} {'max us':>8s}")
    for kind in TASKS:
        g = gaps_by_kind.get(kind, [])
        if g:
            print(f"  {kind:10s} {len(g):6d} {sum(g):10.1f} {statistics.fmean(g):8.2f}"
                  f" {max(g):8.2f}")
    if end_gaps:
        print(f"  {'exit':10s} {len(end_gaps):6d} {sum(end_gaps):10.1f}"
              f" {statistics.fmean(end_gaps):8.2f} {max(end_gaps):8.2f}"
              "   (last task to the block's exit)")
    counts = [e["end"] - e["start"] for e in events
              if e["kind"] == "combine" and e["expert"] == -5]
    if counts:
        print(f"combine counts of tiles that completed no token: {len(counts)}, mean"
              f" {statistics.fmean(counts):.2f} us, {sum(counts) / len(gaps_per_block):.2f} us"
              " a block")
    print("idle blocks (gaps and ends above), mean over each tenth of the span:")
    print("  " + " ".join(f"{t / (span / 10):6.1f}" for t in tenths))
    totals = {}
    for e in events:
        if e["kind"] == "wait" and e["expert"] in PRODUCER_TOTALS:
            totals.setdefault(e["expert"], []).append((e["end"] - e["start"], e["tile"]))
    if totals:
        print("producer totals a block (engine_waits probe):")
        for expert, name in PRODUCER_TOTALS.items():
            v = totals.get(expert, [])
            if v:
                durs = [d for d, _ in v]
                line = f"  {name:14s} mean {statistics.fmean(durs):8.2f} us  max {max(durs):8.2f}"
                if expert == -30:
                    line += f"  waits that spun: {sum(t for _, t in v if t > 0)} in all"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
