"""Learning-rate schedules: linear warm-up, then constant, linear or cosine decay (as a LambdaLR)."""
from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "build_scheduler", "resolve_warmup"]


def resolve_warmup(total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    if warmup_ratio:
        return int(round(warmup_ratio * total_steps))
    return min(int(warmup_steps), total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr used for optimiser step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * shape


class _Factor:
    """Picklable lambda for LambdaLR (its state_dict then stays plain data)."""

    def __init__(self, total_steps: int, warmup: int, schedule: str, min_ratio: float) -> None:
        self.total_steps, self.warmup, self.schedule, self.min_ratio = total_steps, warmup, schedule, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup, self.schedule, self.min_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, *, schedule: str = "cosine", warmup_steps: int = 0,
    warmup_ratio: float = 0.0, min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = resolve_warmup(total_steps, warmup_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(total_steps, warmup, schedule, min_lr_ratio))
