#!/usr/bin/env python
"""Decomposition x rank x seed ablation of mSAM adapters, with delta-m against LoRA-STL and the frozen encoder.

    python experiments/rank_ablation.py              # default grid: every adapter at its default rank, LoRA-STL,
                                                     # frozen, full; 15 epochs, 3 seeds: 21 cells, ~3 h on 2 cores
    python experiments/rank_ablation.py --shard 0/2 & python experiments/rank_ablation.py --shard 1/2
    python experiments/rank_ablation.py --all-ranks  # + each adapter's largest rank (39 cells)
    python experiments/rank_ablation.py --all-ranks --epochs 5 --eval-every 1 --out runs/rank_ablation_5ep
    python experiments/rank_ablation.py --targets qkv,proj,mlp --out runs/targets  # deltas in every linear
    python experiments/rank_ablation.py --quick      # CI-sized grid (a couple of minutes once cached)
    python experiments/rank_ablation.py --dry-run    # list the cells
    python experiments/rank_ablation.py --table-only # rebuild table + plots from the finished cells
    python experiments/rank_ablation.py --compare tucker shared-lora  # paired delta-m of A vs B, per seed + 95 % CI

Every cell is one `experiments/sam_mtl.py` run in `<out>/cells/<decomp>_r<ranks>_s<seed>/`. Re-running the
command skips finished cells (results.json present) and resumes an interrupted one from its last.pt.
Outputs in <out>: table.csv / table.json (one row per cell: metrics, delta-m vs the LoRA-STL cell of the
same seed, trainable parameters, times), summary.csv (mean / std over seeds), delta_m_vs_params.png and
metric_vs_rank.png. The sweep is tensoradapt.train.ablation.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from tensoradapt.train import ablation, pairs
from tensoradapt.train.cli import OneLineParser, int_tuple
from tensoradapt.train.finetune import UsageError

# flags passed to every cell as they are (the FinetuneConfig option of the same name)
RUN_FLAGS = ("epochs", "eval_every", "train_size", "val_size", "batch_size", "model", "checkpoint", "data",
             "data_root", "device", "threads", "amp", "num_workers", "targets")


def shard_spec(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="rank_ablation.py", description=__doc__.split("\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    a = p.add_argument
    a("--quick", action="store_true", help="the CI-sized grid")
    a("--out", default=None, help="output folder (default runs/rank_ablation or runs/rank_ablation_quick)")
    a("--seeds", type=int_tuple, default=None, help="e.g. 0,1,2")
    a("--decomps", default=None, help="subset of tucker,cp,tt,lora,shared-lora (lora is always kept)")
    a("--all-ranks", action="store_true",
      help="each adapter at its largest rank too, and LoRA-STL at the rank matching Tucker (4, 32, 32) (default: "
           "every adapter at its default rank only)")
    a("--targets", default=None, help="the linears of each encoder block the adapters' deltas go into (sam_mtl.py "
      "--targets; default qkv, the paper's); the frozen / full cells ignore it")
    a("--epochs", type=int, default=None)
    a("--eval-every", type=int, default=None, help="epochs between a cell's evaluations (the last is always one)")
    a("--train-size", type=int, default=None)
    a("--val-size", type=int, default=None)
    a("--batch-size", type=int, default=None)
    a("--model", default=None)
    a("--checkpoint", default=None)
    a("--data", default=None)
    a("--data-root", default=None)
    a("--device", default=None)
    a("--threads", type=int, default=None, help="torch intra-op threads per cell (default: torch's, divided by N "
      "under --shard I/N)")
    a("--amp", default=None, help="auto (bf16 on CUDA), bf16 or off")
    a("--num-workers", type=int, default=None, help="data-loading processes per cell")
    a("--shard", type=shard_spec, default=None,
      help="I/N: one of N processes sharing the sweep (e.g. --shard 0/2 and --shard 1/2 on 2 cores): it starts "
           "with every N-th cell from the I-th (0-based), then takes the cells no process has claimed, and runs "
           "on torch's threads / N; then --table-only builds the table")
    a("--reuse", default=None, metavar="DIR",
      help="first copy in the finished cells of the sweep folder DIR that ran exactly a cell's settings on a "
           "machine like this one (e.g. task_scaling.py --reuse runs/rank_ablation: its T = 3, k = 0 cells are the "
           "default sweep's); with --table-only / --compare, read DIR's cells (any machine) for those --out lacks")
    a("--dry-run", action="store_true", help="print the cells and exit")
    a("--table-only", action="store_true", help="only rebuild the table and the plots")
    a("--compare", nargs="+", metavar="CONFIG", default=None,
      help="print the paired delta-m of each pair A B (A vs B, per seed, mean and 95 %% interval) from the "
           "finished cells, e.g. --compare tucker shared-lora tucker frozen; a config is DECOMP or "
           "DECOMP:RANKS (tucker:4,8,8)")
    return p


def grid_options(args: argparse.Namespace) -> tuple[dict, tuple[str, ...] | None]:
    """(the keyword options every grid factory takes: the run flags given and `seeds`; the `--decomps` list)."""
    kwargs = {k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k) is not None}
    if args.shard and args.threads is None:  # N processes share this machine's cores
        kwargs["threads"] = max(1, torch.get_num_threads() // args.shard[1])
    if args.seeds:
        kwargs["seeds"] = args.seeds
    decomps = tuple(d.strip() for d in args.decomps.split(",") if d.strip()) if args.decomps else None
    return kwargs, decomps


def grid_from_args(args: argparse.Namespace) -> ablation.Grid:
    if args.quick and args.all_ranks:
        raise ValueError("--all-ranks and --quick: the quick grid has one rank per adapter")
    kwargs, decomps = grid_options(args)
    grid = ablation.quick_grid(**kwargs) if args.quick else ablation.default_grid(all_ranks=args.all_ranks, **kwargs)
    if decomps:
        keep = decomps + ((ablation.BASELINE_DECOMP,) if ablation.BASELINE_DECOMP not in decomps else ())
        grid = dataclasses.replace(grid, decomps=keep)
    return grid


def compare(grid: ablation.Grid, out: Path, configs: Sequence[str], also: Sequence[str] = ()) -> int:
    """Print `pairs.comparison_markdown` for the pairs (A B A B ...) over the finished cells in `out` (and in the
    read-only folders `also`)."""
    if len(configs) % 2:
        print(f"rank_ablation.py: error: --compare takes pairs A B, got {len(configs)} configs", file=sys.stderr)
        return 2
    rows = ablation.collect_rows(grid, out, also)
    try:
        chosen = [pairs.parse_config(c, rows) for c in configs]
        print(pairs.comparison_markdown(rows, list(zip(chosen[::2], chosen[1::2]))), end="")
    except ValueError as e:
        print(f"rank_ablation.py: error: --compare: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None,
         make_grid: Callable[[argparse.Namespace], ablation.Grid] = grid_from_args,
         default_out: str = "runs/rank_ablation") -> int:
    """Run (or list, or tabulate) a sweep; `parser` / `make_grid` / `default_out`: another sweep's (task_scaling.py)."""
    args = (parser or build_parser()).parse_args(argv)
    out = Path(args.out or (default_out + "_quick" if args.quick else default_out))
    try:
        grid = make_grid(args)
        for cell in grid.cells():  # validate every cell's arguments before running any
            grid.experiment_config(cell, out)
    except (ValueError, KeyError) as e:
        print(f"rank_ablation.py: error: {e}", file=sys.stderr)
        return 2
    reused: list[str] = []
    read_also = [args.reuse] if args.reuse and (args.table_only or args.compare) else []
    if args.reuse:
        try:
            if read_also:  # the tables read its cells in place
                ablation.sweep_folder(args.reuse)
            else:  # a run copies in the cells it can pair with its own
                reused = ablation.adopt_cells(grid, out, args.reuse, copy=not args.dry_run)
        except ValueError as e:
            print(f"rank_ablation.py: error: --reuse: {e}", file=sys.stderr)
            return 2
    if args.dry_run:
        for c in grid.cells():
            state = "done" if ablation.cell_done(out, c) else f"copy from {args.reuse}" if c.name in reused else "todo"
            print(f"{c.name:32s} {state}")
        return 0
    try:
        if args.compare:
            return compare(grid, out, args.compare, read_also)
        if args.table_only:
            rows = ablation.write_outputs(grid, out, read_also)
            print(f"[rank_ablation] {len(rows)} finished cells -> {out / ablation.TABLE_CSV}")
            return 0
        ablation.run_grid(grid, out, shard=args.shard)
    except UsageError as e:  # a finished cell that ran other settings
        print(f"rank_ablation.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
