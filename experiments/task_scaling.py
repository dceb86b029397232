#!/usr/bin/env python
"""Δm as tasks are added, with and without a task-shared trunk (issue 15): TA-LoRA and LoRA-STL at the small
rank and the frozen encoder, for the first T tasks of the task table, trunk depths k, 3 seeds.

    python experiments/task_scaling.py                     # T in 3,5,8, k in 0,2, 3 seeds (45 cells, 15 epochs:
                                                           # about 20 core-hours on this CPU: a GPU job)
    python experiments/task_scaling.py --quick             # CI-sized
    python experiments/task_scaling.py --shard 0/2 & python experiments/task_scaling.py --shard 1/2
    python experiments/task_scaling.py --table-only        # summary.md + delta_m_vs_tasks.png
    python experiments/task_scaling.py --reuse runs/rank_ablation   # copy the T = 3, k = 0 cells the default
                                                           # sweep already ran (same settings) instead of rerunning

Every Δm is paired within one seed and one task set: against LoRA-STL, against the frozen encoder, and
against the same method without a trunk (`delta_m_vs_k0`, what sharing costs or buys). Each row's Δm covers
its own T tasks; the table shows the three base tasks' metrics. Cells, resuming and sharding as in
rank_ablation.py (`tensoradapt.train.ablation`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rank_ablation  # noqa: E402
from tensoradapt.train import ablation  # noqa: E402
from tensoradapt.train.cli import int_tuple  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = rank_ablation.build_parser()
    parser.prog = "task_scaling.py"
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("--task-counts", type=int_tuple, default=(3, 5, 8), help="the numbers of tasks T")
    parser.add_argument("--shared-blocks", type=int_tuple, default=(0, 2), help="trunk depths k (must include 0)")
    parser.add_argument("--levels", type=int_tuple, default=None,
                        help="rank levels of the --decomps adapters (default 8, the small rank; e.g. 8,32 adds "
                             "Tucker (4, 32, 32), the paper's ranks; LoRA-STL 8 stays the baseline)")
    parser.add_argument("--task-rank", type=int_tuple, default=(4,),
                        help="Tucker's task rank r_task (default 4, the paper's; 5 at T = 5 gives every task its "
                             "own core slice); several, e.g. 4,5: a Tucker cell at each, to --compare them")

    def grid(args) -> ablation.Grid:
        if args.all_ranks:
            raise ValueError("--all-ranks is rank_ablation.py's: this sweep runs each method at its small rank")
        kwargs, decomps = rank_ablation.grid_options(args)
        if decomps:
            kwargs["decomps"] = decomps
        return ablation.task_scaling_grid(task_counts=args.task_counts, shared_blocks=args.shared_blocks,
                                          levels=args.levels, task_rank=args.task_rank, quick=args.quick,
                                          **kwargs)

    return rank_ablation.main(argv, parser=parser, make_grid=grid, default_out="runs/task_scaling")


if __name__ == "__main__":
    sys.exit(main())
