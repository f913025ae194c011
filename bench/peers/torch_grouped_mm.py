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
import sys

import torch

from peer_common import INPUTS, SHAPES, graph_median_us, run_cells


def routed_offsets(tokens, experts, top_k, gen):
    """Each token's top-k experts from random logits; returns the per-expert end offsets."""
    logits = torch.randn(tokens, experts, generator=gen, device="cuda")
    ids = logits.topk(top_k, dim=1).indices.flatten()
    counts = torch.bincount(ids, minlength=experts)
    return torch.cumsum(counts, 0).to(torch.int32), int(counts.gt(0).sum())


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

    def body():
        for i in range(INPUTS):
            torch._grouped_mm(xs[i], w13.transpose(1, 2), offs=offs[i], out_dtype=dtype)
            torch._grouped_mm(hs[i], w2.transpose(1, 2), offs=offs[i], out_dtype=dtype)

    return graph_median_us(body, INPUTS, replays), used / INPUTS, {}


def main():
    # torch 2.11's fp16 grouped GEMM on sm_90 is a fallback that reads the offsets on the host:
    # no graph, so no peer for that dtype.
    return run_cells("torch_grouped_mm", "", time_cell, skip_dtype_on="graph capture")


if __name__ == "__main__":
    sys.exit(main())
