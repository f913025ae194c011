#!/usr/bin/env python3
"""A peer measured on the card at hand: PyTorch's grouped GEMM (torch._grouped_mm) for the two
expert GEMMs of a MoE layer ALONE, timed with bench_moe's method so that its numbers stand
beside FlashMoE's in the same device call.

The issues' "to beat" columns were measured on an H200. When the device lends another card,
this script gives a peer's two-launch time on that card instead of comparing across cards.
What is timed, per forward: gate/up = x_sorted @ W13[e] (each expert's rows, 2I columns) and
down = h @ W2[e] (H columns), two launches; routing, the gather, the activation and the
weighted sum are NOT timed (as in the issues' tables). Method: a CUDA graph of 8 forwards on 8
inputs with their own routing (near-uniform: top-k of random logits), 5 warm-up replays, the
median of REPLAYS replays divided by 8. Weights are distinct per expert and larger than L2 on
every listed shape, so the chosen experts' bytes come from DRAM as in bench_moe.

Prints one line per cell and writes JSON lines to $OUT/peer_torch_grouped_mm.jsonl.
Environment: DTYPES (bf16,fp16), TOKENS (comma list), SHAPES (comma list of names), REPLAYS.
"""
import json
import os
import statistics
import sys

import torch

SHAPES = {  # name: (hidden, intermediate, experts, top_k), bench_moe's four shapes
    "Qwen3-30B-A3B": (2048, 768, 128, 8),
    "OLMoE": (2048, 1024, 64, 8),
    "DeepSeek-V2-Lite": (2048, 1408, 64, 6),
    "Mixtral-8x7B": (4096, 14336, 8, 2),
}
INPUTS = 8


def routed_offsets(tokens, experts, top_k, gen):
    """Each token's top-k experts from random logits; returns the per-expert end offsets."""
    logits = torch.randn(tokens, experts, generator=gen, device="cuda")
    ids = logits.topk(top_k, dim=1).indices.flatten()
    counts = torch.bincount(ids, minlength=experts)
    return torch.cumsum(counts, 0).to(torch.int32), int(counts.gt(0).sum())


def make_weights(name, dtype):
    """Stored (E, N, K) row-major and passed transposed: the K-major B the grouped GEMM reads,
    as engines store their expert weights."""
    hidden, inter, experts, _ = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(experts)
    w13 = torch.empty(experts, 2 * inter, hidden, device="cuda", dtype=dtype)
    w2 = torch.empty(experts, hidden, inter, device="cuda", dtype=dtype)
    for e in range(experts):  # one expert at a time: Mixtral's float32 draw would be 11 GB
        w13[e] = torch.randn(2 * inter, hidden, generator=gen, device="cuda") * 0.02
        w2[e] = torch.randn(hidden, inter, generator=gen, device="cuda") * 0.02
    return w13, w2


def time_cell(name, dtype, tokens, replays, w13, w2):
    hidden, inter, experts, top_k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens * 1009 + experts)
    pairs = tokens * top_k
    offs, xs, hs, used = [], [], [], 0
    for _ in range(INPUTS):
        o, u = routed_offsets(tokens, experts, top_k, gen)
        offs.append(o)
        used += u
        xs.append(torch.randn(pairs, hidden, generator=gen, device="cuda").to(dtype))
        hs.append(torch.randn(pairs, inter, generator=gen, device="cuda").to(dtype))
    gate_up = [torch.empty(pairs, 2 * inter, device="cuda", dtype=dtype) for _ in range(INPUTS)]
    down = [torch.empty(pairs, hidden, device="cuda", dtype=dtype) for _ in range(INPUTS)]

    def forwards():
        for i in range(INPUTS):
            gate_up[i].copy_(torch._grouped_mm(xs[i], w13.transpose(1, 2), offs=offs[i]))
            down[i].copy_(torch._grouped_mm(hs[i], w2.transpose(1, 2), offs=offs[i]))

    # Check one forward against per-expert matmuls before timing it.
    forwards()
    o = offs[0].tolist()
    begin = 0
    for e in range(experts):
        end = o[e]
        if end > begin:
            ref = xs[0][begin:end].float() @ w13[e].float().t()
            err = (gate_up[0][begin:end].float() - ref).abs().max().item()
            if err > 2e-2 * max(1.0, ref.abs().max().item()):
                raise RuntimeError(f"{name} T={tokens}: grouped_mm differs by {err}")
        begin = end

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            forwards()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(INPUTS):
            torch._grouped_mm(xs[i], w13.transpose(1, 2), offs=offs[i], out_dtype=dtype)
            torch._grouped_mm(hs[i], w2.transpose(1, 2), offs=offs[i], out_dtype=dtype)
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    per_forward = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(replays):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        per_forward.append(start.elapsed_time(stop) * 1e3 / INPUTS)
    del graph
    return statistics.median(per_forward), used / INPUTS


def main():
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    wanted = os.environ.get("DTYPES", "bf16").split(",")
    tokens = [int(t) for t in os.environ.get("TOKENS", "1,4,16,64,256,512,1024,4096").split(",")]
    shapes = os.environ.get("SHAPES", ",".join(SHAPES)).split(",")
    replays = int(os.environ.get("REPLAYS", "30"))
    out = os.environ.get("OUT", "out")
    os.makedirs(out, exist_ok=True)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with open(os.path.join(out, "peer_torch_grouped_mm.jsonl"), "a") as log:
        for dt in wanted:
            for name in shapes:
                w13, w2 = make_weights(name, dtypes[dt])
                for t in tokens:
                    try:
                        us, used = time_cell(name, dtypes[dt], t, replays, w13, w2)
                    except Exception as exc:  # report the cell, go on with the rest
                        print(f"{name}/{dt}/T:{t}  failed: {exc}", flush=True)
                        if "graph capture" in str(exc):
                            # torch 2.11's fp16 grouped GEMM on sm_90 is a fallback that reads
                            # the offsets on the host: no graph, so no peer for this dtype.
                            break
                        continue
                    print(f"{name}/{dt}/T:{t:<5} {us:9.1f} us  experts used {used:.1f}",
                          flush=True)
                    log.write(json.dumps({"cell": f"{name}/{dt}/T:{t}", "us": us,
                                          "experts_used": used,
                                          "device": torch.cuda.get_device_name()}) + "\n")
                    log.flush()  # a call cut short keeps the cells it timed
                    torch.cuda.empty_cache()
                del w13, w2
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
