"""Reads `ncu --page raw --csv --print-metric-instances values` of one kernel profiled with the
PmSampling section (pm_sampling.sh): its scalar metrics of interest; the span where the tensor
pipe is busy (the expert tiles), the DRAM read rate's deficit there against its own 75th
percentile and the samples under half of that; then the rates over the span in bins of
BIN samples (bench/NOTES.md, row 172)."""
import csv
import re
import sys

BIN = 4  # samples a bin (about 1.4 us each at pm_sampling.sh's interval)
SCALARS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_sectors_op_write.sum",
           "lts__t_sector_hit_rate.pct", "gpu__time_duration.sum")
SHOWN = ("dramc__read_throughput", "lts__t_sector_throughput_srcunit_tex",
         "sm__pipe_tensor_cycles_active", "lts__average_t_sector_hit_rate_realtime")


def numbers(cell):
    out = []
    for part in re.split(r"[;\s]+", cell.strip()):
        try:
            out.append(float(part.replace(",", "")))
        except ValueError:
            pass
    return out


def sampled(names, data, prefix):
    for name, cell in zip(names, data):
        short = name.split(".", 2)[-1] if "Triage" in name else name
        if short.startswith(prefix):
            return numbers(cell)
    return []


def main(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = next((i for i, r in enumerate(rows) if "ID" in r or "Kernel Name" in r), None)
    if header is None or header + 2 >= len(rows):
        print(open(path).read()[:3000])
        return
    names, units, data = rows[header], rows[header + 1], rows[header + 2]
    for name, unit, cell in zip(names, units, data):
        if name in SCALARS:
            print(f"  {name:40s} {cell} {unit}")
    dram = sampled(names, data, "dramc__read_throughput")
    tensor = sampled(names, data, "sm__pipe_tensor_cycles_active")
    # The first sample holds counts from before the kernel; the span starts after it.
    busy = [i for i, v in enumerate(tensor) if v > 1 and i > 5]
    if dram and not busy:
        # A kernel without MMAs (ws_stream_pm.sh's no-MMA streams): the span where DRAM reads.
        busy = [i for i, v in enumerate(dram) if v > 5 and i > 0]
        print("  no tensor pipe: the span is where DRAM reads run above 5% of peak")
    if not dram or not busy:
        print("  no sampled DRAM rate or tensor pipe in this report")
        return
    a, b = busy[0], busy[-1] + 1
    span = dram[a:b]
    ref = sorted(span)[int(len(span) * 0.75)]
    deficit = sum(max(0.0, ref - v) for v in span) / ref
    print(f"  tensor pipe busy over samples {a}-{b - 1} ({b - a}); DRAM reads there: mean "
          f"{sum(span) / len(span):.1f}% of peak, 75th percentile {ref:.1f}%, deficit "
          f"{deficit:.1f} samples")
    print("  samples under half of it:", [i for i in range(a, b) if dram[i] < ref / 2])
    for prefix in SHOWN:
        values = sampled(names, data, prefix)[a:b]
        if values:
            bins = [values[i:i + BIN] for i in range(0, len(values), BIN)]
            print(f"  {prefix} ({BIN}-sample bins)")
            print("    " + " ".join(f"{sum(x) / len(x):.0f}" for x in bins))


if __name__ == "__main__":
    main(sys.argv[1])
