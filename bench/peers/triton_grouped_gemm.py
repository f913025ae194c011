#!/usr/bin/env python3
"""The other peer of the issues' tables, on the card at hand: a Triton grouped GEMM in the style
of the fused-MoE kernels serving engines run (pairs sorted by expert and padded per expert to
the block height, one expert per block of rows, token rows read in place through the sorted
pair ids, results written by pair id), written here from that description, for the two expert
GEMMs of a MoE layer ALONE. Routing, the sort, the activation and the weighted sum are not
timed, as in the issues' tables.

Each cell's block shape is tuned on the spot: every candidate of a small set is timed for the
gate/up GEMM and for the down GEMM separately, the fastest of each is kept (engines ship tuned
tables per expert count, width and batch; this stands in for them), and the pair is then timed
with bench_moe's method: a CUDA graph of 8 forwards on 8 inputs with their own near-uniform
routing, warm-up replays, the median replay over 8. Each kept kernel's output is checked
against per-expert matmuls first.

Prints one line per cell and appends JSON lines to $OUT/peer_triton_grouped_gemm.jsonl (the
format of torch_grouped_mm.py, so `bench/table_summary.py --peer` reads either).
Environment: DTYPES (bf16,fp16), TOKENS (comma list), SHAPES (comma list), REPLAYS.
"""
import itertools
import sys

import torch
import triton
import triton.language as tl

from peer_common import INPUTS, SHAPES, graph_median_us, run_cells


@triton.jit
def grouped_gemm(a_ptr, b_ptr, c_ptr, pair_ids_ptr, block_expert_ptr, pairs, a_rows_per_pair,
                 N, K, stride_a, stride_be, stride_bn, stride_c, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 blocks_m):
    # Row blocks in groups of GROUP_M share their column blocks' weights while they are in L2.
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(pair_ids_ptr + rows)  # padding rows hold `pairs`
    live = ids < pairs
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (ids // a_rows_per_pair).to(tl.int64)[:, None] * stride_a + ks[None, :]
    b_ptrs = (b_ptr + expert * stride_be + (cols % N).to(tl.int64)[None, :] * stride_bn +
              ks[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        in_k = ks < K - k0
        a = tl.load(a_ptrs, mask=live[:, None] & in_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=in_k[:, None], other=0.0)
        acc += tl.dot(a, b)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    c_ptrs = c_ptr + ids.to(tl.int64)[:, None] * stride_c + cols[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=live[:, None] & (cols < N)[None, :])


def sort_pairs(expert_of_pair, experts, block_m):
    """Pair ids grouped by expert, each expert's run padded to a multiple of block_m with the
    sentinel `pairs`; the expert of every row block."""
    pairs = expert_of_pair.numel()
    order = torch.argsort(expert_of_pair, stable=True)
    counts = torch.bincount(expert_of_pair, minlength=experts).tolist()
    ids, block_expert, at = [], [], 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        blocks = (n + block_m - 1) // block_m
        run = torch.full((blocks * block_m,), pairs, dtype=torch.int32, device="cuda")
        run[:n] = order[at:at + n].to(torch.int32)
        ids.append(run)
        block_expert += [e] * blocks
        at += n
    return torch.cat(ids), torch.tensor(block_expert, dtype=torch.int32, device="cuda")


class Gemm:
    """One grouped GEMM launch: C[pair] = A[pair // a_rows_per_pair] @ W[expert of pair]^T."""

    def __init__(self, a, w, c, expert_of_pair, a_rows_per_pair, cfg):
        self.block_m, self.block_n, self.block_k, self.group_m, self.warps, self.stages = cfg
        self.a, self.w, self.c = a, w, c
        self.pairs = expert_of_pair.numel()
        self.a_rows_per_pair = a_rows_per_pair
        self.ids, self.block_expert = sort_pairs(expert_of_pair, w.shape[0], self.block_m)
        self.blocks_m = self.block_expert.numel()
        self.n, self.k = w.shape[1], w.shape[2]

    def launch(self):
        grid = (self.blocks_m * triton.cdiv(self.n, self.block_n),)
        grouped_gemm[grid](self.a, self.w, self.c, self.ids, self.block_expert, self.pairs,
                           self.a_rows_per_pair, self.n, self.k, self.a.stride(0),
                           self.w.stride(0), self.w.stride(1), self.c.stride(0),
                           BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                           GROUP_M=self.group_m, blocks_m=self.blocks_m, num_warps=self.warps,
                           num_stages=self.stages)

    def check(self, expert_of_pair):
        self.launch()
        rows = self.a[torch.arange(self.pairs, device="cuda") // self.a_rows_per_pair].float()
        for e in torch.unique(expert_of_pair).tolist():
            sel = (expert_of_pair == e).nonzero().flatten()
            ref = rows[sel] @ self.w[e].float().t()
            err = (self.c[sel].float() - ref).abs().max().item()
            if err > 2e-2 * max(1.0, ref.abs().max().item()):
                raise RuntimeError(f"expert {e}: grouped GEMM differs by {err}")


def candidates(rows_per_expert):
    """Block shapes worth trying: row blocks near the experts' row counts, a few widths, depths
    and pipeline depths."""
    # At 16 rows the 16-row blocks alone lost to the 64-row blocks of twice the rows (Mixtral
    # T = 64 against T = 128, session 33): the next height up competes too.
    if rows_per_expert <= 16:
        block_ms = [16, 32]
    else:
        block_ms = [32, 64] if rows_per_expert <= 96 else [64, 128]
    out = []
    for bm, bn, bk, stages in itertools.product(block_ms, (64, 128), (64, 128), (3, 4)):
        warps = 8 if bm * bn >= 128 * 128 else 4
        out.append((bm, bn, bk, 1 if bm <= 32 else 8, warps, stages))
    return out


def replay_us(launches, replays):
    """Median microseconds per forward of a graph that runs `launches` (one list per input)."""
    def body():
        for fwd in launches:
            for f in fwd:
                f()

    return graph_median_us(body, len(launches), replays)


def time_cell(name, dtype, tokens, replays, w13, w2):
    hidden, inter, experts, top_k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens * 1009 + experts)
    pairs = tokens * top_k
    inputs = []
    for _ in range(INPUTS):
        logits = torch.randn(tokens, experts, generator=gen, device="cuda")
        expert_of_pair = logits.topk(top_k, dim=1).indices.flatten()
        x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(dtype)
        h = torch.randn(pairs, inter, generator=gen, device="cuda").to(dtype)
        gate_up = torch.empty(pairs, 2 * inter, device="cuda", dtype=dtype)
        out = torch.empty(pairs, hidden, device="cuda", dtype=dtype)
        inputs.append((expert_of_pair, x, h, gate_up, out))
    used = sum(int(torch.unique(i[0]).numel()) for i in inputs) / INPUTS
    cands = candidates(pairs / used)

    def build(which, cfg):
        gemms = []
        for expert_of_pair, x, h, gate_up, out in inputs:
            if which == "gate_up":
                gemms.append(Gemm(x, w13, gate_up, expert_of_pair, top_k, cfg))
            else:
                gemms.append(Gemm(h, w2, out, expert_of_pair, 1, cfg))
        return gemms

    best = {}
    for which in ("gate_up", "down"):
        timed = []
        for cfg in cands:
            try:
                gemms = build(which, cfg)
                timed.append((replay_us([[g.launch] for g in gemms], max(5, replays // 3)), cfg))
            except Exception as exc:  # a shape the compiler refuses: the others compete
                print(f"  {which} {cfg}: {exc}", file=sys.stderr)
        if not timed:
            raise RuntimeError(f"no {which} candidate ran")
        best[which] = min(timed)[1]
        build(which, best[which])[0].check(inputs[0][0])
    gu, dn = build("gate_up", best["gate_up"]), build("down", best["down"])
    us = replay_us([[g.launch, d.launch] for g, d in zip(gu, dn)], replays)
    return us, used, {"gate_up": best["gate_up"], "down": best["down"]}


def main():
    return run_cells("triton_grouped_gemm", f", triton {triton.__version__}", time_cell)


if __name__ == "__main__":
    sys.exit(main())
