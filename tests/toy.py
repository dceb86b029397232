"""Test fixture: a tiny multi-task model, two task specs and a random dataset (the engine in seconds).

The task objects follow the same protocol as `tensoradapt.mtl.TaskSpec` (`name`, `channels`,
`metrics` {name: +1 higher-better / -1 lower-better}, `main_metric`, `loss(logits, target)`,
`new_meter()` whose meter has `update`, `compute` and a sum-reducible `state_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tensoradapt.inject import task_linears, task_scope

__all__ = ["ToyMultiTaskNet", "ToySegTask", "ToyRegTask", "toy_tasks", "ToyDataset"]


class ToyMultiTaskNet(nn.Module):
    """Per-pixel MLP trunk (nn.Linears, so `tensoradapt.adapt` can wrap them) + one head per task.

    If the trunk is adapted with T = len(tasks) task deltas, it runs once per task with that task routed.
    """

    def __init__(self, tasks: dict[str, int], width: int = 16, in_ch: int = 3) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.fc1 = nn.Linear(in_ch, width)
        self.fc2 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({t: nn.Linear(width, c) for t, c in tasks.items()})

    def _trunk(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    def forward(self, images: Tensor, tasks=None) -> dict[str, Tensor]:
        x = images.permute(0, 2, 3, 1)  # (B, H, W, C)
        adapted = any(True for _ in task_linears(self))
        out = {}
        shared = None if adapted else self._trunk(x)
        for i, name in enumerate(tasks or self.task_names):
            if adapted:
                with task_scope(self, self.task_names.index(name)):
                    feats = self._trunk(x)
            else:
                feats = shared
            out[name] = self.heads[name](feats).permute(0, 3, 1, 2)
        return out


class _SumMeter:
    """Sums of per-pixel statistics; `state_dict()` / `load_state_dict()` sum across ranks."""

    def __init__(self, keys: list[str]) -> None:
        self.stats = {k: torch.zeros((), dtype=torch.float64) for k in keys}

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.stats)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.stats = {k: v.detach().to(torch.float64).cpu() for k, v in state.items()}


class _SegMeter(_SumMeter):
    def __init__(self, classes: int) -> None:
        super().__init__(["correct", "count"])

    def update(self, logits: Tensor, target: Tensor) -> None:
        valid = target >= 0
        pred = logits.argmax(1)
        self.stats["correct"] += (pred.eq(target) & valid).sum().double().cpu()
        self.stats["count"] += valid.sum().double().cpu()

    def compute(self) -> dict[str, float]:
        return {"acc": float(self.stats["correct"] / self.stats["count"].clamp_min(1))}


class _RegMeter(_SumMeter):
    def __init__(self) -> None:
        super().__init__(["abs_err", "count"])

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.stats["abs_err"] += (logits.float() - target.float()).abs().sum().double().cpu()
        self.stats["count"] += float(target.numel())

    def compute(self) -> dict[str, float]:
        return {"abs_err": float(self.stats["abs_err"] / self.stats["count"].clamp_min(1))}


@dataclass
class ToySegTask:
    name: str = "seg"
    channels: int = 3
    metrics: dict[str, int] = field(default_factory=lambda: {"acc": +1})
    main_metric: str = "acc"

    def activate(self, logits: Tensor) -> Tensor:
        return logits.argmax(1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=-1)

    def new_meter(self) -> _SegMeter:
        return _SegMeter(self.channels)


@dataclass
class ToyRegTask:
    name: str = "reg"
    channels: int = 1
    metrics: dict[str, int] = field(default_factory=lambda: {"abs_err": -1})
    main_metric: str = "abs_err"

    def activate(self, logits: Tensor) -> Tensor:
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(logits.float(), target.float())

    def new_meter(self) -> _RegMeter:
        return _RegMeter()


def toy_tasks() -> dict[str, object]:
    return {"seg": ToySegTask(), "reg": ToyRegTask()}


class ToyDataset(torch.utils.data.Dataset):
    """`n` random images (3, size, size) with learnable targets: `seg` = argmax channel, `reg` = mean.

    With `augment=True`, items are flipped at random using the global torch RNG (so resuming must
    restore RNG state to reproduce a run).
    """

    def __init__(self, n: int = 32, size: int = 8, seed: int = 0, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        img = self.images[i]
        if self.augment and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return {"image": img, "seg": img.argmax(0), "reg": img.mean(0, keepdim=True)}
