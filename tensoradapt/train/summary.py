"""A sweep's rows tabulated: the mean ± std over seeds per configuration, the paired differences' 95 %
intervals, the Markdown summary the README copies, and the CSV writer (`tensoradapt.train.ablation` makes the
rows; `tensoradapt.train.pairs` compares any two configurations)."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Iterable

from .._utils import atomic_write_text
from .stats import t_interval

__all__ = ["PAIRED_COLUMNS", "metric_columns", "summarize", "summary_markdown", "write_csv"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """`rows` as CSV (the union of their keys as columns, None as empty), written atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write_text(path, buf.getvalue())


def metric_columns(rows: Iterable[dict]) -> list[str]:
    """The "task/metric" columns of `rows`, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if "/" in k))


#: the paired differences (per seed, against a reference cell of the same seed and task set) that get a 95 %
#: interval; delta_m_vs_k0: against the same method without a trunk
PAIRED_COLUMNS = ("delta_m", "delta_m_vs_frozen", "delta_m_vs_k0")


def summarize(rows: list[dict]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every numeric column, per (decomp, ranks); for the paired
    differences (`PAIRED_COLUMNS`) also the half-width of their 95 % t-interval (`<column>_ci95`)."""
    axes = [k for k in ("task_set", "T", "shared_blocks") if any(k in r for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["decomp"], r["ranks"], *(r.get(k) for k in axes)), []).append(r)
    out = []
    for (decomp, ranks, *axis_values), rs in groups.items():
        s: dict[str, Any] = {"decomp": decomp, "ranks": ranks, **dict(zip(axes, axis_values)),
                             "level": rs[0]["level"], "seeds": len(rs), "trainable_params": rs[0]["trainable_params"]}
        for k in metric_columns(rs) + [*PAIRED_COLUMNS, "train_time_s"]:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            if vals:
                s[k] = statistics.mean(vals)
                s[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                if k in PAIRED_COLUMNS:
                    s[f"{k}_ci95"] = t_interval(vals)
        out.append(s)
    return out


def _pm(row: dict[str, Any], key: str, digits: int, interval: str = "_std") -> str:
    if not isinstance(row.get(key), (int, float)):
        return "–"
    spread = row.get(key + interval)
    known = isinstance(spread, (int, float)) and spread == spread  # nan: one seed, no interval
    return f"{row[key]:.{digits}f}" + (f" ± {spread:.{digits}f}" if known else "")


def summary_markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table: per (decomp, ranks) the seeds, trainable parameters, each task's
    main metric (mean ± std over seeds), Δm vs LoRA-STL and vs the frozen encoder (mean ± the half-width of
    the 95 % t-interval of the per-seed paired differences)."""
    from ..mtl import get_tasks

    names = [c.split("/")[0] for c in metric_columns(summary) if not c.endswith(("_std", "_ci95"))]
    tasks = get_tasks(tuple(dict.fromkeys(names)))
    scaling = any("T" in r for r in summary)
    if scaling:  # the main metrics of the three base tasks only; Δm covers each row's own T tasks
        tasks = {t: spec for t, spec in tasks.items() if t in ("semantic", "depth", "normal")}
    metrics = [f"{t}/{spec.main_metric}" for t, spec in tasks.items()]
    head = ["decomp", "ranks", *(["T", "k"] if scaling else []), "seeds", "trainable", *metrics,
            "Δm vs LoRA-STL (95 % CI)", "Δm vs frozen (95 % CI)", *(["Δm vs k = 0 (95 % CI)"] if scaling else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {d: k for k, d in enumerate(("frozen", "lora", "shared-lora", "tucker", "cp", "tt", "full"))}
    for r in sorted(summary, key=lambda r: (r.get("T", 0), order.get(r["decomp"], 9), r.get("shared_blocks", 0),
                                            r["trainable_params"])):
        cells = [r["decomp"], r["ranks"] or "–", *([str(r["T"]), str(r["shared_blocks"])] if scaling else []),
                 str(r["seeds"]), f"{r['trainable_params']:,}",
                 *(_pm(r, m, 3 if "err" in m else 2) for m in metrics),
                 _pm(r, "delta_m", 2, "_ci95"), _pm(r, "delta_m_vs_frozen", 2, "_ci95"),
                 *([_pm(r, "delta_m_vs_k0", 2, "_ci95")] if scaling else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
