"""Adapted-layer cost at SAM ViT-L qkv size: factored deltas vs materialising them vs the frozen linear.

    python experiments/benchmarks/bench_deltas.py            # d_in 1024, d_out 3072, T=3, 4096 tokens
    python experiments/benchmarks/bench_deltas.py --tokens 1024 --repeats 5   # quicker

Every variant runs forward + backward (gradients w.r.t. the delta factors when there is a delta; w.r.t.
the input too with --input-grad, as for a layer deep inside a network, which adds one frozen GEMM to
every variant). Variants are interleaved in one process; the table reports medians and ratios of medians:
- delta_speedup   = materialised delta alone / factored delta alone      (target >= 5)
- layer_speedup   = materialising adapted layer / our adapted layer      (target >= 2)
- vs_frozen       = our adapted layer / frozen nn.Linear alone           (target <= 1.25)
- mixed_vs_split  = one mixed-task batch / the same samples as per-task batches (target <= 1.05)
- fused_gain      = adapted layer computing `y + scale * delta(x)` / ours, which accumulates the delta's
                    up-projection into the frozen GEMM's output in place (`addmm_`)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, print_table, steady_allocator, write_json,
)
from tensoradapt import TaskLinear, make_delta  # noqa: E402

RANKS = {"tucker": (4, 32, 32), "cp": 32, "tt": (4, 32), "lora": 32, "shared-lora": 32}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-in", type=int, default=1024)
    p.add_argument("--d-out", type=int, default=3072)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (split into 4 samples)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--decomps", default=",".join(RANKS))
    p.add_argument("--input-grad", action="store_true", help="also back-propagate to the layer input")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/benchmarks/bench_deltas.json")
    add_malloc_arg(p)
    args = p.parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    T, d_out, d_in = args.tasks, args.d_out, args.d_in
    base = nn.Linear(d_in, d_out).to(dev).requires_grad_(False)
    samples = 4
    x = torch.randn(samples, args.tokens // samples, d_in, device=dev)
    ids = torch.arange(samples, device=dev) % T

    # a dense upstream gradient, as inside a network (sum().backward() would send a stride-0 one)
    grad_out = torch.randn(samples, args.tokens // samples, d_out, device=dev)

    def step(fn):
        def run():
            xi = x.detach().requires_grad_(args.input_grad)
            y = fn(xi)
            if y.requires_grad:  # the frozen linear without input grad has no backward at all
                y.backward(grad_out)
        return run

    variants = {"frozen": step(base)}
    layers = {}
    for decomp in args.decomps.split(","):
        delta = make_delta(decomp, (T, d_out, d_in), RANKS[decomp]).to(dev)
        with torch.no_grad():  # non-zero factors, so nothing is trivially zero
            for prm in delta.parameters():
                prm.normal_(0, 0.02)
        layer = TaskLinear(base, delta, scale=0.5)
        layer.task = 1
        layers[decomp] = layer

        def materialising(xi, layer=layer):
            # what the paper's public code does: form (T, d_out, d_in) each forward, then one dense GEMM
            w = layer.base.weight + layer.scale * layer.delta.to_tensor()[1]
            return F.linear(xi, w, layer.base.bias)

        def unfused(xi, layer=layer):
            return layer.base(xi) + layer.scale * layer.delta(xi, 1)

        def mixed(xi, layer=layer):
            layer.task = ids
            y = layer(xi)
            layer.task = 1
            return y

        def split(xi, layer=layer):
            out = torch.empty(*xi.shape[:-1], d_out, device=dev)
            for t in range(T):
                sel = (ids == t).nonzero().flatten()
                if len(sel):
                    layer.task = t
                    out = out.index_copy(0, sel, layer(xi[sel]))
            layer.task = 1
            return out

        variants[f"{decomp}/adapted"] = step(layer)
        variants[f"{decomp}/materialising"] = step(materialising)
        variants[f"{decomp}/unfused"] = step(unfused)
        variants[f"{decomp}/delta_factored"] = step(lambda xi, d=delta: d(xi, 1))
        variants[f"{decomp}/delta_materialised"] = step(lambda xi, d=delta: xi @ d.to_tensor()[1].T)
        variants[f"{decomp}/mixed"] = step(mixed)
        variants[f"{decomp}/split"] = step(split)

    timings = interleaved_medians(variants, repeats=args.repeats, device=dev)
    med = {k: v["median_s"] for k, v in timings.items()}
    rows = []
    for decomp in layers:
        rows.append({
            "decomp": decomp,
            "ranks": str(RANKS[decomp]),
            "delta params": layers[decomp].delta.num_parameters,
            "adapted ms": 1e3 * med[f"{decomp}/adapted"],
            "frozen ms": 1e3 * med["frozen"],
            "delta_speedup": med[f"{decomp}/delta_materialised"] / med[f"{decomp}/delta_factored"],
            "layer_speedup": med[f"{decomp}/materialising"] / med[f"{decomp}/adapted"],
            "vs_frozen": med[f"{decomp}/adapted"] / med["frozen"],
            "mixed_vs_split": med[f"{decomp}/mixed"] / med[f"{decomp}/split"],
            "fused_gain": med[f"{decomp}/unfused"] / med[f"{decomp}/adapted"],
        })
    print(f"\nforward+backward{' (input grad)' if args.input_grad else ''}, x: ({samples}, {args.tokens // samples}, {d_in}) -> {d_out}, T={T}, "
          f"{args.device}, {torch.get_num_threads()} threads, medians of {args.repeats}")
    table = print_table(rows, list(rows[0]))
    payload = {"args": vars(args), "machine": machine_info(), "timings": timings, "rows": rows, "table": table}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
