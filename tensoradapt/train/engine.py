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

Pieces: sampling.py (which samples each rank sees), evaluation.py (sharded evaluation), checkpoint.py
(files, trainable state, RNG), optim.py / schedule.py, jsonl.py (the log), distributed.py.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # not tqdm.auto: in notebooks that wants ipywidgets (and warns without them)

from ..mtl.metrics import task_losses
from .._utils import frozen_fingerprint
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .evaluation import evaluate_tasks, move_to
from .jsonl import JsonlLogger
from .optim import build_optimizer, param_groups
from .resume import BEST, CONFIG, LAST, LOG, ResumableTrainerMixin
from .sampling import ResumableDistributedSampler, SampleSeededDataset
from .schedule import build_scheduler

__all__ = ["Trainer", "NonFiniteLossError", "LAST", "BEST", "LOG", "CONFIG"]


class NonFiniteLossError(FloatingPointError):
    """A loss (or the gradient norm) became NaN/inf; the message names the step and the task."""


# --------------------------------------------------------------------------------------------- Trainer
class Trainer(ResumableTrainerMixin):
    """Train `model` on `tasks` with `config`; checkpoints, logs and the config go to `out_dir`.

    Args:
        model: returns {task: logits (B, C_t, ...)} for `model(batch[config.input_key])`.
        tasks: {name: task spec} (see the module doc); the loss is sum_t w_t * loss_t + orth_weight * penalty.
        train_data / val_data: datasets of dict items; `val_data=None` skips evaluation.
        penalty_fn: `penalty_fn(model) -> 0-dim tensor`; default `tensoradapt.orthogonality_penalty`
            with `terms=config.orth_terms` (used only when `config.orth_weight > 0`).
        extra_state: JSON-able dict stored in every checkpoint (e.g. the model's build arguments).
        callbacks: `fn(trainer)` called after every optimiser step (trainer.step is the step count).
        dist_info: from `init_distributed`; default: join torchrun's group if there is one.
        param_groups_by: named predicates `(param name, param) -> bool` that `config.lr_scale` refers to
            (e.g. {"delta": ..., "decoder": ...}); a parameter takes the multiplier of the first that matches.
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
        param_groups_by: Mapping[str, Callable[[str, Tensor], bool]] | None = None,
    ) -> None:
        self.config = cfg = config if config is not None else TrainConfig()
        self.tasks = dict(tasks)
        cfg.check_tasks(self.tasks)
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
            from ..regularizers import orthogonality_penalty

            penalty_fn = functools.partial(orthogonality_penalty, terms=cfg.orth_terms)
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

        # Optimiser: no weight decay on 1-d parameters (norms, biases); `config.lr_scale` multiplies the lr of
        # the parameters a named predicate of `param_groups_by` selects (the first that matches).
        rules = dict(param_groups_by or {})
        unknown = sorted(set(cfg.lr_scale) - set(rules))
        if unknown:
            raise ValueError(f"lr_scale names unknown parameter group(s) {unknown}; the groups are {sorted(rules)}")
        # every rule takes part in the matching (multiplier 1 unless given), so that a parameter is never
        # counted in a later group it also matches (mSAM's deltas live under the encoder's names)
        lr_scale = {name: (rule, cfg.lr_scale.get(name, 1.0)) for name, rule in rules.items()} if cfg.lr_scale else {}
        groups = param_groups(self.trainable, cfg.weight_decay, lr_scale=lr_scale)
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
        self.train_time = 0.0       # seconds in training steps, summed over every process of the run
        self.start_step = 0         # the step this process started from (> 0: resumed)
        self.best: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] | None = None
        self.logger = JsonlLogger(self.out_dir / LOG if self.out_dir else os.devnull,
                                  enabled=self.dist.is_main and self.out_dir is not None)

    # ------------------------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------- training
    def _losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        losses = task_losses(outputs, batch, self.tasks)
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
            "train_time_s": self.train_time, "resumed_at_step": self.start_step,
            "metrics": self.last_metrics, "best": self.best,
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
            batch = move_to(batch, self.device)
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
                bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{lr:.2e}", refresh=False)
            group_sum.zero_()
            group_n, group_bad = 0, False
            for cb in self.callbacks:
                cb(self)
            mid_epoch = self.batch_in_epoch < self.batches_per_epoch
            if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0 and mid_epoch:
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
    def evaluate(self, data: Dataset | None = None) -> dict[str, float]:
        """Validation loss ('loss', 'loss/<task>') and every task metric ('<task>/<metric>')."""
        data = data if data is not None else self.val_data
        if data is None:
            raise ValueError("no validation data")
        cfg = self.config
        return evaluate_tasks(
            self.model, self.tasks, data, batch_size=cfg.eval_batch_size or cfg.batch_size, dist_info=self.dist,
            input_key=cfg.input_key, task_weight=cfg.task_weight, num_workers=cfg.num_workers,
            collate_fn=self.collate_fn, autocast=self._autocast, progress=cfg.progress,
        )
