"""What a fine-tuning run reports: results.json (metrics, delta-m against a baseline run, parameter
counts, times, the config) and its figures (loss curves, predictions on a few validation images)."""
from __future__ import annotations

import functools
import json
import platform
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._utils import atomic_write_json
from .jsonl import read_jsonl

__all__ = [
    "RESULTS", "RUN_CONFIG", "nest_metrics", "parameter_counts", "baseline_delta_m", "median_step_time",
    "write_figures", "results_record", "summary_line", "rank_text", "write_results",
]

RESULTS, RUN_CONFIG = "results.json", "run_config.json"


def rank_text(ranks: int | tuple[int, ...] | list[int] | None) -> str | None:
    """Ranks as CLI text: (4, 8, 8) -> "4,8,8", 8 -> "8", None -> None."""
    if ranks is None:
        return None
    return ",".join(map(str, ranks)) if isinstance(ranks, (tuple, list)) else str(ranks)


def nest_metrics(flat: Mapping[str, float] | None) -> dict[str, dict[str, float]]:
    """{"semantic/mIoU": v, "loss/depth": l} -> {"semantic": {"mIoU": v}} (losses dropped)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in (flat or {}).items():
        task, sep, metric = key.partition("/")
        if sep and task != "loss":
            out.setdefault(task, {})[metric] = value
    return out


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable / total / delta counts (and mSAM's per-part breakdown when the model is an mSAM)."""
    from ..inject import task_deltas
    from ..sam import MultiTaskSAMBase, parameter_breakdown

    if isinstance(model, MultiTaskSAMBase):
        return parameter_breakdown(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    delta = sum(p.numel() for _, d in task_deltas(model) for p in d.parameters())
    return {"trainable": trainable, "total": total, "delta": delta}


def _decomp_and_ranks(config: Mapping[str, Any]) -> tuple[str | None, Any]:
    """A results.json config's decomposition and ranks (nested "msam" options, or the older flat layout)."""
    msam = config.get("msam") or config
    return msam.get("decomp"), msam.get("ranks")


def baseline_delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: str | Path | None,
                     tasks: Mapping[str, Any]) -> dict[str, Any] | None:
    """Delta-m of `metrics` against the results.json at `baseline` (None: no baseline, None returned).

    {"value": percent or None, "baseline": path, "baseline_decomp", "baseline_ranks"} plus "error" when
    the relative change is undefined (another task set, or a baseline metric at 0)."""
    if baseline is None:
        return None
    from ..mtl import delta_m

    base = json.loads(Path(baseline).read_text())
    decomp, ranks = _decomp_and_ranks(base.get("config", {}))
    out: dict[str, Any] = {"value": None, "baseline": str(baseline), "baseline_decomp": decomp,
                           "baseline_ranks": ranks}
    try:
        out["value"] = float(delta_m(metrics, base["metrics"], tasks))
    except ValueError as e:
        out["error"] = str(e)
    return out


def median_step_time(log: str | Path) -> float | None:
    """Median seconds per optimiser step over the "train" records of a run's log."""
    times = sorted(r["step_time"] for r in read_jsonl(log) if r.get("event") == "train" and "step_time" in r)
    return times[len(times) // 2] if times else None


def write_figures(model: nn.Module, tasks: Mapping[str, Any], val: Dataset, out: Path, device: torch.device,
                  num_figures: int, title: str) -> list[str]:
    """loss_curves.png and (for `num_figures` > 0) predictions.png: image / ground truth / prediction."""
    from .plots import plot_loss_curves, plot_predictions

    paths = [plot_loss_curves(out / "log.jsonl", out / "loss_curves.png", title=title)]
    n = min(num_figures, len(val))
    if n:
        batch = next(iter(DataLoader(val, batch_size=n, shuffle=False)))
        was = model.training
        model.eval()
        with torch.no_grad():
            logits = model(batch["image"].to(device))
        model.train(was)
        preds = {t: (s.predict if hasattr(s, "predict") else s.activate)(logits[t].float()).cpu()
                 for t, s in tasks.items()}
        targets = {t: batch[t] for t in tasks}
        paths.append(plot_predictions(batch["image"], targets, preds, out / "predictions.png",
                                      num_classes={t: s.channels for t, s in tasks.items()}, title=title))
    return [str(p) for p in paths]


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; else what `platform` knows): timings and float results
    differ between the machines of one kind (an Intel and an AMD CPU flush subnormals at different costs)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_record(summary: Mapping[str, Any], tasks: Mapping[str, Any], *, config: Mapping[str, Any],
                   counts: Mapping[str, int], baseline: str | None, log: Path, setup_time: float,
                   device: torch.device, world_size: int) -> dict[str, Any]:
    """The results.json record of a finished `Trainer.fit` summary (figures and wall time added later).

    `train_time_s` sums the training steps of every process that ran the run; `wall_time_s` (added by the
    recipe) is the finishing process's alone, which is all of the run only when `resumed_at_step` is 0."""
    metrics = nest_metrics(summary["metrics"])
    best = summary["best"]
    return {
        "metrics": metrics,
        "val_loss": {k: v for k, v in (summary["metrics"] or {}).items() if k.startswith("loss")},
        "delta_m": baseline_delta_m(metrics, baseline, tasks),
        "best": best and {"epoch": best["epoch"], "step": best["step"], "metric": best["metric"],
                          "metrics": nest_metrics(best["metrics"])},
        "main_metrics": {t: {"metric": s.main_metric, "value": metrics.get(t, {}).get(s.main_metric),
                             "higher_is_better": s.metrics[s.main_metric] > 0} for t, s in tasks.items()},
        "params": dict(counts),
        "epochs": summary["epochs"], "steps": summary["steps"], "skipped_steps": summary["skipped_steps"],
        "train_time_s": summary["train_time_s"], "resumed_at_step": summary["resumed_at_step"],
        "setup_time_s": setup_time,
        "median_step_time_s": median_step_time(log),
        "device": str(device), "world_size": world_size, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "platform": platform.platform(), "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "config": dict(config),
    }


def summary_line(results: Mapping[str, Any]) -> str:
    """"semantic mIoU=... depth abs_err=...  delta_m=+1.23% vs lora" for the log."""
    line = "  ".join(f"{t} {m['metric']}={m['value']:.4g}" for t, m in results["main_metrics"].items()
                     if m["value"] is not None)
    dm = results.get("delta_m")
    if dm and dm["value"] is not None:
        line += f"  delta_m={dm['value']:+.2f}% vs {dm['baseline_decomp']}"
    elif dm:
        line += f"  delta_m undefined: {dm['error']}"
    return line


def write_results(out: Path, results: Mapping[str, Any]) -> Path:
    """results.json, written atomically."""
    atomic_write_json(out / RESULTS, results)
    return out / RESULTS
