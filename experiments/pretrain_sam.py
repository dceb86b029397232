"""Pretrain the tiny SAM foundation checkpoint on SAM's promptable-mask objective (synthetic scenes).

    python experiments/pretrain_sam.py                  # the default config: what the experiments build on first use
    python experiments/pretrain_sam.py --steps 6000     # a longer run, to its own file in the cache
    python experiments/pretrain_sam.py --model tiny_p8 --steps 16000 --n-scenes 1000 --masks objects --n-heldout 200 --ship
                                                        # the shipped foundation model (an hour on one core):
                                                        # object masks only, the room's shell is never a target
    python experiments/pretrain_sam.py --evaluate tensoradapt/assets/tiny_p8_sam.safetensors
                                                        # no training: a checkpoint's held-out IoUs, on the
                                                        # scenes of the config recorded beside it

A fixed number of steps with a seed: the same arguments give the same checkpoint bytes on every machine of
a kind. Writes the official-format state dict (loads like sam_vit_b_01ec64.pth) atomically to --out
(default: the config's cache path; the default config's is the one `ensure_tiny_sam_checkpoint()` and
experiments/sam_mtl.py use, any other config gets its own file: pass it to sam_mtl.py with --checkpoint)
and a JSON report beside it; prints the held-out prompted-mask IoU of the pretrained model against a
random-init tiny SAM and the box itself. The recipe: tensoradapt/train/pretrain/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensoradapt.train.pretrain import (
    DOMAIN_GAPS, MASK_SETS, PretrainConfig, default_tiny_sam_path, evaluate_checkpoint, export_shipped, format_report,
    pretrain_tiny_sam, shipped_paths,
)
from tensoradapt.train.pretrain.artifact import read_report


#: the config fields that pick the held-out scenes and the architecture (`--evaluate`)
EVAL_FIELDS = ("model", "masks", "domain_gap", "seed", "n_heldout")


def main(argv: list[str] | None = None) -> dict:
    d = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the fields that pick the architecture and the held-out scenes (EVAL_FIELDS) default to None: "not given",
    # so --evaluate can tell them from the checkpoint's recorded config
    ap.add_argument("--model", default=None, help=f"SAM size (default {d.model})")
    ap.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    ap.add_argument("--seed", type=int, default=None, help=f"(default {d.seed})")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    ap.add_argument("--masks-per-image", type=int, default=d.masks_per_image)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--n-scenes", type=int, default=d.n_scenes, help="training scenes")
    ap.add_argument("--domain-gap", default=None, choices=DOMAIN_GAPS,
                    help="palette: every pretraining scene in a random colour palette (default none)")
    ap.add_argument("--masks", default=None, choices=MASK_SETS,
                    help="objects: no wall / floor / ceiling masks, SAM's object-centric targets (default all)")
    ap.add_argument("--device", default="cpu", help="where the model trains (default cpu); the report records it")
    ap.add_argument("--n-heldout", type=int, default=None,
                    help=f"held-out scenes for the IoU evaluation (default {d.n_heldout})")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"checkpoint path (default: the config's cache path, {default_tiny_sam_path().name} "
                         "for the default config)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                    help="no training: print the held-out IoUs of an existing checkpoint (.pth or .safetensors) on "
                         "the held-out scenes of the config recorded beside it (its report or provenance JSON); "
                         "--model, --masks, --domain-gap, --seed, --n-heldout given here replace the recorded ones")
    ap.add_argument("--ship", action="store_true",
                    help="then write the fp16 copy and its provenance into tensoradapt/assets/ (the shipped checkpoint)")
    args = ap.parse_args(argv)
    given = {k: getattr(args, k) for k in EVAL_FIELDS if getattr(args, k) is not None}
    try:
        cfg = d.replace(steps=args.steps, batch_size=args.batch_size, masks_per_image=args.masks_per_image, lr=args.lr,
                        warmup_steps=args.warmup_steps, n_scenes=args.n_scenes, **given)
    except ValueError as e:
        ap.error(str(e))
    if args.evaluate is not None:
        return _evaluate(ap, args, cfg, given)
    out = args.out if args.out is not None else default_tiny_sam_path(cfg)
    report = pretrain_tiny_sam(out, cfg, progress=not args.no_progress, device=args.device)
    print(format_report(report))
    print(f"checkpoint: {out}\nreport:     {Path(out).with_suffix('.json')}\nsha256:     {report['sha256']}")
    if args.ship:
        record = export_shipped(out, command="python experiments/pretrain_sam.py " + " ".join(argv or sys.argv[1:]))
        print(f"shipped:    {shipped_paths(cfg.model)[0]} (fp16, sha256 {record['sha256']})")
    return report


def _evaluate(ap: argparse.ArgumentParser, args: argparse.Namespace, flags: PretrainConfig,
              given: dict[str, object]) -> dict:
    """--evaluate: the checkpoint's recorded config (else `flags`), with the EVAL_FIELDS `given` on the command
    line on top."""
    path = Path(args.evaluate)
    if args.ship or args.out is not None:
        ap.error("--evaluate trains nothing: it cannot be combined with --ship or --out")
    if not path.is_file():
        ap.error(f"--evaluate: no checkpoint at {path}")
    record, provenance = read_report(path), path.with_suffix(".provenance.json")  # a run's report, a shipped file's
    if record is None and provenance.is_file():
        record = json.loads(provenance.read_text())
    cfg = PretrainConfig.from_dict(record["pretrain_config"]) if record and "pretrain_config" in record else flags
    cfg = cfg.replace(**given)
    try:
        iou = evaluate_checkpoint(path, cfg)
    except RuntimeError as e:
        ap.error(f"--evaluate: {path} does not load into a {cfg.model!r} SAM (--model): {str(e).splitlines()[0]}")
    source = "the config recorded beside it" if record else "the command line's config (no record beside it)"
    print(f"{path}: held-out prompted-mask IoU on {iou['n_masks']} masks of {iou['n_scenes']} scenes, "
          f"{source}: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in EVAL_FIELDS))
    print(f"  box {iou['box_iou']:.4f}  point {iou['point_iou']:.4f}  point(best of 3) "
          f"{iou['point_iou_best_of_3']:.4f}  box itself {iou['box_fill_iou']:.4f}")
    print(f"  box prompt - box itself: {iou['box_gain']:+.4f} +- {iou['box_gain_ci95']:.4f} (95 %, paired, over scenes)")
    return iou


if __name__ == "__main__":
    main(sys.argv[1:])
