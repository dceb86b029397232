#!/usr/bin/env python
"""Train and evaluate a multi-task SAM (mSAM) with one adapter configuration on NYUv2-style data.

    python experiments/sam_mtl.py             # TA-LoRA (Tucker 4,8,8) on the shipped tiny SAM, synthetic
                                              # scenes, 5 epochs: ~5 min on 2 idle CPU cores (the first
                                              # run also renders the scenes, ~6 s)
    python experiments/sam_mtl.py --decomp lora --out runs/sam_mtl/lora          # LoRA-STL baseline
    python experiments/sam_mtl.py --decomp tucker --baseline runs/sam_mtl/lora/results.json   # + delta-m
    python experiments/sam_mtl.py --model vit_b --checkpoint sam_vit_b_01ec64.pth \\
        --data nyuv2 --data-root data/nyuv2 --epochs 100 --batch-size 4 --device cuda
    torchrun --nproc_per_node 2 experiments/sam_mtl.py ...         # DDP (gloo on CPU, nccl on CUDA)
    python experiments/sam_mtl.py ... --resume                     # continue a killed run from out/last.pt

Writes into --out: results.json (per-task metrics, delta-m against --baseline, trainable parameters,
wall time, the config), loss_curves.png, predictions.png, run_config.json, train_config.json,
log.jsonl, last.pt / best.pt (trainable state only). The recipe is tensoradapt.train.finetune.
Exit status: 0 done, 2 bad arguments (one line on stderr, before any training), 3 a non-finite loss.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tensoradapt.sam.attention import ATTENTIONS
from tensoradapt.train import NonFiniteLossError
from tensoradapt.train.cli import OneLineParser, int_tuple, task_weights
from tensoradapt.train.finetune import FinetuneConfig, UsageError, run
from tensoradapt.train.finetune_config import DATASETS, DECOMPS, MODELS


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()
    m, t = d.msam, d.train
    p = OneLineParser(prog="sam_mtl.py", description=__doc__.split("\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    a = p.add_argument
    a("--decomp", default=m.decomp, help=f"adapter: {', '.join(DECOMPS)} (default tucker = TA-LoRA)")
    a("--ranks", default=None, help="decomposition ranks, e.g. 4,32,32 (tucker: r_task,r_out,r_in), 32 (cp, "
      "lora, shared-lora), 16,16 (tt); default: tucker 4,8,8 / cp 8 / tt 4,8 / lora 8 for tiny, the paper's "
      "4,32,32 / 32 / 16,16 / 32 for vit_*")
    a("--model", default=d.model, help=f"SAM size: {', '.join(MODELS)} (default tiny)")
    a("--checkpoint", default=None, help="SAM weights of that size: an official-format file or a transformers "
      "folder (config.json + model.safetensors); 'none' = random init "
      "(default: the pretrained tiny SAM, built on first use, for --model tiny)")
    a("--data", default=d.data, help=f"{' or '.join(DATASETS)} (synthetic is generated on first use)")
    a("--data-root", default=None, help="dataset folder with train/ and val/ (.npy layout)")
    a("--tasks", default=",".join(d.tasks), help="comma-separated task names")
    a("--image-size", type=int_tuple, default=None, help="H,W the samples are resized to (default per model)")
    a("--train-size", type=int, default=None, help="use only the first N training samples")
    a("--val-size", type=int, default=None, help="use only the first N validation samples")
    a("--epochs", type=int, default=t.epochs)
    a("--batch-size", type=int, default=t.batch_size, help="per process")
    a("--lr", type=float, default=t.lr)
    a("--optimizer", default=t.optimizer, help="adamw, adam or sgd (momentum 0.9)")
    a("--weight-decay", type=float, default=t.weight_decay)
    a("--schedule", default=t.schedule, help="constant, linear or cosine (after warm-up)")
    a("--warmup-ratio", type=float, default=t.warmup_ratio)
    a("--grad-accum", type=int, default=t.grad_accum)
    a("--max-grad-norm", type=float, default=t.max_grad_norm, help="0 disables clipping")
    a("--seed", type=int, default=t.seed)
    a("--qkv", default=m.qkv, help="which of q, k, v get a delta (in the qkv target)")
    a("--targets", default=",".join(m.targets), help="the linears of each encoder block that get a delta: any of "
      "qkv (the paper's, default), proj (attention output), mlp (both MLP linears), e.g. qkv,proj,mlp")
    a("--scale", type=float, default=m.scale)
    a("--dropout", type=float, default=m.dropout)
    a("--init", default=m.init, help="delta init: paper (zero core, N(0,1) factors) or orthonormal (both start at 0)")
    a("--attention", default=m.attention, choices=ATTENTIONS,
      help="encoder attention: auto (default: chunked on CPU, sdpa elsewhere), sdpa, chunked (no N x N matrix) "
           "or sam (stores it)")
    a("--shared-blocks", type=int, default=m.shared_blocks,
      help="k: the first k encoder blocks form a task-shared trunk (no delta, run once per batch); default 0")
    a("--train-modules", default=",".join(m.train_modules),
      help="encoder submodules or parameters trained in full beside the deltas, e.g. patch_embed,neck or "
           "pos_embed (default: none)")
    a("--grad-checkpointing", action="store_true", help="recompute encoder blocks in backward (less memory)")
    a("--orth-weight", type=float, default=t.orth_weight, help="orthogonality penalty weight")
    a("--orth-terms", default=t.orth_terms, help="the penalty's matrices: paper (the paper's code: Tucker's U1, U2 "
      "and core slices) or all (also the task factor)")
    a("--task-weights", type=task_weights, default={}, help="e.g. semantic=1,depth=0.5,normal=1")
    a("--lr-scale", type=task_weights, default=None,
      help="lr multipliers per parameter group (delta, embed, decoder, encoder), e.g. delta=1,embed=1; the groups "
           "given replace the defaults (" + ",".join(f"{k}={v:g}" for k, v in t.lr_scale.items()) + "), "
           "the others keep theirs")
    a("--no-augment", dest="augment", action="store_false", help="no random scale-crop / flip")
    a("--amp", default=t.amp, help="auto (bf16 on CUDA), bf16 or off")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--eval-every", type=int, default=t.eval_every, help="epochs between evaluations")
    a("--ckpt-every", dest="ckpt_every_steps", type=int, default=t.ckpt_every_steps,
      help="also checkpoint every N steps within an epoch")
    a("--skip-nonfinite", action="store_true", help="skip steps with a NaN/inf loss instead of stopping")
    a("--num-workers", type=int, default=t.num_workers)
    a("--device", default=t.device, help="auto, cpu, cuda or cuda:N")
    a("--threads", type=int, default=d.threads, help="torch intra-op threads; 0 (default): torch's, every core. "
      "Running several runs side by side, give each --threads 1: two default runs on 2 cores each ran 2.7x "
      "slower than with one thread each")
    a("--no-flush-denormal", dest="flush_denormal", action="store_false",
      help="keep subnormal floats (by default the CPU computes them as zero: sharp attention makes them "
           "common, and they are slow)")
    a("--out", default=None, help="output folder (default runs/sam_mtl/<decomp>-seed<seed>)")
    a("--resume", action="store_true", help="continue from <out>/last.pt")
    a("--baseline", default=None, help="results.json of the single-task baseline for delta-m (e.g. the lora run)")
    a("--num-figures", type=int, default=d.num_figures, help="validation images in predictions.png")
    a("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    options = {k: v for k, v in vars(args).items() if k != "resume"}
    options["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if options["max_grad_norm"] == 0:
        options["max_grad_norm"] = None
    defaults = FinetuneConfig().train.lr_scale
    options["lr_scale"] = defaults if args.lr_scale is None else {**defaults, **args.lr_scale}
    return FinetuneConfig().updated(**options)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(config_from_args(args), resume=args.resume)
    except UsageError as e:
        print(f"sam_mtl.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as e:  # the last checkpoint is intact: fix the cause, then --resume
        print(f"sam_mtl.py: error: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
