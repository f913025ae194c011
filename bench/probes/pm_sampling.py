"""Reads `ncu --page raw --csv --print-metric-instances values` of one profiled kernel: prints
its scalar metrics of interest, then every PM-sampling metric as the mean of its samples over
each twentieth of the samples (pm_sampling.sh)."""
import csv
import re
import sys

BUCKETS = 20


def numbers(cell):
    out = []
    for part in re.split(r"[;\s]+", cell.strip()):
        try:
            out.append(float(part.replace(",", "")))
        except ValueError:
            pass
    return out


def main(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = next((i for i, r in enumerate(rows) if "ID" in r or "Kernel Name" in r), None)
    if header is None or header + 2 >= len(rows):
        print(open(path).read()[:3000])
        return
    names, data = rows[header], rows[header + 2]
    for name, cell in zip(names, data):
        if name in ("dram__bytes_read.sum", "lts__t_sector_hit_rate.pct", "gpu__time_duration.sum"):
            print(f"  {name:40s} {cell} {rows[header + 1][names.index(name)]}")
    for name, cell in zip(names, data):
        values = numbers(cell)
        if len(values) < BUCKETS:
            continue
        step = len(values) / BUCKETS
        means = []
        for b in range(BUCKETS):
            part = values[int(b * step):int((b + 1) * step)] or [0.0]
            means.append(sum(part) / len(part))
        short = name.split(".", 2)[-1] if "Triage" in name else name
        print(f"  {short[:60]} ({len(values)} samples)")
        print("    " + " ".join(f"{m:.3g}" for m in means))


if __name__ == "__main__":
    main(sys.argv[1])
