"""`TrainConfig`: every knob of the training engine, validated on construction and JSON-serialisable."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._utils import atomic_write_text, dataclass_kwargs

__all__ = ["TrainConfig", "RESUME_TOLERANT_FIELDS"]

from .optim import OPTIMIZERS
SCHEDULES = ("constant", "linear", "cosine")
AMP_MODES = ("auto", "bf16", "off")

# Fields that may differ between a run and its resumption without changing what is computed.
RESUME_TOLERANT_FIELDS = frozenset({"progress", "log_every", "num_workers", "ckpt_every_steps", "device"})


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    Steps are optimiser steps: with `grad_accum = k`, k consecutive batches make one step. The schedule
    warms up linearly over `warmup_steps` (or `warmup_ratio` of all steps) from 0 to `lr`, then stays
    (`constant`) or decays to `lr * min_lr_ratio` (`linear` / `cosine`) at the last step.

    Resuming reproduces an uninterrupted run bit for bit on CPU in deterministic mode (the default there).
    With `sample_seeds` (default) each training sample's augmentation draws from an RNG seeded by
    (seed, epoch, index), so this holds with any `num_workers`, and the augmentation of a sample does not
    depend on the number of processes either; without it, a run resumed mid-epoch with worker processes
    gets other augmentation draws for the rest of that epoch.
    """

    epochs: int = 10
    batch_size: int = 4                     # per process (the global batch is batch_size * world_size)
    eval_batch_size: int | None = None      # default: batch_size
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)   # Adam/AdamW; for sgd, betas[0] is the momentum
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)  # missing tasks weigh 1
    lr_scale: dict[str, float] = field(default_factory=dict)  # parameter group -> lr multiplier (Trainer's groups)
    orth_weight: float = 0.0
    orth_terms: str = "paper"               # the penalty's matrix set (`orthogonality_penalty(terms=...)`)
    grad_accum: int = 1
    max_grad_norm: float | None = None
    amp: str = "auto"                       # auto: bf16 autocast on CUDA, none on CPU
    compile: bool = False
    eval_every: int = 1                     # epochs; the last epoch is always evaluated
    ckpt_every_steps: int = 0               # 0: checkpoint at the end of every epoch only
    best_metric: str = "loss"               # "loss" (validation loss, lower is better) or "<task>/<metric>"
    seed: int = 0
    deterministic: bool | None = None       # None: on for CPU runs, off on CUDA
    skip_nonfinite: bool = False
    num_workers: int = 0
    sample_seeds: bool = True               # seed each training sample's augmentation by (seed, epoch, index)
    drop_last: bool = False
    log_every: int = 1                      # steps between "train" records in the JSONL log
    progress: bool = True
    device: str = "auto"
    input_key: str = "image"
    find_unused_parameters: bool = False    # DDP: True only for a model whose trainable set can miss a gradient

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON round trips give lists
        self.task_weights = {str(k): float(v) for k, v in dict(self.task_weights).items()}
        self.lr_scale = {str(k): float(v) for k, v in dict(self.lr_scale).items()}

        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {v!r}")

        for name in ("epochs", "batch_size", "grad_accum", "eval_every", "log_every"):
            positive_int(name)
        for name in ("warmup_steps", "ckpt_every_steps", "num_workers", "seed"):
            positive_int(name, allow_zero=True)
        if self.eval_batch_size is not None:
            positive_int("eval_batch_size")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite float, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not (math.isfinite(self.orth_weight) and self.orth_weight >= 0):
            raise ValueError(f"orth_weight must be a finite float >= 0, got {self.orth_weight!r}")
        from ..deltas import ORTHOGONALITY_TERMS

        if self.orth_terms not in ORTHOGONALITY_TERMS:
            raise ValueError(f"orth_terms must be one of {ORTHOGONALITY_TERMS}, got {self.orth_terms!r}")
        for k, v in self.task_weights.items():
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"task_weights[{k!r}] must be a finite float >= 0, got {v!r}")
        for k, v in self.lr_scale.items():
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"lr_scale[{k!r}] must be a finite float > 0, got {v!r}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if not self.best_metric or (self.best_metric != "loss" and self.best_metric.count("/") != 1):
            raise ValueError(f"best_metric must be 'loss' or '<task>/<metric>', got {self.best_metric!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return cls(**dataclass_kwargs(cls, d))

    def save_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resume_differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields (outside RESUME_TOLERANT_FIELDS) whose value differs from the stored config `other`."""
        mine = self.to_dict()
        diffs = {}
        for k, v in mine.items():
            if k in RESUME_TOLERANT_FIELDS:
                continue
            if k in other and other[k] != v:
                diffs[k] = (other[k], v)
        return diffs

    def check_tasks(self, tasks: Mapping[str, Any]) -> None:
        """`task_weights` and `best_metric` must name tasks (and a metric) of `tasks` {name: spec}."""
        if not tasks:
            raise ValueError("tasks is empty")
        unknown = sorted(set(self.task_weights) - set(tasks))
        if unknown:
            raise ValueError(f"task_weights names unknown task(s) {unknown}; the tasks are {list(tasks)}")
        if self.best_metric != "loss":
            t, m = self.best_metric.split("/")
            if t not in tasks or m not in getattr(tasks[t], "metrics", {}):
                raise ValueError(f"best_metric {self.best_metric!r} is not a '<task>/<metric>' of these tasks")

    def task_weight(self, task: str) -> float:
        return self.task_weights.get(task, 1.0)
