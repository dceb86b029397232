"""Our fitting and factored forward against the ecosystem: tensorly directly, tensorly-torch's layers.

    python experiments/benchmarks/bench_tensorly.py

1. `Cls.from_tensor(dense, ranks)` vs calling tensorly's decomposition directly on the same tensor
   (numpy backend, float64): time ratio and both relative errors (the wrapper should cost ~nothing).
2. One task's forward + backward at SAM ViT-L qkv size: our factored `delta(x, t)` vs tensorly-torch's
   `factorized_linear` on the same factors (its factorized and reconstructed implementations).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, print_table, steady_allocator, write_json,
)
from tensoradapt import CPDelta, TTDelta, TuckerDelta  # noqa: E402
from tensoradapt.fit import relative_error  # noqa: E402


def bench_fit(T, d_out, d_in, repeats):
    import tensorly as tl
    from tensorly.decomposition import parafac, tensor_train, tucker

    torch.manual_seed(0)
    # T "separately fine-tuned" deltas sharing structure, plus noise
    shared = torch.randn(d_out, 48, dtype=torch.float64) @ torch.randn(48, d_in, dtype=torch.float64)
    dense = torch.stack([shared * (1 + 0.3 * t) + 0.05 * torch.randn(d_out, d_in, dtype=torch.float64)
                         for t in range(T)])
    np_dense = dense.numpy()
    cases = {
        "tucker": (TuckerDelta, (4, 32, 32), lambda: tucker(np_dense, rank=[min(4, T), 32, 32], n_iter_max=500, tol=1e-12)),
        "cp": (CPDelta, 32, lambda: parafac(np_dense, rank=32, n_iter_max=500, tol=1e-12, init="svd")),
        "tt": (TTDelta, (3, 32), lambda: tensor_train(np_dense, rank=[1, 3, 32, 1])),
    }
    to_dense = {"tucker": tl.tucker_to_tensor, "cp": tl.cp_to_tensor, "tt": tl.tt_to_tensor}
    rows, variants = [], {}
    for name, (cls, ranks, direct) in cases.items():
        def direct_np(direct=direct):
            with tl.backend_context("numpy"):
                return direct()
        variants[f"{name}/ours"] = lambda cls=cls, ranks=ranks: cls.from_tensor(dense, ranks)
        variants[f"{name}/tensorly"] = direct_np
    timings = interleaved_medians(variants, repeats=repeats, warmup=1)
    for name, (cls, ranks, direct) in cases.items():
        _, err_ours = cls.from_tensor(dense, ranks)
        with tl.backend_context("numpy"):
            err_direct = relative_error(dense, torch.as_tensor(to_dense[name](direct())))
        rows.append({
            "decomp": name, "ranks": str(ranks),
            "ours s": timings[f"{name}/ours"]["median_s"], "tensorly s": timings[f"{name}/tensorly"]["median_s"],
            "ours/tensorly": timings[f"{name}/ours"]["median_s"] / timings[f"{name}/tensorly"]["median_s"],
            "err ours": err_ours, "err tensorly": err_direct,
        })
    return rows, timings


def bench_forward(T, d_out, d_in, tokens, repeats):
    import tltorch
    from tltorch.functional import factorized_linear

    torch.manual_seed(0)
    x = torch.randn(tokens, d_in)
    rows, variants, meta = [], {}, {}
    for name, cls, ranks in [("tucker", TuckerDelta, (4, 32, 32)), ("cp", CPDelta, 32), ("tt", TTDelta, (4, 32))]:
        delta = cls((T, d_out, d_in), ranks)
        with torch.no_grad():
            for p in delta.parameters():
                p.normal_(0, 0.02)
        ft = delta.to_tltorch()
        assert torch.allclose(ft.to_tensor(), delta.to_tensor(), atol=1e-5)

        def run(fn):
            def step():
                fn().sum().backward()
            return step

        variants[f"{name}/ours"] = run(lambda d=delta: d(x, 1))
        for impl in ("factorized", "reconstructed"):
            variants[f"{name}/tltorch-{impl}"] = run(
                lambda ft=ft, impl=impl: factorized_linear(x, ft[1], implementation=impl))
        meta[name] = ranks
    timings = interleaved_medians(variants, repeats=repeats)
    for name, ranks in meta.items():
        ours = timings[f"{name}/ours"]["median_s"]
        rows.append({
            "decomp": name, "ranks": str(ranks), "ours ms": 1e3 * ours,
            "tltorch factorized / ours": timings[f"{name}/tltorch-factorized"]["median_s"] / ours,
            "tltorch reconstructed / ours": timings[f"{name}/tltorch-reconstructed"]["median_s"] / ours,
        })
    return rows, timings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--fit-dims", default="768,768", help="d_out,d_in of the tensor to fit")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="runs/benchmarks/bench_tensorly.json")
    add_malloc_arg(p)
    args = p.parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    fo, fi = (int(v) for v in args.fit_dims.split(","))
    print(f"fit: dense ({args.tasks}, {fo}, {fi}) float64, medians of {args.repeats}")
    fit_rows, fit_t = bench_fit(args.tasks, fo, fi, args.repeats)
    fit_table = print_table(fit_rows, list(fit_rows[0]))
    print(f"\nforward+backward of one task, x: ({args.tokens}, 1024) -> 3072, T={args.tasks}")
    fw_rows, fw_t = bench_forward(args.tasks, 3072, 1024, args.tokens, args.repeats)
    fw_table = print_table(fw_rows, list(fw_rows[0]))
    write_json(args.out, {"args": vars(args), "machine": machine_info(), "fit": fit_rows, "forward": fw_rows,
                          "timings": {"fit": fit_t, "forward": fw_t}, "tables": [fit_table, fw_table]})


if __name__ == "__main__":
    main()
