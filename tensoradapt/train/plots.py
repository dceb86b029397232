"""Figures of a run (loss curves from the JSONL log, an image / ground truth / prediction grid) and of a
rank sweep (delta-m against trainable parameters, each task's main metric against rank).

matplotlib is imported lazily (the `plot` extra) with the non-interactive Agg backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._utils import atomic_path
from .jsonl import read_jsonl

__all__ = ["plot_loss_curves", "plot_predictions", "to_display", "plot_delta_m_vs_params", "plot_metric_vs_rank"]


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(log: str | Path | Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss per task (and total) against the optimiser step; validation losses as markers."""
    plt = _plt()
    records = read_jsonl(log) if isinstance(log, (str, Path)) else list(log)
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    keys = list(dict.fromkeys(k for r in train for k in r if k.startswith("loss/")))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 3.0), squeeze=False)
    for ax, key in zip(axes[0], ["loss"] + keys):
        xs = [r["step"] for r in train if isinstance(r.get(key), (int, float))]
        ys = [r[key] for r in train if isinstance(r.get(key), (int, float))]
        ax.plot(xs, ys, lw=1, label="train")
        ex = [r["step"] for r in evals if isinstance(r.get(key), (int, float))]
        ey = [r[key] for r in evals if isinstance(r.get(key), (int, float))]
        if ex:
            ax.plot(ex, ey, "o-", ms=4, label="val")
        ax.set_title(key.replace("loss/", "") if key != "loss" else "total (weighted)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "loss/orthogonality" and ys and min(ys) > 0:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, title, dpi=110)


def _colorize_labels(lab: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    n = int(num_classes or max(int(lab.max()) + 1, 1))
    rng = np.random.default_rng(3)
    palette = rng.uniform(0.15, 1.0, size=(max(n, 1), 3))
    out = np.zeros(lab.shape + (3,))
    valid = lab >= 0
    out[valid] = palette[np.clip(lab[valid], 0, n - 1)]
    return out


def to_display(x: Tensor, kind: str | None = None, num_classes: int | None = None,
               vrange: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """One sample as something `imshow` can draw, chosen by shape: (H, W) ints = labels, (1, H, W) =
    a scalar map, (2, H, W) = a vector field (components + 0.5 as red / green), (3, H, W) = an image or unit
    normals (mapped from [-1, 1] to [0, 1])."""
    x = x.detach().float().cpu() if x.dtype.is_floating_point else x.detach().cpu()
    if x.dim() == 2 and not x.dtype.is_floating_point:
        return _colorize_labels(x.numpy(), num_classes), {}
    if x.dim() == 3 and x.shape[0] == 1:
        return x[0].numpy(), {"cmap": "viridis", **({"vmin": vrange[0], "vmax": vrange[1]} if vrange else {})}
    if x.dim() == 3 and x.shape[0] == 2:  # a 2-d vector field (offsets): the components as red / green
        img = torch.cat([x + 0.5, torch.full_like(x[:1], 0.5)]).permute(1, 2, 0).numpy()
        return np.clip(img, 0, 1), {}
    if x.dim() == 3 and x.shape[0] == 3:
        img = x.permute(1, 2, 0).numpy()
        if kind == "normal":
            zero = np.abs(img).sum(-1, keepdims=True) == 0
            img = np.where(zero, 0.0, (img + 1) / 2)
        return np.clip(img, 0, 1), {}
    raise ValueError(f"cannot display a tensor of shape {tuple(x.shape)}")


def plot_predictions(
    images: Tensor, targets: Mapping[str, Tensor], predictions: Mapping[str, Tensor], path: str | Path,
    num_classes: Mapping[str, int] | None = None, title: str = "",
) -> Path:
    """Rows: validation images; columns: the image, then ground truth | prediction for each task.

    `predictions[t]` is already activated (labels for segmentation, values otherwise).
    """
    plt = _plt()
    tasks = list(predictions)
    n = images.shape[0]
    cols = 1 + 2 * len(tasks)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.4), squeeze=False)
    for i in range(n):
        img, kw = to_display(images[i])
        axes[i][0].imshow(img, **kw)
        if i == 0:
            axes[i][0].set_title("image", fontsize=9)
        for j, t in enumerate(tasks):
            gt, pred = targets[t][i], predictions[t][i]
            vr = None
            if gt.dim() == 3 and gt.shape[0] == 1:  # one colour scale for depth-like maps
                valid = gt[gt > 0] if (gt > 0).any() else gt.flatten()
                vr = (float(valid.min()), float(valid.max()))
                vr = vr if vr[1] > vr[0] else (min(vr[0], 0.0), max(vr[1], 1.0))  # e.g. an edge map: 0 / 1
            for k, (x, label) in enumerate(((gt, "ground truth"), (pred, "prediction"))):
                ax = axes[i][1 + 2 * j + k]
                im, kw = to_display(x, kind=t, num_classes=(num_classes or {}).get(t), vrange=vr)
                ax.imshow(im, **kw)
                if i == 0:
                    ax.set_title(f"{t}: {label}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path, title, dpi=100)


def _save(fig, path: str | Path, title: str | None, dpi: int) -> Path:
    """Title, lay out, write (creating the folder) and close a figure; return its path."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(fig, path, dpi)
    _plt().close(fig)
    return path


def _write(fig, path: str | Path, dpi: int) -> None:
    """savefig through `atomic_path`: a reader (or a sweep's other shard writing the same plot) never sees half
    a file. The format is `path`'s suffix (the temporary file's is .tmp)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix[1:] or _plt().rcParams["savefig.format"])


# ------------------------------------------------------------------------------------------ rank sweep
_MARKERS = {"tucker": "o", "cp": "s", "tt": "^", "lora": "D", "shared-lora": "v"}


def _finish(fig, path: str | Path | None):
    """Lay out; write and close when `path` is given, else return the open figure (a notebook shows it)."""
    fig.tight_layout()
    if path is not None:
        _write(fig, path, 110)
        _plt().close(fig)
    return fig


def plot_delta_m_vs_params(rows: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Delta-m (mean over seeds, error bar = std) against trainable parameters, one line per decomposition;
    reference cells (frozen / full) are horizontal lines. `rows`: `tensoradapt.train.ablation` table rows."""
    from matplotlib.ticker import EngFormatter

    from .summary import summarize

    plt = _plt()
    summary = summarize(list(rows))
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
            # x in axes coordinates, y in data: the label stays at the left edge whatever the x scale
            ax.annotate(r["decomp"], (0, r["delta_m"]), xycoords=ax.get_yaxis_transform(), fontsize=7,
                        color="gray", xytext=(3, 2), textcoords="offset points")
    ax.axhline(0, lw=0.8, color="black")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.xaxis.set_minor_formatter(EngFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("Δm vs LoRA-STL (%)  ↑ better")
    ax.set_title("Δm vs trainable parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_metric_vs_rank(rows: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Each task's main metric (mean over seeds) against the nominal rank, one line per decomposition."""
    from ..mtl import get_tasks
    from .summary import metric_columns, summarize

    plt = _plt()
    rows = list(rows)
    summary = summarize(rows)
    tasks = get_tasks(list(dict.fromkeys(k.split("/")[0] for k in metric_columns(rows))))
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
    return _finish(fig, path)


def plot_delta_m_vs_tasks(summary: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Task scaling: Δm vs the frozen encoder (mean over seeds, error bar = the 95 % interval of the paired
    differences) against the number of tasks T, one line per (method, ranks, trunk depth k); the ranks are named
    in the legend where a method ran at more than one. A point resting on fewer
    seeds than the most any point has is labelled with its count ("n = 1": no interval, not a mean). The
    lines are drawn side by side, each shifted by a few hundredths of a task, so that their bars do not hide
    each other. `summary`: `tensoradapt.train.summary.summarize` of a task-scaling grid's rows."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    lines = list(dict.fromkeys((r["decomp"], r["ranks"], r["shared_blocks"]) for r in summary if r["ranks"]))
    ranked = {d for d, ranks, _ in lines if len({r for e, r, _ in lines if e == d}) > 1}
    most_seeds = max((r["seeds"] for r in summary), default=0)
    few: dict[int, list[tuple[float, float, int]]] = {}  # T -> (x, Δm, seeds) of the points to label
    for i, (decomp, ranks, k) in enumerate(lines):
        shift = 0.08 * (i - (len(lines) - 1) / 2)
        pts = sorted((r for r in summary if (r["decomp"], r["ranks"], r["shared_blocks"]) == (decomp, ranks, k)
                      and "delta_m_vs_frozen" in r), key=lambda r: r["T"])
        if pts:
            ci = [p.get("delta_m_vs_frozen_ci95", 0) for p in pts]
            name = f"{decomp} ({ranks})" if decomp in ranked else decomp
            ax.errorbar([p["T"] + shift for p in pts], [p["delta_m_vs_frozen"] for p in pts],
                        yerr=[0 if c != c else c for c in ci], marker=_MARKERS.get(decomp, "o"), capsize=3,
                        ls="-" if k == 0 else "--", label=f"{name}, k = {k}")
            for p in pts:
                if p["seeds"] < most_seeds:
                    few.setdefault(p["T"], []).append((p["T"] + shift, p["delta_m_vs_frozen"], p["seeds"]))
    for labels in few.values():  # at one T, the highest label above its point, the others below theirs
        for j, (x, y, n) in enumerate(sorted(labels, key=lambda lab: -lab[1])):
            ax.annotate(f"n = {n}", (x, y), textcoords="offset points", xytext=(4, 3 if j == 0 else -10), fontsize=7)
    ax.axhline(0, lw=0.8, color="black")
    ts = sorted({r["T"] for r in summary})
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("tasks T")
    ax.set_ylabel("Δm vs frozen encoder (%)  ↑ better")
    ax.set_title("Δm as tasks are added (k: task-shared trunk blocks)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # none until a frozen cell has finished
        ax.legend(fontsize=8)
    return _finish(fig, path)
