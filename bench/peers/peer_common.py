"""What both peers share: bench_moe's four shapes, their weights, bench_moe's timing method (a
CUDA graph of INPUTS forwards on INPUTS inputs, warm-up replays, the median replay per forward)
and the loop over cells that prints one line per cell and appends JSON lines for
`bench/table_summary.py --peer`. Environment: DTYPES (bf16,fp16), TOKENS (comma list), SHAPES
(comma list of names), REPLAYS, OUT."""
import json
import os
import statistics

import torch

SHAPES = {  # name: (hidden, intermediate, experts, top_k), bench_moe's four shapes
    "Qwen3-30B-A3B": (2048, 768, 128, 8),
    "OLMoE": (2048, 1024, 64, 8),
    "DeepSeek-V2-Lite": (2048, 1408, 64, 6),
    "Mixtral-8x7B": (4096, 14336, 8, 2),
}
INPUTS = 8
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_weights(name, dtype):
    """Stored (E, N, K) row-major: the K-major B a grouped GEMM reads, as engines store their
    expert weights. Distinct per expert and larger than L2 on every shape, so the chosen
    experts' bytes come from DRAM as in bench_moe."""
    hidden, inter, experts, _ = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(experts)
    w13 = torch.empty(experts, 2 * inter, hidden, device="cuda", dtype=dtype)
    w2 = torch.empty(experts, hidden, inter, device="cuda", dtype=dtype)
    for e in range(experts):  # one expert at a time: Mixtral's float32 draw would be 11 GB
        w13[e] = torch.randn(2 * inter, hidden, generator=gen, device="cuda") * 0.02
        w2[e] = torch.randn(hidden, inter, generator=gen, device="cuda") * 0.02
    return w13, w2


def graph_median_us(body, forwards, replays):
    """Median microseconds per forward of a CUDA graph of `body` (which issues `forwards`
    forwards' launches), after one eager run on the capture stream and 5 replays."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        body()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3 / forwards)
    del graph
    return statistics.median(times)


def run_cells(peer, header, time_cell, skip_dtype_on=None):
    """Times every cell with `time_cell(name, dtype, tokens, replays, w13, w2)`, which returns
    (us per forward, experts used on average, a dict of what else to report), and appends
    $OUT/peer_<peer>.jsonl. A failed cell is reported and skipped; one whose message holds
    `skip_dtype_on` skips the rest of its dtype."""
    wanted = os.environ.get("DTYPES", "bf16").split(",")
    tokens = [int(t) for t in os.environ.get("TOKENS", "1,4,16,64,256,512,1024,4096").split(",")]
    shapes = os.environ.get("SHAPES", ",".join(SHAPES)).split(",")
    replays = int(os.environ.get("REPLAYS", "30"))
    out = os.environ.get("OUT", "out")
    os.makedirs(out, exist_ok=True)
    device = torch.cuda.get_device_name()
    print(f"# {device}, torch {torch.__version__}{header}")
    with open(os.path.join(out, f"peer_{peer}.jsonl"), "a") as log:
        for dt in wanted:
            for name in shapes:
                w13, w2 = make_weights(name, DTYPES[dt])
                for t in tokens:
                    cell = f"{name}/{dt}/T:{t}"
                    try:
                        us, used, extra = time_cell(name, DTYPES[dt], t, replays, w13, w2)
                    except Exception as exc:  # report the cell, go on with the rest
                        print(f"{cell}  failed: {exc}", flush=True)
                        if skip_dtype_on is not None and skip_dtype_on in str(exc):
                            break
                        continue
                    more = "".join(f"  {k} {v}" for k, v in extra.items())
                    print(f"{name}/{dt}/T:{t:<5} {us:9.1f} us  experts used {used:.1f}{more}",
                          flush=True)
                    log.write(json.dumps({"cell": cell, "us": us, "experts_used": used, **extra,
                                          "device": device}) + "\n")
                    log.flush()  # a call cut short keeps the cells it timed
                    torch.cuda.empty_cache()
                del w13, w2
                torch.cuda.empty_cache()
    return 0
