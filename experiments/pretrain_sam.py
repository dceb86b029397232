"""Pretrain the tiny SAM foundation checkpoint on SAM's promptable-mask objective (synthetic scenes).

    python experiments/pretrain_sam.py                    # 15 min budget, writes the cached checkpoint
    python experiments/pretrain_sam.py --budget-s 180     # what the experiment CLI builds on first use

Writes the official-format state dict (loads like sam_vit_b_01ec64.pth) atomically to --out (default:
the cache path that `ensure_tiny_sam_checkpoint()` and experiments/sam_mtl.py look up, so a longer
run here upgrades what they use) and a JSON report beside it; prints the held-out prompted-mask IoU
of the pretrained model against a random-init tiny SAM. See tensoradapt/sam/pretrained.py for the recipe.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensoradapt.sam.pretrained import PretrainConfig, default_tiny_sam_path, format_report, pretrain_tiny_sam


def main(argv=None) -> dict:
    d = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=900.0,
                    help="total wall clock in seconds: scenes + training + evaluation (default 900 = 15 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"checkpoint path (default: the cached {default_tiny_sam_path().name})")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    ap.add_argument("--masks-per-image", type=int, default=d.masks_per_image)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--n-scenes", type=int, default=None, help="training scenes (default: 2 per second of budget)")
    ap.add_argument("--n-heldout", type=int, default=d.n_heldout)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--min-steps", type=int, default=d.min_steps,
                    help="train at least this many steps even past the budget (busy machines)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else default_tiny_sam_path()
    cfg = PretrainConfig(budget_s=args.budget_s, seed=args.seed, batch_size=args.batch_size,
                         masks_per_image=args.masks_per_image, lr=args.lr, n_scenes=args.n_scenes,
                         n_heldout=args.n_heldout, max_steps=args.max_steps, min_steps=args.min_steps)
    report = pretrain_tiny_sam(out, cfg, progress=not args.no_progress)
    print(format_report(report))
    print(f"checkpoint: {out}\nreport:     {Path(out).with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
