#!/usr/bin/env python
"""Where a finished run's depth error comes from (`tensoradapt.mtl.depth_error`): the absolute error, what a
per-image scale or shift fit leaves of it, the per-image median's error, the scale bias, and the error of the
truth itself at 1/2 and 1/8 of the resolution (mSAM's decoder output and token grids with 8-pixel patches), on
the run's validation split. It evaluates in float32 on the CPU, so a run trained under bf16 autocast on a GPU
reports an abs_err a little off its results.json.

    python experiments/depth_error.py runs/rank_ablation/cells/{frozen_rnone,tucker_r4-8-8,full_rnone}_s0
    python experiments/depth_error.py RUN_DIR --checkpoint last --threads 2
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from tensoradapt.mtl.depth_error import DepthErrorTask
from tensoradapt.train.distributed import DistInfo
from tensoradapt.train.evaluation import evaluate_tasks
from tensoradapt.train.finetune import load_run, read_run_config

COLUMNS = ("abs_err", "scale_fit_err", "shift_fit_err", "median_err", "scale_ratio", "pool2_err", "pool8_err")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="sam_mtl.py output folders")
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| run | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for run in args.runs:
        try:
            tasks = read_run_config(run).tasks  # checked before the model is built
            if "depth" not in tasks:
                raise ValueError(f"{run} has no depth task ({', '.join(tasks)})")
            _, model, val = load_run(run, args.checkpoint)
        except (OSError, ValueError) as e:
            print(f"depth_error.py: error: {e}", file=sys.stderr)
            return 2
        m = evaluate_tasks(model, {"depth": DepthErrorTask("depth", 1)}, val, batch_size=args.batch_size,
                           dist_info=DistInfo())
        print(f"| {run} | " + " | ".join(f"{m['depth/' + c]:.4f}" for c in COLUMNS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
