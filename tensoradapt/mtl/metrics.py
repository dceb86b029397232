"""Multi-task bookkeeping on top of the task table: Δm, a meter over all tasks, the summed loss."""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from .tasks import NYUV2_TASKS, Meter, TaskSpec

__all__ = ["delta_m", "delta_m_per_task", "delta_m_report", "MultiTaskMeter", "task_losses"]

Results = Mapping[str, Mapping[str, float]]


def delta_m_per_task(result: Results, baseline: Results,
                     tasks: Mapping[str, TaskSpec] = NYUV2_TASKS) -> dict[str, float]:
    """Per task t (the tasks of `result`), in percent:
    ``100 / M_t * sum_m d_m * (result[t][m] - baseline[t][m]) / baseline[t][m]``,
    over the task's metrics m with directions d_m (+1 higher is better, -1 lower is better);
    positive means better than the baseline."""
    if not result:
        raise ValueError("result names no task")
    out = {}
    for t, metrics in result.items():
        if t not in tasks:
            raise ValueError(f"result has task {t!r} that the task table lacks ({list(tasks)})")
        if t not in baseline:
            raise ValueError(f"baseline has no results for task {t!r} (it has {list(baseline)})")
        spec = tasks[t]
        terms = []
        for m, direction in spec.metrics.items():
            if m not in metrics:
                raise ValueError(f"result[{t!r}] lacks metric {m!r} (needs {list(spec.metrics)})")
            if m not in baseline[t]:
                raise ValueError(f"baseline[{t!r}] lacks metric {m!r} (needs {list(spec.metrics)})")
            new, base = float(metrics[m]), float(baseline[t][m])
            if base == 0 or not math.isfinite(base):
                raise ValueError(f"baseline[{t!r}][{m!r}] = {base}: a relative gain needs a finite non-zero base")
            terms.append(direction * (new - base) / base)
        out[t] = 100.0 * sum(terms) / len(terms)
    return out


def delta_m(result: Results, baseline: Results, tasks: Mapping[str, TaskSpec] = NYUV2_TASKS) -> float:
    """Δm in percent, the LibMTL form: the mean over tasks of :func:`delta_m_per_task`.

    ``result`` and ``baseline`` map task -> metric -> value (e.g. ``MultiTaskMeter.compute()``);
    the tasks are those of ``result``; every metric of each task's spec must be present in both.
    Report the baseline's name with the number (see :func:`delta_m_report`)."""
    per = delta_m_per_task(result, baseline, tasks)
    return sum(per.values()) / len(per)


def delta_m_report(result: Results, baseline: Results, baseline_name: str,
                   tasks: Mapping[str, TaskSpec] = NYUV2_TASKS) -> dict:
    """``{"baseline": baseline_name, "delta_m": Δm, "per_task": {task: Δ_t}}`` (percent)."""
    if not baseline_name:
        raise ValueError("baseline_name must name the baseline (e.g. 'single-task LoRA, seed 0')")
    per = delta_m_per_task(result, baseline, tasks)
    return {"baseline": baseline_name, "delta_m": sum(per.values()) / len(per), "per_task": per}


class MultiTaskMeter:
    """One meter per task. ``update(outputs, batch)`` with outputs[task] = logits (B, C, H, W) and
    batch[task] = target; ``compute()`` -> {task: {metric: value}}; ``state()`` concatenates the tasks'
    sufficient statistics in one float64 tensor (all-reduce it, then ``load_state``)."""

    def __init__(self, tasks: Mapping[str, TaskSpec] = NYUV2_TASKS):
        self.tasks = dict(tasks)
        self.meters: dict[str, Meter] = {t: spec.new_meter() for t, spec in self.tasks.items()}

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        for t, meter in self.meters.items():
            if t not in outputs:
                raise KeyError(f"outputs lack task {t!r} (have {list(outputs)})")
            if t not in batch:
                raise KeyError(f"batch lacks the target of task {t!r} (has {list(batch)})")
            meter.update(outputs[t], batch[t])

    def reset(self) -> None:
        for m in self.meters.values():
            m.reset()

    def state(self) -> Tensor:
        return torch.cat([m.state() for m in self.meters.values()])

    def load_state(self, state: Tensor) -> "MultiTaskMeter":
        state = torch.as_tensor(state, dtype=torch.float64).reshape(-1).cpu()
        sizes = [m.state().numel() for m in self.meters.values()]
        if state.numel() != sum(sizes):
            raise ValueError(f"state has {state.numel()} entries, the meters need {sum(sizes)}")
        for m, part in zip(self.meters.values(), torch.split(state, sizes)):
            m.load_state(part)
        return self

    def merge(self, state: Tensor) -> "MultiTaskMeter":
        return self.load_state(self.state() + torch.as_tensor(state, dtype=torch.float64).reshape(-1).cpu())

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: m.compute() for t, m in self.meters.items()}


def task_losses(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                tasks: Mapping[str, TaskSpec] = NYUV2_TASKS) -> dict[str, Tensor]:
    """{task: scalar loss} for every task in `tasks` (sum them, or weight them, to train).

    The logits are cast to float32 first (under bf16 autocast the losses are still computed in float32).
    """
    out = {}
    for t, spec in tasks.items():
        if t not in outputs:
            raise KeyError(f"the model returned no output for task {t!r} (got {sorted(outputs)})")
        if t not in batch:
            raise KeyError(f"the batch has no target for task {t!r} (keys {sorted(batch)})")
        out[t] = spec.loss(outputs[t].float(), batch[t])
    return out
