"""Optimisers over parameter groups: weight decay off where it does not belong, per-group lr multipliers.

One place builds the groups for every recipe (fine-tuning, pretraining), so "which parameters decay" and
"which parameters learn faster" are decided once.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "no_decay_1d", "param_groups", "build_optimizer"]

OPTIMIZERS = ("adamw", "adam", "sgd")

NamedParams = Iterable[tuple[str, Tensor]]
Predicate = Callable[[str, Tensor], bool]


def no_decay_1d(name: str, p: Tensor) -> bool:
    """The usual rule: no weight decay on 1-d parameters (norm scales and shifts, biases)."""
    return p.ndim < 2


def param_groups(
    named_params: NamedParams,
    weight_decay: float,
    no_decay: Predicate = no_decay_1d,
    lr_scale: Mapping[str, tuple[Predicate, float]] | None = None,
) -> list[dict]:
    """Split parameters into optimiser groups by (lr multiplier, decays or not); empty groups are dropped.

    `lr_scale` maps a group name to (predicate, multiplier): a parameter matching the first predicate in
    order gets that multiplier on the base lr (kept as the group's `lr_scale`, which `build_optimizer`
    applies); all others get 1.
    """
    rules = list((lr_scale or {}).items())
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in named_params:
        label, scale = "default", 1.0
        for rule_name, (pred, mult) in rules:
            if pred(name, p):
                label, scale = rule_name, float(mult)
                break
        decays = not no_decay(name, p)
        g = groups.setdefault((label, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale, "name": label,
        })
        g["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(
    name: str, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.Optimizer:
    """`adamw` / `adam` / `sgd` (momentum = betas[0]) over `groups`; each group's lr is lr * its lr_scale."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    groups = [{**g, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0])
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=betas, eps=eps)
