#!/usr/bin/env python
"""Encoder attention, side by side: segment-anything's (stores the N x N matrix) vs fused SDPA with folded
relative positions and vs exact chunked attention (`tensoradapt.sam.attention`), with and without activation
checkpointing.

    python experiments/benchmarks/bench_attention.py --model vit_b --image-size 1024 --batch 1 --repeats 1
    python experiments/benchmarks/bench_attention.py --model vit_l --image-size 1024 --batch 2 \\
        --variants sdpa+ckpt --repeats 0          # the paper's ViT-L setting: memory only
    ... --device cuda --amp bf16                  # the GPU setting

Per variant: the peak tensor memory of one mSAM training step (T tasks, default 3, as one mixed-task batch, TA-LoRA
at the paper's ranks; CPU: replayed from the profiler's memory records, CUDA: max_memory_allocated) and the
median step time of `--repeats` interleaved steps; ratios against segment-anything's attention. "needs MiB" adds
what a training run holds besides the step (weights, buffers, AdamW's moments of the trainable parameters): the
memory a device must have for that model size and batch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.bench_msam import TASKS, build, train_step, with_amp  # noqa: E402
from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, peak_tensor_bytes, print_table, steady_allocator,
    write_json,
)
from tensoradapt.sam.attention import set_attention  # noqa: E402

#: name -> (attention, grad_checkpointing)
VARIANTS = {kind + ckpt: (kind, bool(ckpt)) for ckpt in ("", "+ckpt") for kind in ("sam", "sdpa", "chunked")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tasks", type=int, default=len(TASKS), choices=range(1, len(TASKS) + 1),
                   help=f"T: the first T of {dict(TASKS)} (default all)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant (0: memory only)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    add_malloc_arg(p)
    p.add_argument("--out", default=None, help="JSON path (default runs/benchmarks/bench_attention_<model>.json)")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variants must be a non-empty subset of {list(VARIANTS)}, got {unknown or args.variants}")
    return args


def resident_bytes(model: torch.nn.Module) -> int:
    """What a training run holds besides one step's peak: the weights and buffers, and AdamW's two moments of
    every trainable parameter (fp32)."""
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return held + sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    images = torch.rand(args.batch, 3, args.image_size, args.image_size,
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    steps, rows = {}, []
    for name in args.variants:
        attention, ckpt = VARIANTS[name]
        tasks = dict(list(TASKS.items())[:args.tasks])
        model = build(args, "tucker", grad_checkpointing=ckpt, tasks=tasks).train()
        set_attention(model.image_encoder, attention)
        step = with_amp(args, train_step(model, images))
        peak = peak_tensor_bytes(step, args.device)
        rows.append({"variant": name, "peak MiB": peak / 2**20, "needs MiB": (peak + resident_bytes(model)) / 2**20})
        steps[name] = step  # the model stays alive through the closure
    if args.repeats > 0:
        timings = interleaved_medians(steps, repeats=args.repeats, warmup=0, device=args.device)
        for row in rows:
            row["step s"] = timings[row["variant"]]["median_s"]
    ref = next((r for r in rows if r["variant"] == "sam"), None)
    for row in rows:
        if ref is not None:
            row["memory vs sam"] = row["peak MiB"] / ref["peak MiB"]
            if "step s" in row:
                row["time vs sam"] = row["step s"] / ref["step s"]
    print(f"\nmSAM {args.model} at {args.image_size}², batch {args.batch}, T={args.tasks}, tucker (4, 32, 32), {args.device}, "
          f"amp {args.amp}, {torch.get_num_threads()} threads")
    table = print_table(rows, ["variant", "peak MiB", "memory vs sam", "needs MiB", "step s", "time vs sam"])
    out = args.out or f"runs/benchmarks/bench_attention_{args.model}.json"
    payload = {"args": vars(args), "machine": machine_info(), "rows": rows, "table": table}
    write_json(out, payload)
    return payload


if __name__ == "__main__":
    main()
