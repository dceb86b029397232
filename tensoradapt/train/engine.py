"""The training engine: one loop for every configuration (any decomposition, any model).

The engine only assumes:

* `model(batch[config.input_key]) -> {task name: logits}`; the trainable parameters are those with
  `requires_grad` (the model builder marks them);
* `tasks: {name: spec}` where a spec has `loss(logits, target) -> scalar`, `new_meter()` (a meter with
  `update(logits, target)` / `compute() -> {metric: float}`) and `metrics: {metric: +1 | -1}`;
* datasets whose items are dicts holding the input and one target per task.

Distributed runs (`torchrun`) wrap the model in DDP and shard the data with a `DistributedSampler`;
evaluation is sharded too when the meters expose a sum-reducible `state_dict()` (or `all_reduce()` /
`merge()`), else rank 0 evaluates the whole split.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm  # not tqdm.auto: in notebooks that wants ipywidgets (and warns without them)

from .checkpoint import (
    CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint,
)
from .config import TrainConfig
from .distributed import (
    DistInfo, all_gather_object, all_reduce_sum, barrier, broadcast_object, init_distributed,
)
from .jsonl import JsonlLogger
from .optim import build_optimizer, param_groups
from .schedule import build_scheduler

__all__ = [
    "Trainer", "NonFiniteLossError", "ResumableDistributedSampler", "SampleSeededDataset",
    "trainable_state_dict",
    "load_trainable_state_dict", "seed_everything", "LAST", "BEST", "LOG", "CONFIG",
]

LAST, BEST, LOG, CONFIG = "last.pt", "best.pt", "log.jsonl", "train_config.json"
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """A loss (or the gradient norm) became NaN/inf; the message names the step and the task."""


# ---------------------------------------------------------------------------------------------- utils
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters and all persistent buffers (detached, on CPU), keyed as in `state_dict()`."""
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if isinstance(v, nn.Parameter) and not v.requires_grad:
            continue
        out[k] = v.detach().cpu().clone()
    return out


def frozen_fingerprint(model: nn.Module) -> list[float]:
    """(sum, sum of squares) in float64 of every frozen parameter: the base weights a checkpoint assumes."""
    out = []
    with torch.no_grad():
        for _, p in model.named_parameters():
            if not p.requires_grad:
                d = p.detach().double()
                out += [float(d.sum()), float((d * d).sum())]
    return out


def _same_fingerprint(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(a, b))


def load_trainable_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load `trainable_state_dict` output back; the trainable sets must match exactly."""
    current = model.state_dict(keep_vars=True)
    expected = {k for k, v in current.items() if not (isinstance(v, nn.Parameter) and not v.requires_grad)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(current))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model's trainable state: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}) "
            "(another --decomp, --ranks or --model?)"
        )
    bad = [(k, tuple(state[k].shape), tuple(current[k].shape)) for k in state if state[k].shape != current[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {bad[:3]} (checkpoint, model)")
    with torch.no_grad():
        for k, v in state.items():
            current[k].copy_(v)


class ResumableDistributedSampler(DistributedSampler):
    """A `DistributedSampler` (same shuffling: seed + epoch) that can skip the first `start` samples of
    this rank's share of the epoch, so a run resumed mid-epoch sees exactly the batches it had left."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class SampleSeededDataset(Dataset):
    """Runs `dataset[i]` under RNG states (torch, NumPy, Python) seeded from (seed, epoch, i), restoring the
    caller's states afterwards.

    Random augmentation then depends on the sample and the epoch only: not on the worker that loads it,
    the number of workers or processes, nor on where a resumed run restarts. `epoch` is set by the
    trainer before each epoch's iterator is created (workers copy it when they start).
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + int(i) * 7_919 + 12_345) % (2**63 - 1)
        py, nps = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(nps)


class _ShardSampler(Sampler[int]):
    """rank::world_size of range(n), no padding (evaluation must see every sample exactly once)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _meter_reduction(meter: Any) -> str | None:
    """How a meter's statistics are summed across ranks:
    `all_reduce()` (the meter does it), `state()` -> tensor / `load_state(tensor)` (tensoradapt.mtl),
    `state_dict()` -> {name: tensor} / `load_state_dict(...)`; None: not reducible."""
    if hasattr(meter, "all_reduce"):
        return "all_reduce"
    if callable(getattr(meter, "state", None)) and hasattr(meter, "load_state"):
        return "tensor"
    if hasattr(meter, "state_dict") and hasattr(meter, "load_state_dict"):
        return "state_dict"
    return None


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _fmt(v: float) -> str:
    return f"{v:.4g}"


# --------------------------------------------------------------------------------------------- Trainer
class Trainer:
    """Train `model` on `tasks` with `config`; checkpoints, logs and the config go to `out_dir`.

    Args:
        model: returns {task: logits (B, C_t, ...)} for `model(batch[config.input_key])`.
        tasks: {name: task spec} (see the module doc); the loss is sum_t w_t * loss_t + orth_weight * penalty.
        train_data / val_data: datasets of dict items; `val_data=None` skips evaluation.
        penalty_fn: `penalty_fn(model) -> 0-dim tensor`; default `tensoradapt.orthogonality_penalty`
            (used only when `config.orth_weight > 0`).
        extra_state: JSON-able dict stored in every checkpoint (e.g. the model's build arguments).
        callbacks: `fn(trainer)` called after every optimiser step (trainer.step is the step count).
        dist_info: from `init_distributed`; default: join torchrun's group if there is one.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, Any],
        train_data: Dataset,
        val_data: Dataset | None = None,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        *,
        collate_fn: Callable | None = None,
        penalty_fn: Callable[[nn.Module], Tensor] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        callbacks: Iterable[Callable[["Trainer"], None]] = (),
        dist_info: DistInfo | None = None,
    ) -> None:
        self.config = cfg = config if config is not None else TrainConfig()
        self.tasks = dict(tasks)
        if not self.tasks:
            raise ValueError("tasks is empty")
        unknown = sorted(set(cfg.task_weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_weights name unknown tasks {unknown}; tasks are {sorted(self.tasks)}")
        if cfg.best_metric != "loss":
            t, m = cfg.best_metric.split("/")
            if t not in self.tasks or m not in getattr(self.tasks[t], "metrics", {}):
                raise ValueError(f"best_metric {cfg.best_metric!r} is not a '<task>/<metric>' of these tasks")
        self.dist = dist_info if dist_info is not None else init_distributed(cfg.device)
        self.device = self.dist.device
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra_state = dict(extra_state or {})
        self.callbacks = list(callbacks)
        self.collate_fn = collate_fn
        self.train_data, self.val_data = train_data, val_data

        self.deterministic = cfg.deterministic if cfg.deterministic is not None else self.device.type == "cpu"
        if self.deterministic and self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.amp_dtype = None
        if cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda"):
            self.amp_dtype = torch.bfloat16

        self.model = model.to(self.device)
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        self.num_trainable = sum(p.numel() for _, p in self.trainable)
        self.fingerprint = frozen_fingerprint(self.model)
        if penalty_fn is None and cfg.orth_weight > 0:
            from ..regularizers import orthogonality_penalty as penalty_fn  # noqa: N813
        self.penalty_fn = penalty_fn

        # DDP / compile: `self.forward_model` is what training calls; `self.model` stays the raw module.
        self.ddp = None
        fwd: nn.Module = self.model
        if self.dist.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
            fwd = self.ddp
        self.forward_model = torch.compile(fwd) if cfg.compile else fwd

        # Data.
        self.sampler = ResumableDistributedSampler(
            train_data, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed,
            drop_last=cfg.drop_last,
        )
        self.loader_generator = torch.Generator()
        self.train_source = SampleSeededDataset(train_data, cfg.seed) if cfg.sample_seeds else train_data
        self.train_loader = DataLoader(
            self.train_source, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
            collate_fn=collate_fn, drop_last=cfg.drop_last, generator=self.loader_generator,
            pin_memory=self.device.type == "cuda",
        )
        n = self.sampler.num_samples
        self.batches_per_epoch = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"no training batch: {len(train_data)} samples over {self.dist.world_size} process(es) "
                f"with batch_size={cfg.batch_size}, drop_last={cfg.drop_last}"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs

        # Optimiser: no weight decay on 1-d parameters (norms, biases).
        groups = param_groups(self.trainable, cfg.weight_decay)
        self.optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.scheduler = build_scheduler(
            self.optimizer, self.total_steps, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
            warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio,
        )

        # Progress counters (all restored on resume).
        self.epoch = 0              # epochs completed
        self.batch_in_epoch = 0     # batches of the current epoch already consumed
        self.step = 0               # optimiser steps done
        self.skipped_steps = 0
        self.train_time = 0.0
        self.best: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] | None = None
        self.logger = JsonlLogger(self.out_dir / LOG if self.out_dir else os.devnull,
                                  enabled=self.dist.is_main and self.out_dir is not None)

    # ------------------------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def last_path(self) -> Path | None:
        return self.out_dir / LAST if self.out_dir else None

    @property
    def best_path(self) -> Path | None:
        return self.out_dir / BEST if self.out_dir else None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        rng = all_gather_object(capture_rng_state())  # collective: every rank calls state()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": trainable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "train_time": self.train_time,
            "best": self.best,
            "last_metrics": self.last_metrics,
            "world_size": self.dist.world_size,
            "frozen_fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "extra": self.extra_state,
        }

    def save(self, path: Path | None = None) -> None:
        """Write last.pt atomically (rank 0); every rank must call it (RNG states are gathered)."""
        state = self.state()
        path = path or self.last_path
        if self.is_main and path is not None:
            save_checkpoint(path, state)
        barrier()

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.is_main and self.best_path is not None:
            save_checkpoint(self.best_path, {
                "format": CHECKPOINT_FORMAT, "model": trainable_state_dict(self.model), "metrics": metrics,
                "epoch": self.epoch, "step": self.step, "config": self.config.to_dict(), "extra": self.extra_state,
            })

    def load_state(self, ckpt: Mapping[str, Any], source: str = "checkpoint") -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
            raise CheckpointError(f"{source} is not a resumable training checkpoint (format {ckpt.get('format')!r})")
        diffs = self.config.resume_differences(ckpt.get("config", {}))
        if diffs:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ValueError(f"cannot resume from {source}: the training config changed ({lines})")
        if "frozen_fingerprint" in ckpt and not _same_fingerprint(ckpt["frozen_fingerprint"], self.fingerprint):
            raise CheckpointError(
                f"cannot resume from {source}: the model's frozen weights differ from those it was trained "
                "on (another pretrained --checkpoint or seed?)")
        load_trainable_state_dict(self.model, ckpt["model"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.batch_in_epoch, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        self.train_time = ckpt.get("train_time", 0.0)
        self.best, self.last_metrics = ckpt.get("best"), ckpt.get("last_metrics")
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(
                f"{source} was written by {len(rng)} process(es), this run has {self.dist.world_size}: "
                "RNG states are re-seeded, so the continuation is not bit-identical", stacklevel=2)
            seed_everything(self.config.seed + 7919 * self.step + self.dist.rank)

    # ------------------------------------------------------------------------------------- training
    def _losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        losses = {}
        for name, spec in self.tasks.items():
            if name not in outputs:
                raise KeyError(f"the model returned no output for task {name!r} (got {sorted(outputs)})")
            if name not in batch:
                raise KeyError(f"the batch has no target for task {name!r} (keys {sorted(batch)})")
            losses[name] = spec.loss(outputs[name].float(), batch[name])
        if self.penalty_fn is not None and self.config.orth_weight > 0:
            losses["orthogonality"] = self.penalty_fn(self.model).float()
        return losses

    def _weighted(self, losses: Mapping[str, Tensor]) -> Tensor:
        total = 0.0
        for name, value in losses.items():
            w = self.config.orth_weight if name == "orthogonality" else self.config.task_weight(name)
            total = total + w * value
        return total

    def _nonfinite(self, what: str, names: list[str], values: Tensor, epoch: int, batch: int) -> str:
        bad = [f"{n} = {v:g}" for n, v in zip(names, values.tolist()) if not math.isfinite(v)]
        return (f"non-finite {what} at step {self.step + 1} (epoch {epoch + 1}, batch {batch + 1}): "
                f"{', '.join(bad)}")

    def _start(self, resume: bool | str | Path) -> None:
        """Fresh start or resume, the same on every rank."""
        cfg = self.config
        ckpt_path = None
        if resume:
            ckpt_path = Path(resume) if isinstance(resume, (str, Path)) else self.last_path
            if ckpt_path is None:
                raise ValueError("resume=True needs an out_dir (or pass the checkpoint path)")
            if not ckpt_path.exists():
                if self.is_main:
                    print(f"[tensoradapt] no checkpoint at {ckpt_path}: starting from scratch", flush=True)
                ckpt_path = None
        elif self.last_path is not None and self.last_path.exists():
            raise FileExistsError(
                f"{self.last_path} exists: resume it (--resume) or choose another output directory")
        if ckpt_path is not None:
            self.load_state(load_checkpoint(ckpt_path), source=str(ckpt_path))
            self.logger.rewind(self.step)
            self.logger.log("resume", step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                            checkpoint=str(ckpt_path))
        else:
            seed_everything(cfg.seed + self.dist.rank)
            self.logger.reset()
            self.logger.log("start", step=0, world_size=self.dist.world_size, device=str(self.device),
                            trainable_params=self.num_trainable, total_steps=self.total_steps,
                            config=cfg.to_dict(), extra=self.extra_state)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_json(self.out_dir / CONFIG)
        barrier()

    @contextlib.contextmanager
    def _determinism(self):
        """Deterministic algorithms while this trainer runs; the caller's setting is restored after."""
        before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
        if self.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0])
            torch.backends.cudnn.benchmark = before[1]

    def fit(self, resume: bool | str | Path = False) -> dict[str, Any]:
        """Train for `config.epochs` (continuing a checkpoint if `resume`); return a summary dict."""
        with self._determinism():
            return self._fit(resume)

    def _fit(self, resume: bool | str | Path) -> dict[str, Any]:
        cfg = self.config
        self._start(resume)
        while self.epoch < cfg.epochs:
            self._train_epoch()
            self.epoch += 1
            self.batch_in_epoch = 0
            if self.val_data is not None and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                metrics = self.evaluate()
                self.last_metrics = metrics
                self.logger.log("eval", step=self.step, epoch=self.epoch, **metrics)
                self._update_best(metrics)
            self.save()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "epochs": self.epoch, "steps": self.step, "skipped_steps": self.skipped_steps,
            "train_time_s": self.train_time, "metrics": self.last_metrics, "best": self.best,
            "trainable_params": self.num_trainable, "world_size": self.dist.world_size,
        }

    def _score(self, metrics: Mapping[str, float]) -> float:
        """Higher is better."""
        if self.config.best_metric == "loss":
            return -metrics["loss"]
        t, m = self.config.best_metric.split("/")
        return self.tasks[t].metrics[m] * metrics[self.config.best_metric]

    def _update_best(self, metrics: dict[str, float]) -> None:
        score = self._score(metrics)
        if math.isfinite(score) and (self.best is None or score > self.best["score"]):
            self.best = {"score": score, "metric": self.config.best_metric, "epoch": self.epoch,
                         "step": self.step, "metrics": metrics}
            self._save_best(metrics)

    def _train_epoch(self) -> None:
        cfg = self.config
        epoch, start = self.epoch, self.batch_in_epoch
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start * cfg.batch_size)
        self.loader_generator.manual_seed(cfg.seed * 1_000_003 + epoch)  # worker seeds, not global RNG
        if isinstance(self.train_source, SampleSeededDataset):
            self.train_source.epoch = epoch
        self.model.train()
        names = list(self.tasks) + (["orthogonality"] if self.penalty_fn is not None and cfg.orth_weight > 0 else [])
        bar = tqdm(total=self.batches_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (self.is_main and cfg.progress), dynamic_ncols=True, leave=False)
        group_sum = torch.zeros(len(names), dtype=torch.float64)
        group_n, group_bad = 0, False
        t0 = time.perf_counter()
        for b, batch in enumerate(self.train_loader, start=start):
            g_start = (b // cfg.grad_accum) * cfg.grad_accum
            g_size = min(cfg.grad_accum, self.batches_per_epoch - g_start)
            last_in_group = b == g_start + g_size - 1
            batch = _move(batch, self.device)
            sync = contextlib.nullcontext() if (self.ddp is None or last_in_group) else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    outputs = self.forward_model(batch[cfg.input_key])
                losses = self._losses(outputs, batch)
                values = torch.stack([losses[n].detach().double().cpu() for n in names])
                values = all_reduce_sum(values.to(self.device) if self.device.type == "cuda" else values)
                values = values.cpu() / self.dist.world_size
                if not torch.isfinite(values).all():
                    msg = self._nonfinite("loss", names, values, epoch, b)
                    if not cfg.skip_nonfinite:
                        raise NonFiniteLossError(msg + " (pass --skip-nonfinite to skip such steps)")
                    group_bad = True
                # Backward even a skipped step's loss: DDP's reducer expects one backward per forward;
                # the (non-finite) gradients are dropped with the whole step below.
                (self._weighted(losses) / g_size).backward()
                if not group_bad:
                    group_sum += values
                    group_n += 1
            bar.update(1)
            if not last_in_group:
                continue
            grad_norm = self._clip_and_norm() if not group_bad else float("nan")
            if not group_bad and not math.isfinite(grad_norm):
                msg = self._nonfinite("gradient norm", ["grad_norm"], torch.tensor([grad_norm]), epoch, b)
                if not cfg.skip_nonfinite:
                    raise NonFiniteLossError(msg + " (pass --skip-nonfinite to skip such steps)")
                group_bad = True
            if group_bad:
                self.skipped_steps += 1
                self.logger.log("skip", step=self.step + 1, epoch=epoch + 1, message=msg)
                if self.is_main:
                    tqdm.write(f"[tensoradapt] skipped: {msg}")
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                self.scheduler.step()
            self.step += 1
            self.batch_in_epoch = b + 1
            now = time.perf_counter()
            self.train_time += now - t0
            step_time, t0 = now - t0, now
            if not group_bad:
                mean = (group_sum / max(group_n, 1)).tolist()
                rec = {"loss": sum(
                    (cfg.orth_weight if n == "orthogonality" else cfg.task_weight(n)) * v
                    for n, v in zip(names, mean))}
                rec.update({f"loss/{n}": v for n, v in zip(names, mean)})
                if self.step % cfg.log_every == 0 or self.batch_in_epoch == self.batches_per_epoch:
                    self.logger.log("train", step=self.step, epoch=epoch + 1, lr=lr, grad_norm=grad_norm,
                                    step_time=step_time, **rec)
                bar.set_postfix(loss=_fmt(rec["loss"]), lr=f"{lr:.2e}", refresh=False)
            group_sum.zero_()
            group_n, group_bad = 0, False
            for cb in self.callbacks:
                cb(self)
            if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0 and self.batch_in_epoch < self.batches_per_epoch:
                self.save()
                t0 = time.perf_counter()
        bar.close()

    def _clip_and_norm(self) -> float:
        params = [p for _, p in self.trainable if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, data: Dataset | None = None) -> dict[str, float]:
        """Validation loss ('loss', 'loss/<task>') and every task metric ('<task>/<metric>')."""
        data = data if data is not None else self.val_data
        if data is None:
            raise ValueError("no validation data")
        cfg = self.config
        meters = {name: spec.new_meter() for name, spec in self.tasks.items()}
        modes = {_meter_reduction(m) for m in meters.values()}
        shard = self.dist.world_size == 1 or None not in modes
        run_here = shard or self.is_main
        names = list(self.tasks)
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # per-task loss * n, then n
        was_training = self.model.training
        self.model.eval()
        if run_here:
            sampler = _ShardSampler(len(data), self.dist.rank, self.dist.world_size) if shard else None
            loader = DataLoader(data, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=sampler,
                                shuffle=False, num_workers=cfg.num_workers, collate_fn=self.collate_fn)
            for batch in tqdm(loader, desc="eval", disable=not (self.is_main and cfg.progress),
                              dynamic_ncols=True, leave=False):
                batch = _move(batch, self.device)
                with self._autocast():
                    outputs = self.model(batch[cfg.input_key])
                n = batch[cfg.input_key].shape[0]
                for i, name in enumerate(names):
                    logits = outputs[name].float()
                    sums[i] += float(self.tasks[name].loss(logits, batch[name])) * n
                    meters[name].update(logits, batch[name])
                sums[-1] += n
        if self.dist.world_size > 1:
            if shard:
                self._reduce_meters(meters)
                sums = all_reduce_sum(sums.to(self.device) if self.device.type == "cuda" else sums).cpu()
            else:
                barrier()
        self.model.train(was_training)
        metrics: dict[str, float] = {}
        if shard or self.is_main:
            count = max(float(sums[-1]), 1.0)
            total = 0.0
            for i, name in enumerate(names):
                metrics[f"loss/{name}"] = float(sums[i]) / count
                total += cfg.task_weight(name) * metrics[f"loss/{name}"]
                for k, v in meters[name].compute().items():
                    metrics[f"{name}/{k}"] = float(v)
            metrics = {"loss": total, **metrics}
        if self.dist.world_size > 1 and not shard:
            metrics = broadcast_object(metrics)
        return metrics

    def _sum_across_ranks(self, t: Tensor) -> Tensor:
        dt = t.dtype
        buf = t.detach().to(torch.float64 if dt.is_floating_point else torch.int64).clone()
        buf = buf.to(self.device) if self.device.type == "cuda" else buf
        dist.all_reduce(buf)
        return buf.cpu().to(dt)

    def _reduce_meters(self, meters: Mapping[str, Any]) -> None:
        for meter in meters.values():
            mode = _meter_reduction(meter)
            if mode == "all_reduce":
                meter.all_reduce()
            elif mode == "tensor":
                meter.load_state(self._sum_across_ranks(torch.as_tensor(meter.state())))
            elif mode == "state_dict":
                meter.load_state_dict({k: self._sum_across_ranks(torch.as_tensor(v))
                                       for k, v in meter.state_dict().items()})
