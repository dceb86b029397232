"""The finished cells of a sweep folder: which are done, whether each ran exactly what its grid cell asks for, and
copying finished cells from another sweep folder (`--reuse`) when their figures may be paired with this machine's.

A cell is `<out>/cells/<name>/`; it is finished when its results.json exists (`tensoradapt.train.results`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .._utils import atomic_write_json
from .claims import CLAIM
from .finetune import FinetuneConfig, UsageError, checkpoint_change
from .results import RESULTS, cpu_model

if TYPE_CHECKING:
    from .ablation import Cell, Grid

__all__ = ["cell_done", "settings_differences", "finished_results", "sweep_folder", "seeds_on_disk",
           "machine_differences", "adopt_cells"]


def cell_done(out: Path, cell: Cell) -> bool:
    return (Path(out) / "cells" / cell.name / RESULTS).is_file()


def settings_differences(cfg: FinetuneConfig, results: dict[str, Any]) -> list[str]:
    """What a finished run (its results.json) computed differently from what `cfg` asks for: each differing
    setting, and a different SAM checkpoint; empty when it is exactly `cfg`'s run."""
    diffs = cfg.resume_differences(results.get("config", {}))
    out = [f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(diffs.items())]
    changed = checkpoint_change(cfg, results)  # the same settings on another foundation model (a new shipped default)
    if changed:
        out.append(f"SAM checkpoint sha256 {str(changed[0])[:12]} -> {str(changed[1])[:12]}")
    return out


def finished_results(grid: Grid, out: Path, also: Sequence[str | Path] = ()) -> dict[Cell, dict[str, Any]]:
    """Each finished cell's results.json in `out`, for the grid's seeds and any other seed found there; raises
    `UsageError` naming the first that ran other settings than `grid` asks for (e.g. a task set with a task since
    renamed), so its numbers never enter a table or a resumed sweep.

    `also`: further sweep folders, read and never written (e.g. the committed records a table is rebuilt from),
    searched in order for the cells `out` lacks; they are validated the same way, and no machine is filtered
    out (the rows record each cell's CPU, and `pairs` flags a pair across two)."""
    folders = [Path(out), *map(sweep_folder, also)]
    results: dict[Cell, dict[str, Any]] = {}
    seeds = tuple(sorted(set(grid.seeds).union(*map(seeds_on_disk, folders))))
    for c in dataclasses.replace(grid, seeds=seeds).cells():
        folder = next((f for f in folders if (f / "cells" / c.name / RESULTS).is_file()), None)
        if folder is None:
            continue
        results[c] = json.loads((folder / "cells" / c.name / RESULTS).read_text())
        stale = settings_differences(grid.experiment_config(c, out), results[c])
        if stale:
            raise UsageError(
                f"cell {c.name} in {folder} was run with other settings ({', '.join(stale)}): use another --out, "
                "leave that cell out of the grid (--seeds, --task-counts, ...), or delete it to rerun it")
    return results


def sweep_folder(path: str | Path) -> Path:
    """`path` as a Path if it is a sweep's output folder (it holds cells/); ValueError otherwise."""
    path = Path(path)
    if not (path / "cells").is_dir():
        raise ValueError(f"source {path} holds no cells/ folder: it must be a sweep's --out")
    return path


def seeds_on_disk(out: Path) -> set[int]:
    """Seeds of the cells already in `out` (e.g. from sweeps run per seed in parallel)."""
    found = set()
    for d in (Path(out) / "cells").glob("*_s*"):
        tail = d.name.rsplit("_s", 1)[-1]
        if tail.isdigit():
            found.add(int(tail))
    return found


def machine_differences(cfg: FinetuneConfig, results: dict[str, Any]) -> list[str]:
    """Why a finished run's figures must not be paired with the runs this process makes from `cfg`, although
    their settings are the same: another subnormal mode, or another CPU model (float results differ between
    machines of one kind; a record without the flag is taken as unflushed, one without a CPU as unknown)."""
    out = []
    flushed = bool(results.get("denormals_flushed", False))
    if flushed != bool(cfg.flush_denormal):
        out.append(f"subnormals flushed {flushed} -> {bool(cfg.flush_denormal)}")
    here = cpu_model()
    if results.get("cpu") and results["cpu"] != here:
        out.append(f"CPU {results['cpu']!r} -> {here!r}")
    return out


def adopt_cells(grid: Grid, out: str | Path, source: str | Path, log: Callable[[str], None] = print,
                copy: bool = True) -> list[str]:
    """Copy into `out` the finished cells of another sweep folder `source` that ran exactly what a cell of `grid`
    asks for (no setting differs, the same SAM checkpoint) on a machine like this one (`machine_differences`:
    their figures are paired with the cells run here), under this grid's cell name; returns their names
    (`copy=False`: only the names, nothing is written).

    E.g. the task-scaling sweep's T = 3, k = 0 cells are the default sweep's cells. A cell that `out` already
    holds, finished or not, is left alone; the copy names its origin in `adopted.json`."""
    out, source = Path(out), sweep_folder(source)
    if source.resolve() == out.resolve():
        raise ValueError(f"source and out are the same folder ({out})")
    finished = [(d, json.loads((d / RESULTS).read_text())) for d in sorted((source / "cells").iterdir())
                if (d / RESULTS).is_file()]
    adopted = []
    for cell in grid.cells():
        target = out / "cells" / cell.name
        if target.exists():
            continue
        cfg = grid.experiment_config(cell, out)
        for d, res in finished:
            if "config" in res and not settings_differences(cfg, res):
                other_machine = machine_differences(cfg, res)
                if other_machine:
                    log(f"[rank_ablation] {cell.name}: {d} ran the same settings on another machine "
                        f"({'; '.join(other_machine)}), not copied")
                    continue
                if not res.get("cpu"):
                    log(f"[rank_ablation] {cell.name}: {d} records no CPU model; pair it only with cells of "
                        "the machine it ran on")
                adopted.append(cell.name)
                if not copy:
                    break
                tmp = target.with_name(f".{cell.name}.adopting-{os.getpid()}")
                shutil.copytree(d, tmp, ignore=shutil.ignore_patterns(CLAIM))
                atomic_write_json(tmp / "adopted.json", {"from": str(d.resolve())})
                try:
                    os.replace(tmp, target)  # the cell appears whole or not at all
                except OSError:
                    if not target.is_dir():
                        raise
                    shutil.rmtree(tmp)  # another shard adopted it first: its copy is this one
                    log(f"[rank_ablation] {cell.name}: another process copied {d} first")
                    break
                log(f"[rank_ablation] {cell.name}: the finished cell {d} ran the same settings, copied")
                break
    return adopted
