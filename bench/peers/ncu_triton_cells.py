#!/usr/bin/env python3
"""Launches the Triton peer's two grouped GEMMs (triton_grouped_gemm.py) for given cells with
fixed block shapes, a few times each, so that a profiler can take one launch of each: no tuning,
no graph. Environment: CELLS, a ';' list of name:T:gate_up_cfg:down_cfg with each cfg as
bm,bn,bk,group,warps,stages (the shapes triton_grouped_gemm.py printed for the cell)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triton_grouped_gemm as peer  # noqa: E402
from peer_common import SHAPES, make_weights  # noqa: E402


def main():
    for cell in os.environ["CELLS"].split(";"):
        name, t, gu_cfg, dn_cfg = cell.split(":")
        tokens = int(t)
        hidden, inter, experts, top_k = SHAPES[name]
        w13, w2 = make_weights(name, torch.bfloat16)
        gen = torch.Generator(device="cuda").manual_seed(tokens)
        logits = torch.randn(tokens, experts, generator=gen, device="cuda")
        expert_of_pair = logits.topk(top_k, dim=1).indices.flatten()
        x = torch.randn(tokens, hidden, generator=gen, device="cuda").bfloat16()
        h = torch.randn(tokens * top_k, inter, generator=gen, device="cuda").bfloat16()
        gate_up = torch.empty(tokens * top_k, 2 * inter, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(tokens * top_k, hidden, device="cuda", dtype=torch.bfloat16)
        cfg = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
        gu = peer.Gemm(x, w13, gate_up, expert_of_pair, top_k, cfg(gu_cfg))
        dn = peer.Gemm(h, w2, out, expert_of_pair, 1, cfg(dn_cfg))
        for _ in range(4):
            gu.launch()
            dn.launch()
        torch.cuda.synchronize()
        print(f"{name} T={tokens}: launched", flush=True)
        del w13, w2
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
