"""The decomposition x rank x seed sweep of mSAM adapters, with delta-m against LoRA-STL.

Two more axes are optional (issue 15, `task_scaling_grid`): task sets (T tasks) and the task-shared trunk's
depth k (`shared_blocks`); every pairing (LoRA-STL, frozen, the same method at k = 0) is then made within one
task set.

Every cell is one fine-tuning run (`tensoradapt.train.finetune.run`) in
`<out>/cells/<decomp>_r<ranks>[_<task set>][_k<k>]_s<seed>/`.
Re-running skips finished cells (results.json present) and resumes an interrupted one from its last.pt.
Outputs in `<out>`: table.csv / table.json (one row per cell: metrics, delta-m vs the LoRA-STL cell of the
same seed and vs the frozen encoder of the same seed, trainable parameters, times), summary.csv (mean / std
over seeds, 95 % t-intervals of the paired differences), delta_m_vs_params.png and
metric_vs_rank.png (`tensoradapt.train.plots`).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .._utils import atomic_write_json, atomic_write_text
from ..sam import DECOMPS
from .claims import claim, holder
from .finetune import FinetuneConfig, run
from .finished import (adopt_cells, cell_done, finished_results, machine_differences, seeds_on_disk,
                       settings_differences, sweep_folder)
from .resume import LAST
from .stats import t_interval
from .summary import PAIRED_COLUMNS, metric_columns, summarize, summary_markdown, write_csv

__all__ = [
    "Cell", "Grid", "default_grid", "quick_grid", "run_grid", "adopt_cells", "cell_done",
    "finished_results", "sweep_folder", "seeds_on_disk", "collect_rows", "write_outputs", "load_table", "summarize",
    "metric_columns",
    "BASELINE_DECOMP", "TABLE_CSV", "TABLE_JSON", "SUMMARY_CSV", "SUMMARY_MD", "summary_markdown", "DM_PLOT",
    "RANK_PLOT", "TASKS_PLOT", "DEFAULT_RUN", "SWEEP_RUN", "QUICK_RUN", "PAIRED_COLUMNS", "t_interval",
    "task_scaling_grid", "machine_differences", "settings_differences",
]

TABLE_CSV, TABLE_JSON, SUMMARY_CSV, SUMMARY_MD = "table.csv", "table.json", "summary.csv", "summary.md"
DM_PLOT, RANK_PLOT, TASKS_PLOT = "delta_m_vs_params.png", "metric_vs_rank.png", "delta_m_vs_tasks.png"
BASELINE_DECOMP = "lora"  # LoRA-STL: independent per-task LoRA
REFERENCES = ("frozen", "full")  # cells without ranks, drawn as horizontal lines


@dataclass(frozen=True)
class Cell:
    decomp: str
    ranks: str | None       # None for frozen / full
    level: int | None       # the nominal rank plotted on the x axis
    seed: int
    task_set: str = ""      # a key of Grid.task_sets ("": the run's own tasks)
    shared_blocks: int = 0  # k, the task-shared trunk's depth

    @property
    def name(self) -> str:
        r = self.ranks.replace(",", "-") if self.ranks else "none"
        ts = f"_{self.task_set}" if self.task_set else ""
        k = f"_k{self.shared_blocks}" if self.shared_blocks else ""
        return f"{self.decomp}_r{r}{ts}{k}_s{self.seed}"

    def paired(self, decomp: str, ranks: str | None = None, shared_blocks: int | None = None) -> tuple:
        """The key (`key`) of the cell this one is compared with: same seed and task set."""
        k = self.shared_blocks if shared_blocks is None else shared_blocks
        return (decomp, ranks, self.seed, self.task_set, k)

    @property
    def key(self) -> tuple:
        """(decomp, ranks, seed, task set, k): unique within a grid (two Tucker task ranks share a level)."""
        return self.paired(self.decomp, self.ranks)


def _ints_from(values: Sequence[Any], low: int) -> bool:
    """Whether every value is an int (not a bool) >= low."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)


def _rank_text(decomp: str, r: int, task_rank: int) -> str:
    return {"tucker": f"{task_rank},{r},{r}", "tt": f"{r},{r}"}.get(decomp, str(r))


@dataclass
class Grid:
    """Which cells to run, and the fine-tuning options shared by all of them (`run`: keyword arguments of
    `FinetuneConfig.updated`, e.g. {"epochs": 2, "val_size": 100})."""

    decomps: tuple[str, ...] = ("tucker", "cp", "tt", "lora", "shared-lora")
    # the smallest rank (8: tucker's is the paper's (4, 32, 32) scaled to the tiny width, 128 / 768) and the
    # largest (32: the paper's own); lora 16 matches tucker (4, 32, 32) in trainable parameters
    levels: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "tucker": (8, 32), "cp": (8, 32), "tt": (8, 32), "lora": (8, 16, 32), "shared-lora": (8, 32)})
    task_rank: int | tuple[int, ...] = 4    # Tucker's r_task (the paper's R3); several: a cell per task rank
    references: tuple[str, ...] = ("frozen", "full")
    seeds: tuple[int, ...] = (0, 1, 2)
    baseline_level: int = 8                 # the LoRA-STL cell delta-m is measured against
    run: dict[str, Any] = field(default_factory=dict)
    task_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> tasks; {}: the run's tasks
    shared_blocks: tuple[int, ...] = (0,)   # trunk depths k; the references run at k = 0 only

    def __post_init__(self) -> None:
        allowed = [d for d in DECOMPS if d not in REFERENCES]
        bad = [d for d in self.decomps if d not in allowed]
        if bad:
            raise ValueError(f"decomps {bad} not in {allowed}")
        bad = [d for d in self.references if d not in REFERENCES]
        if bad:
            raise ValueError(f"references must be {' / '.join(REFERENCES)}, got {bad}")
        if BASELINE_DECOMP not in self.decomps:
            raise ValueError(f"the grid needs {BASELINE_DECOMP!r} (the LoRA-STL baseline of delta-m)")
        if self.baseline_level not in self.levels[BASELINE_DECOMP]:
            raise ValueError(f"baseline_level {self.baseline_level} is not a {BASELINE_DECOMP} level "
                             f"{self.levels[BASELINE_DECOMP]}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        if isinstance(self.task_rank, (tuple, list)):  # one task rank is kept as the plain int it always was
            self.task_rank = self.task_rank[0] if len(self.task_rank) == 1 else tuple(self.task_rank)
        tr = self.task_ranks
        if not tr or len(set(tr)) < len(tr) or not _ints_from(tr, 1):
            raise ValueError(f"task_rank must be distinct ints >= 1, got {self.task_rank!r}")
        self.task_sets = {str(k): tuple(v) for k, v in self.task_sets.items()}
        if any(not k.isalnum() or not k.isascii() or not v for k, v in self.task_sets.items()):
            raise ValueError(f"task_sets must map letter-and-digit labels (they name cell folders) to non-empty "
                             f"task lists, got {self.task_sets}")
        self.shared_blocks = tuple(self.shared_blocks)
        k = self.shared_blocks
        if 0 not in k or len(set(k)) != len(k) or not _ints_from(k, 0):
            raise ValueError(f"shared_blocks must be distinct ints >= 0 including 0 (every trunk's reference), got {k}")
        clash = sorted({"tasks", "shared_blocks"} & set(self.run)) if self.scaling else []
        if clash:
            raise ValueError(f"run must not set {clash}: the grid's task_sets / shared_blocks axes set them per cell")

    def cells(self) -> list[Cell]:
        out = []
        for seed in self.seeds:
            for ts in self.task_sets or [""]:
                for k in self.shared_blocks:
                    # the baseline first, so delta-m is available as soon as possible
                    out.append(Cell(BASELINE_DECOMP, self.baseline_ranks, self.baseline_level, seed, ts, k))
                    for d in self.decomps:
                        for r in self.levels[d]:
                            for tr in self.task_ranks:  # only Tucker's text names it: the others dedupe below
                                c = Cell(d, _rank_text(d, r, tr), r, seed, ts, k)
                                if c not in out:
                                    out.append(c)
                out += [Cell(d, None, None, seed, ts) for d in self.references]
        return out

    @property
    def task_ranks(self) -> tuple[int, ...]:
        return tuple(self.task_rank) if isinstance(self.task_rank, (tuple, list)) else (self.task_rank,)

    @property
    def baseline_ranks(self) -> str:
        """The ranks text of the LoRA-STL cell every Δm is measured against."""
        return _rank_text(BASELINE_DECOMP, self.baseline_level, self.task_ranks[0])

    @property
    def scaling(self) -> bool:
        """True for a grid over task sets or trunk depths (its rows carry T and k)."""
        return bool(self.task_sets) or self.shared_blocks != (0,)

    def experiment_config(self, cell: Cell, out: Path) -> FinetuneConfig:
        extra: dict[str, Any] = {"tasks": self.task_sets[cell.task_set]} if cell.task_set else {}
        if self.scaling and cell.decomp not in REFERENCES:
            extra["shared_blocks"] = cell.shared_blocks
        run = {k: v for k, v in self.run.items() if not (k == "targets" and cell.decomp in REFERENCES)}
        return FinetuneConfig().updated(**run, **extra, decomp=cell.decomp, ranks=cell.ranks, seed=cell.seed,
                                        out=str(Path(out) / "cells" / cell.name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["levels"] = {k: list(v) for k, v in self.levels.items()}
        if isinstance(self.task_rank, (tuple, list)):
            d["task_rank"] = list(self.task_rank)
        d["task_sets"] = {k: list(v) for k, v in self.task_sets.items()}
        d["shared_blocks"] = list(self.shared_blocks)
        return d


# The default grid trains each cell on the benchmark's schedule: 15 epochs of the 600 training scenes (3x
# `sam_mtl.py`'s 5-epoch demo; at 5 epochs every curve is still rising and adapting the encoder is within seed
# noise), evaluated on all 200 validation scenes every 3 epochs and at the end. Every adapter at its default
# rank, LoRA-STL, frozen and full fine-tuning, 3 seeds: 21 cells, ~3 h on 2 cores; `all_ranks` adds each
# adapter's largest rank and LoRA-STL 16 (matched to Tucker (4, 32, 32)): 39 cells. The task-scaling grid trains
# on the same schedule (on the shipped model, at 5 epochs TA-LoRA scored -0.57 % Δm against the frozen encoder at
# T = 3, seed 0, against +8.57 % at 15); with the same settings, its T = 3, k = 0 cells are the default grid's.
# The quick grid takes a couple of minutes.
SWEEP_RUN = dict(progress=False, num_figures=2)
DEFAULT_RUN = dict(SWEEP_RUN, epochs=15, eval_every=3)
QUICK_RUN = dict(epochs=2, train_size=32, val_size=16, batch_size=4, progress=False, num_figures=2)


def default_grid(seeds: Sequence[int] = (0, 1, 2), all_ranks: bool = False, **run: Any) -> Grid:
    grid = Grid(seeds=tuple(seeds), run={**DEFAULT_RUN, **run})
    if all_ranks:
        return grid
    return dataclasses.replace(grid, levels={d: (min(r),) for d, r in grid.levels.items()})


def quick_grid(seeds: Sequence[int] = (0,), **run: Any) -> Grid:
    return Grid(decomps=("tucker", "lora", "cp"), levels={"tucker": (4,), "lora": (4,), "cp": (8,)},
                references=(), seeds=tuple(seeds), baseline_level=4, run={**QUICK_RUN, **run})


def task_scaling_grid(seeds: Sequence[int] = (0, 1, 2), task_counts: Sequence[int] = (3, 5, 8),
                      shared_blocks: Sequence[int] = (0, 2), decomps: Sequence[str] = ("tucker", "lora"),
                      levels: Sequence[int] | None = None, task_rank: int | Sequence[int] = 4, quick: bool = False,
                      **run: Any) -> Grid:
    """Issue 15's sweep: `decomps` (default TA-LoRA and LoRA-STL) at the small rank, and the frozen encoder,
    for the first T tasks of the task table (`tensoradapt.mtl.task_table`) and trunk depths k (default L/2 = 2
    of tiny_p8's 4 blocks). `levels`: the rank levels of each decomp in `decomps` (default: the small rank only;
    e.g. (8, 32) adds Tucker (4, 32, 32), the paper's ranks); LoRA-STL keeps its baseline level whatever the
    levels. `task_rank`: Tucker's r_task (default 4, the paper's R3; below T it makes tasks share core slices),
    or several, a Tucker cell per task rank."""
    from ..mtl import task_table

    names = list(task_table())
    bad = [t for t in task_counts if not 1 <= t <= len(names)]
    if bad:
        raise ValueError(f"task_counts must lie in 1..{len(names)}, got {bad}")
    level = 4 if quick else 8
    levels = tuple(levels) if levels is not None else (level,)
    if not levels or not _ints_from(levels, 1):
        raise ValueError(f"levels must be ranks >= 1, got {levels}")
    named = tuple(decomps)
    decomps = tuple(dict.fromkeys((*named, BASELINE_DECOMP)))
    by_decomp = {d: tuple(sorted(set(levels))) for d in named}
    by_decomp[BASELINE_DECOMP] = tuple(sorted({*by_decomp.get(BASELINE_DECOMP, ()), level}))  # every Δm's baseline
    return Grid(decomps=decomps, levels=by_decomp, task_rank=task_rank, references=("frozen",),
                seeds=tuple(seeds), baseline_level=level, task_sets={f"T{t}": tuple(names[:t]) for t in task_counts},
                shared_blocks=tuple(shared_blocks), run={**(QUICK_RUN if quick else DEFAULT_RUN), **run})


# -------------------------------------------------------------------------------------------- running
def run_grid(grid: Grid, out: str | Path, log: Callable[[str], None] = print,
             train_cell: Callable[..., Any] = run, shard: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished cell (resuming a half-trained one), then write the table and the plots.

    `train_cell(cfg, resume=...)` trains one cell (default: the fine-tuning recipe's `run`). A process claims a
    cell before running it (`claims.claim`), so processes sharing `out` never run a cell twice. `shard=(i, n)`:
    start with the cells at positions i, i + n, i + 2n, ... of `grid.cells()`, then take the unclaimed rest,
    so n processes split a sweep and finish together."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "grid.json", grid.to_dict())
    finished_results(grid, out)  # refuses a finished cell that ran other settings
    cells = grid.cells()
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
        own = cells[i::n]
        cells = own + [c for c in cells if c not in own]  # its own share first, then whatever is left
    todo = [c for c in cells if not cell_done(out, c)]
    log(f"[rank_ablation] {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run (or "
        f"taken by another process) -> {out}")
    t0, done_times = time.perf_counter(), []
    for cell in todo:
        cfg = grid.experiment_config(cell, out)
        with claim(cfg.out_dir) as mine:
            if not mine:
                log(f"[rank_ablation] {cell.name}: running in another process ({holder(cfg.out_dir)}), skipped")
                continue
            if cell_done(out, cell):  # finished by another process meanwhile
                continue
            partial = (cfg.out_dir / LAST).exists()
            t = time.perf_counter()
            log(f"[rank_ablation] ({len(done_times) + 1}) {cell.name}" + (" (resuming)" if partial else ""))
            train_cell(cfg, resume=partial)
        done_times.append(time.perf_counter() - t)
        left = sum(not cell_done(out, c) for c in todo)
        log(f"[rank_ablation]     {done_times[-1]:.0f}s; {left} cells unfinished, about "
            f"{statistics.mean(done_times) * left / 60:.1f} min of cell time")
        write_outputs(grid, out)  # keep the table current while the sweep runs
    rows = write_outputs(grid, out)
    unfinished = [c.name for c in todo if not cell_done(out, c)]
    log(f"[rank_ablation] finished in {time.perf_counter() - t0:.0f}s; table: {out / TABLE_CSV}" + (
        f"; still running elsewhere, rerun --table-only when they finish: {', '.join(unfinished)}" if unfinished else ""))
    return rows


# ---------------------------------------------------------------------------------------------- table
def collect_rows(grid: Grid, out: Path, also: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """One row per finished cell of the grid (for its seeds and any other seed found in `out`, or in the
    read-only folders `also`: `finished_results`), with delta-m against the same seed's LoRA-STL cell;
    `UsageError` if one of them ran other settings."""
    from ..mtl import delta_m, get_tasks

    results = finished_results(grid, out, also)
    if not results:
        return []
    by_key = {c.key: r for c, r in results.items()}
    rows = []
    for cell, res in results.items():
        tasks = get_tasks(tuple(res["config"]["tasks"]))
        base = by_key.get(cell.paired(BASELINE_DECOMP, grid.baseline_ranks))
        frozen = by_key.get(cell.paired("frozen", shared_blocks=0))
        row: dict[str, Any] = {
            "decomp": cell.decomp, "ranks": cell.ranks or "", "level": cell.level, "seed": cell.seed,
            "trainable_params": res["params"]["trainable"], "delta_params": res["params"]["delta"],
            "cpu": res.get("cpu", ""),  # pairs across two CPUs are flagged (`pairs`): floats differ between them
        }
        if grid.scaling:
            row.update(task_set=cell.task_set, T=len(tasks), shared_blocks=cell.shared_blocks)
        for t in tasks:
            for m, v in sorted(res["metrics"].get(t, {}).items()):
                row[f"{t}/{m}"] = v
        row["delta_m"], row["delta_m_note"] = None, ""
        if base is None:
            row["delta_m_note"] = "no LoRA-STL baseline cell for this seed yet"
        else:
            try:
                row["delta_m"] = float(delta_m(res["metrics"], base["metrics"], tasks))
            except ValueError as e:  # e.g. a baseline metric at 0: the relative change is undefined
                row["delta_m_note"] = str(e)
        refs = [("delta_m_vs_frozen", frozen)]
        if grid.scaling:
            refs.append(("delta_m_vs_k0", by_key.get(cell.paired(cell.decomp, cell.ranks, 0))))
        for column, ref in refs:
            row[column] = None
            if ref is not None:
                try:
                    row[column] = float(delta_m(res["metrics"], ref["metrics"], tasks))
                except ValueError:
                    pass
        row.update(steps=res["steps"], train_time_s=round(res["train_time_s"], 2),
                   wall_time_s=round(res["wall_time_s"], 2), cell=cell.name)
        rows.append(row)
    return rows


def write_outputs(grid: Grid, out: Path, also: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """table.json / table.csv / summary.csv / summary.md and the two plots from the finished cells (in `out`,
    then in the read-only folders `also`), written to `out`; returns the rows."""
    rows = collect_rows(grid, out, also)
    if not rows:
        return rows
    from .plots import plot_delta_m_vs_params, plot_delta_m_vs_tasks, plot_metric_vs_rank

    out = Path(out)
    atomic_write_json(out / TABLE_JSON, {"grid": grid.to_dict(), "rows": rows})
    write_csv(out / TABLE_CSV, rows)
    summary = summarize(rows)
    write_csv(out / SUMMARY_CSV, summary)
    atomic_write_text(out / SUMMARY_MD, summary_markdown(summary))
    if grid.scaling:
        plot_delta_m_vs_tasks(summary, out / TASKS_PLOT)
    else:
        plot_delta_m_vs_params(rows, out / DM_PLOT)
        plot_metric_vs_rank(rows, out / RANK_PLOT)
    return rows


def load_table(out: str | Path) -> list[dict[str, Any]]:
    """Rows of table.json (numbers stay numbers)."""
    return json.loads((Path(out) / TABLE_JSON).read_text())["rows"]
