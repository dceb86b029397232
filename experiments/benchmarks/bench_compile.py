"""What `torch.compile` buys for the whole adapted mSAM: eager vs compiled, side by side in one process.

    python experiments/benchmarks/bench_compile.py                 # tiny, 128², batch 4, T=3, tucker
    python experiments/benchmarks/bench_compile.py --decomp cp --backend inductor

Variants (interleaved, medians of repeated runs, after the compiled ones are warm):
- train: one training step (all T tasks in one mixed-task encoder pass, a loss, backward);
- infer: all T tasks under no_grad.
Each is run eagerly and through `torch.compile(model)`; the table gives the compiled / eager ratio, the
one-off compile time, the number of graph breaks `torch._dynamo.explain` finds in the forward (task
routing must cause none) and the largest difference between compiled and eager outputs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.bench_msam import TASKS, build, no_grad, train_step  # noqa: E402
from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, print_table, steady_allocator, write_json,
)
from tensoradapt import DECOMPS  # noqa: E402
from tensoradapt.sam import SAM_CONFIGS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=list(SAM_CONFIGS))
    p.add_argument("--decomp", default="tucker", choices=list(DECOMPS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON path (default runs/benchmarks/bench_compile_<model>.json)")
    add_malloc_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    dev = torch.device(args.device)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size,
                        generator=torch.Generator().manual_seed(0)).to(dev)
    # `build` gives every delta non-zero factors, so the compiled graph does the adapter's real work
    # (and the two models are identical: same seed)
    eager = build(args, args.decomp).train()
    model = build(args, args.decomp).train()

    explanation = torch._dynamo.explain(model)(images)
    graph_breaks = explanation.graph_break_count
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=args.backend)

    # compile (and check) each mode once, timing the one-off cost
    compile_s = {}
    for mode, grad in (("train", True), ("infer", False)):
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            compiled(images)
        compile_s[mode] = time.perf_counter() - t0
    with torch.no_grad():
        ref, got = eager(images), compiled(images)
    max_diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    scale = max(ref[k].abs().max().item() for k in ref)

    timings = interleaved_medians(
        {"train/eager": train_step(eager, images), "train/compiled": train_step(compiled, images),
         "infer/eager": no_grad(lambda: eager(images)), "infer/compiled": no_grad(lambda: compiled(images))},
        repeats=args.repeats, device=dev,
    )
    med = {k: v["median_s"] for k, v in timings.items()}
    rows = [
        {"what": f"{mode} ({args.decomp})", "eager ms": 1e3 * med[f"{mode}/eager"],
         "compiled ms": 1e3 * med[f"{mode}/compiled"], "compiled / eager": med[f"{mode}/compiled"] / med[f"{mode}/eager"],
         "compile s": compile_s[mode]}
        for mode in ("train", "infer")
    ]
    print(f"\nmSAM {args.model} at {args.image_size}², batch {args.batch}, T={len(TASKS)}, {args.device}, "
          f"{torch.get_num_threads()} threads, backend {args.backend}, medians of {args.repeats}")
    print(f"graph breaks in the forward: {graph_breaks}; max |compiled - eager| = {max_diff:.2e} "
          f"(outputs up to {scale:.2e})")
    table = print_table(rows, ["what", "eager ms", "compiled ms", "compiled / eager", "compile s"])
    out = args.out or f"runs/benchmarks/bench_compile_{args.model}.json"
    write_json(out, {"args": vars(args), "machine": machine_info(), "rows": rows, "timings": timings,
                     "graph_breaks": graph_breaks, "max_abs_diff": max_diff, "output_scale": scale,
                     "table": table})


if __name__ == "__main__":
    main()
