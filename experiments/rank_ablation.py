#!/usr/bin/env python
"""Decomposition x rank x seed ablation of mSAM adapters, with delta-m against LoRA-STL.

    python experiments/rank_ablation.py              # default grid (about an hour on 2 CPU cores)
    python experiments/rank_ablation.py --quick      # CI-sized grid (a couple of minutes once cached)
    python experiments/rank_ablation.py --dry-run    # list the cells
    python experiments/rank_ablation.py --table-only # rebuild table + plots from the finished cells

Every cell is one `experiments/sam_mtl.py` run in `<out>/cells/<decomp>_r<ranks>_s<seed>/`. Re-running the
command skips finished cells (results.json present) and resumes an interrupted one from its last.pt.
Outputs in <out>: table.csv / table.json (one row per cell: metrics, delta-m vs the LoRA-STL cell of the
same seed, trainable parameters, times), summary.csv (mean / std over seeds), delta_m_vs_params.png and
metric_vs_rank.png.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import sam_mtl  # noqa: E402

TABLE_CSV, TABLE_JSON, SUMMARY_CSV = "table.csv", "table.json", "summary.csv"
DM_PLOT, RANK_PLOT = "delta_m_vs_params.png", "metric_vs_rank.png"
BASELINE_DECOMP = "lora"  # LoRA-STL: independent per-task LoRA


@dataclass(frozen=True)
class Cell:
    decomp: str
    ranks: str | None       # None for frozen / full
    level: int | None       # the nominal rank plotted on the x axis
    seed: int

    @property
    def name(self) -> str:
        r = self.ranks.replace(",", "-") if self.ranks else "none"
        return f"{self.decomp}_r{r}_s{self.seed}"


def _rank_text(decomp: str, r: int, task_rank: int) -> str:
    return {"tucker": f"{task_rank},{r},{r}", "tt": f"{r},{r}"}.get(decomp, str(r))


@dataclass
class Grid:
    """Which cells to run, and the sam_mtl settings shared by all of them."""

    decomps: tuple[str, ...] = ("tucker", "cp", "tt", "lora", "shared-lora")
    levels: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "tucker": (4, 8, 16, 32), "cp": (8, 16, 32, 64), "tt": (4, 8, 16, 32),
        "lora": (4, 8, 16, 32), "shared-lora": (4, 8, 16, 32)})
    task_rank: int = 4                      # Tucker's r_task (the paper's R3)
    references: tuple[str, ...] = ("frozen",)  # extra cells without ranks, drawn as horizontal lines
    seeds: tuple[int, ...] = (0, 1)
    baseline_level: int = 8                 # the LoRA-STL cell delta-m is measured against
    run: dict[str, Any] = field(default_factory=dict)  # ExperimentConfig fields shared by every cell

    def __post_init__(self) -> None:
        allowed = set(sam_mtl.DECOMPS) - {"full", "frozen"}
        bad = [d for d in self.decomps if d not in allowed]
        if bad:
            raise ValueError(f"decomps {bad} not in {sorted(allowed)}")
        bad = [d for d in self.references if d not in ("frozen", "full")]
        if bad:
            raise ValueError(f"references must be frozen / full, got {bad}")
        if BASELINE_DECOMP not in self.decomps:
            raise ValueError(f"the grid needs {BASELINE_DECOMP!r} (the LoRA-STL baseline of delta-m)")
        if self.baseline_level not in self.levels[BASELINE_DECOMP]:
            raise ValueError(f"baseline_level {self.baseline_level} is not a {BASELINE_DECOMP} level "
                             f"{self.levels[BASELINE_DECOMP]}")
        if not self.seeds:
            raise ValueError("seeds is empty")

    def cells(self) -> list[Cell]:
        out = []
        for seed in self.seeds:
            # the baseline first, so delta-m is available as soon as possible
            out.append(Cell(BASELINE_DECOMP, _rank_text(BASELINE_DECOMP, self.baseline_level, self.task_rank),
                            self.baseline_level, seed))
            for d in self.decomps:
                for r in self.levels[d]:
                    c = Cell(d, _rank_text(d, r, self.task_rank), r, seed)
                    if c not in out:
                        out.append(c)
            out += [Cell(d, None, None, seed) for d in self.references]
        return out

    def experiment_config(self, cell: Cell, out: Path) -> sam_mtl.ExperimentConfig:
        return sam_mtl.ExperimentConfig(decomp=cell.decomp, ranks=cell.ranks, seed=cell.seed,
                                        out=str(out / "cells" / cell.name), **self.run)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["levels"] = {k: list(v) for k, v in self.levels.items()}
        return d


# Sized so that the default grid takes about an hour on 2 CPU cores (42 cells, ~80 s each once the data
# and the pretrained tiny SAM are cached), and the quick grid a couple of minutes.
DEFAULT_RUN = dict(epochs=2, train_size=None, val_size=100, batch_size=4, progress=False, num_figures=2)
QUICK_RUN = dict(epochs=2, train_size=32, val_size=16, batch_size=4, progress=False, num_figures=2)


def default_grid(seeds: Sequence[int] = (0, 1), **run) -> Grid:
    return Grid(seeds=tuple(seeds), run={**DEFAULT_RUN, **run})


def quick_grid(seeds: Sequence[int] = (0,), **run) -> Grid:
    return Grid(decomps=("tucker", "lora", "cp"), levels={"tucker": (4,), "lora": (4,), "cp": (8,)},
                references=(), seeds=tuple(seeds), baseline_level=4, run={**QUICK_RUN, **run})


# -------------------------------------------------------------------------------------------- running
def cell_done(out: Path, cell: Cell) -> bool:
    return (out / "cells" / cell.name / sam_mtl.RESULTS).is_file()


def stale_settings(grid: Grid, out: Path, cell: Cell) -> list[str]:
    """Settings a finished cell was run with that differ from what the grid asks for now."""
    res = json.loads((out / "cells" / cell.name / sam_mtl.RESULTS).read_text())
    want = grid.experiment_config(cell, out).to_dict()
    have = res.get("config", {})
    return [f"{k} {have.get(k)!r} -> {v!r}" for k, v in want.items()
            if k not in sam_mtl.RESUME_TOLERANT and have.get(k) != v]


def seeds_on_disk(out: Path) -> set[int]:
    """Seeds of the cells already in `out` (e.g. from sweeps run per seed in parallel)."""
    found = set()
    for d in (out / "cells").glob("*_s*"):
        tail = d.name.rsplit("_s", 1)[-1]
        if tail.isdigit():
            found.add(int(tail))
    return found


def run_grid(grid: Grid, out: str | Path, log=print) -> list[dict[str, Any]]:
    """Run every unfinished cell (resuming a half-trained one), then write the table and the plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(grid.to_dict(), indent=2) + "\n")
    cells = grid.cells()
    for c in cells:
        stale = cell_done(out, c) and stale_settings(grid, out, c)
        if stale:
            raise sam_mtl.UsageError(
                f"cell {c.name} in {out} was run with other settings ({', '.join(stale)}): "
                "use another --out, or delete that cell to rerun it")
    todo = [c for c in cells if not cell_done(out, c)]
    log(f"[rank_ablation] {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run -> {out}")
    t0, done_times = time.perf_counter(), []
    for i, cell in enumerate(todo):
        cfg = grid.experiment_config(cell, out)
        partial = (Path(cfg.out) / "last.pt").exists()
        t = time.perf_counter()
        log(f"[rank_ablation] ({i + 1}/{len(todo)}) {cell.name}" + (" (resuming)" if partial else ""))
        sam_mtl.run(cfg, resume=partial)
        done_times.append(time.perf_counter() - t)
        eta = statistics.mean(done_times) * (len(todo) - i - 1)
        log(f"[rank_ablation]     {done_times[-1]:.0f}s; about {eta / 60:.1f} min left")
        write_outputs(grid, out)  # keep the table current while the sweep runs
    rows = write_outputs(grid, out)
    log(f"[rank_ablation] finished in {time.perf_counter() - t0:.0f}s; table: {out / TABLE_CSV}")
    return rows


# ---------------------------------------------------------------------------------------------- table
def collect_rows(grid: Grid, out: Path) -> list[dict[str, Any]]:
    """One row per finished cell of the grid (for its seeds and any other seed found in `out`), with
    delta-m against the same seed's LoRA-STL cell."""
    from tensoradapt.mtl import delta_m, get_tasks

    results: dict[Cell, dict] = {}
    grid = dataclasses.replace(grid, seeds=tuple(sorted(set(grid.seeds) | seeds_on_disk(out))))
    for cell in grid.cells():
        p = out / "cells" / cell.name / sam_mtl.RESULTS
        if p.is_file():
            results[cell] = json.loads(p.read_text())
    if not results:
        return []
    tasks = get_tasks(next(iter(results.values()))["config"]["tasks"])
    rows = []
    for cell, res in results.items():
        base = next((r for c, r in results.items() if c.seed == cell.seed and c.decomp == BASELINE_DECOMP
                     and c.level == grid.baseline_level), None)
        row: dict[str, Any] = {
            "decomp": cell.decomp, "ranks": cell.ranks or "", "level": cell.level, "seed": cell.seed,
            "trainable_params": res["params"]["trainable"], "delta_params": res["params"]["delta"],
        }
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
        row.update(steps=res["steps"], train_time_s=round(res["train_time_s"], 2),
                   wall_time_s=round(res["wall_time_s"], 2), cell=cell.name)
        rows.append(row)
    return rows


def write_outputs(grid: Grid, out: Path) -> list[dict[str, Any]]:
    rows = collect_rows(grid, out)
    if not rows:
        return rows
    from tensoradapt._utils import atomic_write_text

    keys = list(dict.fromkeys(k for r in rows for k in r))
    atomic_write_text(out / TABLE_JSON, json.dumps({"grid": grid.to_dict(), "rows": rows}, indent=2) + "\n")
    _write_csv(out / TABLE_CSV, rows, keys)
    summary = summarize(rows)
    _write_csv(out / SUMMARY_CSV, summary, list(dict.fromkeys(k for r in summary for k in r)))
    plot_delta_m_vs_params(rows, out / DM_PLOT)
    plot_metric_vs_rank(rows, out / RANK_PLOT)
    return rows


def _write_csv(path: Path, rows: list[dict], keys: list[str]) -> None:
    import io

    from tensoradapt._utils import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write_text(path, buf.getvalue())


def load_table(out: str | Path) -> list[dict[str, Any]]:
    """Rows of table.json (numbers stay numbers)."""
    return json.loads((Path(out) / TABLE_JSON).read_text())["rows"]


def metric_columns(rows: Iterable[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r if "/" in k))


def summarize(rows: list[dict]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every numeric column, per (decomp, ranks)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["decomp"], r["ranks"]), []).append(r)
    out = []
    for (decomp, ranks), rs in groups.items():
        s: dict[str, Any] = {"decomp": decomp, "ranks": ranks, "level": rs[0]["level"], "seeds": len(rs),
                             "trainable_params": rs[0]["trainable_params"]}
        for k in metric_columns(rs) + ["delta_m", "train_time_s"]:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            if vals:
                s[k] = statistics.mean(vals)
                s[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- plots
_MARKERS = {"tucker": "o", "cp": "s", "tt": "^", "lora": "D", "shared-lora": "v"}


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_delta_m_vs_params(rows: list[dict], path: str | Path | None = None):
    """Delta-m (mean over seeds, error bar = std) against trainable parameters, one line per decomposition;
    reference cells (frozen / full) are horizontal lines."""
    plt = _plt()
    summary = summarize(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for decomp in dict.fromkeys(r["decomp"] for r in summary if r["ranks"]):
        pts = sorted((r for r in summary if r["decomp"] == decomp and "delta_m" in r),
                     key=lambda r: r["trainable_params"])
        if not pts:
            continue
        ax.errorbar([p["trainable_params"] for p in pts], [p["delta_m"] for p in pts],
                    yerr=[p.get("delta_m_std", 0) for p in pts], marker=_MARKERS.get(decomp, "o"),
                    capsize=3, label=decomp)
        for p in pts:
            ax.annotate(p["ranks"], (p["trainable_params"], p["delta_m"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    for r in summary:
        if not r["ranks"] and "delta_m" in r:
            ax.axhline(r["delta_m"], ls="--", lw=1, color="gray")
            ax.annotate(r["decomp"], (ax.get_xlim()[0], r["delta_m"]), fontsize=7, color="gray",
                        xytext=(2, 2), textcoords="offset points")
    ax.axhline(0, lw=0.8, color="black")
    ax.set_xscale("log")
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter())
    ax.xaxis.set_minor_formatter(EngFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("Δm vs LoRA-STL (%)  ↑ better")
    ax.set_title("Δm vs trainable parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_metric_vs_rank(rows: list[dict], path: str | Path | None = None):
    """Each task's main metric (mean over seeds) against the nominal rank, one line per decomposition."""
    from tensoradapt.mtl import get_tasks

    plt = _plt()
    summary = summarize(rows)
    task_names = list(dict.fromkeys(k.split("/")[0] for k in metric_columns(rows)))
    tasks = get_tasks(task_names)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.0 * len(tasks), 3.4), squeeze=False)
    for ax, (name, spec) in zip(axes[0], tasks.items()):
        key = f"{name}/{spec.main_metric}"
        for decomp in dict.fromkeys(r["decomp"] for r in summary if r["ranks"]):
            pts = sorted((r for r in summary if r["decomp"] == decomp and key in r), key=lambda r: r["level"])
            if pts:
                ax.errorbar([p["level"] for p in pts], [p[key] for p in pts],
                            yerr=[p.get(f"{key}_std", 0) for p in pts], marker=_MARKERS.get(decomp, "o"),
                            capsize=3, label=decomp)
        for r in summary:
            if not r["ranks"] and key in r:
                ax.axhline(r[key], ls="--", lw=1, color="gray", label=r["decomp"])
        ax.set_xscale("log", base=2)
        levels = sorted({r["level"] for r in summary if r["level"]})
        ax.set_xticks(levels, [str(v) for v in levels])
        ax.minorticks_off()
        ax.set_xlabel("rank (r_out = r_in; R for CP)")
        ax.ticklabel_format(axis="y", useOffset=False)
        arrow = "↑" if spec.metrics[spec.main_metric] > 0 else "↓"
        ax.set_title(f"{name}: {spec.main_metric} {arrow}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = sam_mtl._Parser(prog="rank_ablation.py", description=__doc__.split("\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    a = p.add_argument
    a("--quick", action="store_true", help="the CI-sized grid")
    a("--out", default=None, help="output folder (default runs/rank_ablation or runs/rank_ablation_quick)")
    a("--seeds", type=sam_mtl._ints, default=None, help="e.g. 0,1,2")
    a("--decomps", default=None, help="subset of tucker,cp,tt,lora,shared-lora (lora is always kept)")
    a("--epochs", type=int, default=None)
    a("--train-size", type=int, default=None)
    a("--val-size", type=int, default=None)
    a("--batch-size", type=int, default=None)
    a("--model", default=None)
    a("--checkpoint", default=None)
    a("--data", default=None)
    a("--data-root", default=None)
    a("--device", default=None)
    a("--threads", type=int, default=None, help="torch intra-op threads per cell (default: torch's)")
    a("--dry-run", action="store_true", help="print the cells and exit")
    a("--table-only", action="store_true", help="only rebuild the table and the plots")
    return p


def grid_from_args(args: argparse.Namespace) -> Grid:
    run = {k: getattr(args, k) for k in ("epochs", "train_size", "val_size", "batch_size", "model",
                                         "checkpoint", "data", "data_root", "device", "threads")
           if getattr(args, k) is not None}
    seeds = {"seeds": args.seeds} if args.seeds else {}
    grid = quick_grid(**seeds, **run) if args.quick else default_grid(**seeds, **run)
    if args.decomps:
        keep = tuple(d.strip() for d in args.decomps.split(",") if d.strip())
        keep = keep + ((BASELINE_DECOMP,) if BASELINE_DECOMP not in keep else ())
        grid = dataclasses.replace(grid, decomps=keep)
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out or ("runs/rank_ablation_quick" if args.quick else "runs/rank_ablation"))
    try:
        grid = grid_from_args(args)
        for cell in grid.cells():  # validate every cell's arguments before running any
            grid.experiment_config(cell, out)
    except (ValueError, KeyError) as e:
        print(f"rank_ablation.py: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for c in grid.cells():
            print(f"{c.name:32s} {'done' if cell_done(out, c) else 'todo'}")
        return 0
    if args.table_only:
        rows = write_outputs(grid, out)
        print(f"[rank_ablation] {len(rows)} finished cells -> {out / TABLE_CSV}")
        return 0
    try:
        run_grid(grid, out)
    except sam_mtl.UsageError as e:
        print(f"rank_ablation.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
