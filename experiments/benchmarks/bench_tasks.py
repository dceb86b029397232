#!/usr/bin/env python
"""What each adapter costs as tasks are added, with and without a task-shared trunk (issue 15).

    python experiments/benchmarks/bench_tasks.py                       # tiny_p8, T in 1,2,3,5,8, k in 0, L/2
    python experiments/benchmarks/bench_tasks.py --model vit_b --image-size 512 --device cuda --amp bf16

Per (method, T, k), side by side in one process: trainable and delta parameters; the encoder's forward +
backward in a train step and its all-task inference (what the trunk shares); the whole train step and the
whole all-task inference (the decoders are never shared); peak tensor memory of a train step. The tasks are
the first T of the task table (semantic, depth, normal, boundary, occlusion, contour, offset, nonplanar).
Ratios are against k = 0 of the same method and T; the arithmetic bound of the encoder's ratio at k = L/2
is (1 + T) / 2T. Times are medians of interleaved repeats.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.bench_msam import no_grad, train_step, with_amp  # noqa: E402
from experiments.benchmarks.common import (  # noqa: E402
    add_malloc_arg, interleaved_medians, machine_info, peak_tensor_bytes, print_table, steady_allocator,
    write_json,
)
from tensoradapt.mtl import task_table  # noqa: E402
from tensoradapt.sam import build_msam, get_sam_config, parameter_breakdown  # noqa: E402

METHODS = ("tucker", "cp", "tt", "lora", "shared-lora")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny_p8")
    p.add_argument("--image-size", type=int, default=None, help="encoder input side (default the model's)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tasks", default="1,2,3,5,8", help="the numbers of tasks T")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ranks", default="8", help="bottleneck rank r: tucker (4, r, r), cp r, tt (r, r), lora r")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    add_malloc_arg(p)
    p.add_argument("--out", default="runs/benchmarks/bench_tasks.json")
    args = p.parse_args(argv)
    args.tasks = [int(v) for v in args.tasks.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    if max(args.tasks) > len(task_table()) or min(args.tasks) < 1:
        p.error(f"--tasks must lie in 1..{len(task_table())}")
    return args


def _ranks(method: str, r: int):
    return {"tucker": (4, r, r), "tt": (r, r)}.get(method, r)


def _steps(model, images):
    """(encoder train, encoder inference, whole train step, whole inference) closures."""
    x, _ = model.preprocess(images)
    ids = list(range(len(model.task_names)))

    def enc_train():
        model._encode(x, ids).float().square().mean().backward()
        for p in model.parameters():
            p.grad = None

    return enc_train, no_grad(lambda: model._encode(x, ids)), train_step(model, images), no_grad(lambda: model(images))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.malloc == "steady":
        steady_allocator()
    cfg = get_sam_config(args.model, args.image_size)
    depth = cfg.encoder_depth
    table = task_table()
    images = torch.rand(args.batch, 3, cfg.image_size * 3 // 4, cfg.image_size,
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    rows, variants, keep = [], {}, []
    r = int(args.ranks)
    for method in args.methods:
        for T in args.tasks:
            tasks = {n: spec.channels for n, spec in list(table.items())[:T]}
            for k in (0, depth // 2):
                torch.manual_seed(0)
                model = build_msam(cfg, tasks, decomp=method, ranks=_ranks(method, r), dropout=0.0,
                                   shared_blocks=k).to(args.device).train()
                with torch.no_grad():  # non-zero deltas, so no work is trivially zero
                    for n, p in model.named_parameters():
                        if ".delta." in n:
                            p.normal_(0, 0.02)
                counts = parameter_breakdown(model)
                name = f"{method}/T{T}/k{k}"
                fns = [with_amp(args, f) for f in _steps(model, images)]
                for part, fn in zip(("enc_train", "enc_infer", "train", "infer"), fns):
                    variants[f"{name}/{part}"] = fn
                rows.append({"method": method, "T": T, "k": k, "trainable": counts["trainable"],
                             "delta": counts["delta"], "peak MiB": peak_tensor_bytes(fns[2], args.device) / 2**20})
                keep.append(model)
    times = interleaved_medians(variants, repeats=args.repeats, warmup=1, device=args.device)
    for row in rows:
        name = f"{row['method']}/T{row['T']}/k{row['k']}"
        for part in ("enc_train", "enc_infer", "train", "infer"):
            row[f"{part} s"] = times[f"{name}/{part}"]["median_s"]
    for row in rows:
        base = next(b for b in rows if b["method"] == row["method"] and b["T"] == row["T"] and b["k"] == 0)
        for part in ("enc_train", "enc_infer", "train", "infer"):
            row[f"{part} vs k0"] = row[f"{part} s"] / base[f"{part} s"]
        row["bound"] = (1 + row["T"]) / (2 * row["T"]) if row["k"] else 1.0
        lora = next((b for b in rows if b["method"] == "lora" and b["T"] == row["T"] and b["k"] == row["k"]), None)
        row["delta vs lora"] = row["delta"] / lora["delta"] if lora and lora["delta"] else float("nan")
    print(f"\nmSAM {args.model} ({depth} blocks, k = 0 or {depth // 2}) at {cfg.image_size}, batch {args.batch}, "
          f"rank {r}, {args.device}, amp {args.amp}, {torch.get_num_threads()} threads")
    cols = ["method", "T", "k", "trainable", "delta", "delta vs lora", "peak MiB", "enc_train vs k0", "bound",
            "enc_infer vs k0", "train vs k0", "infer vs k0", "train s", "infer s"]
    table_md = print_table(rows, cols)
    payload = {"args": vars(args), "machine": machine_info(), "rows": rows, "table": table_md}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
