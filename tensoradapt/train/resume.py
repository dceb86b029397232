"""What a training checkpoint holds, and how a `Trainer` starts fresh or resumes from one.

`last.pt` (every epoch end, and every `ckpt_every_steps` steps): the trainable state, optimiser, scheduler,
every rank's RNG states, the progress counters, the best result so far, a fingerprint of the frozen weights
and the training config. `best.pt`: the trainable state and metrics of the best evaluation. Resuming checks
the config (outside `RESUME_TOLERANT_FIELDS`), the fingerprint and the trainable keys / shapes before
anything is loaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

from .._utils import fingerprint_mismatch
from .._utils import trainable_state_dict as _trainable_state
from .checkpoint import (
    CheckpointError, capture_rng_state, load_checkpoint, load_trainable_state_dict, restore_rng_state,
    save_checkpoint, seed_everything,
)
from .distributed import all_gather_object, barrier

__all__ = ["ResumableTrainerMixin", "LAST", "BEST", "LOG", "CONFIG", "CHECKPOINT_FORMAT"]

LAST, BEST, LOG, CONFIG = "last.pt", "best.pt", "log.jsonl", "train_config.json"
CHECKPOINT_FORMAT = 1


class ResumableTrainerMixin:
    """Checkpoint writing and resuming for `Trainer` (which sets every attribute used here: model,
    optimizer, scheduler, config, dist, the progress counters, fingerprint, logger, out_dir, ...)."""

    @property
    def last_path(self) -> Path | None:
        return self.out_dir / LAST if self.out_dir else None

    @property
    def best_path(self) -> Path | None:
        return self.out_dir / BEST if self.out_dir else None

    def state(self) -> dict[str, Any]:
        rng = all_gather_object(capture_rng_state())  # collective: every rank calls state()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": _trainable_state(self.model),
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
                "format": CHECKPOINT_FORMAT, "model": _trainable_state(self.model), "metrics": metrics,
                "epoch": self.epoch, "step": self.step, "config": self.config.to_dict(), "extra": self.extra_state,
            })

    def load_state(self, ckpt: Mapping[str, Any], source: str = "checkpoint") -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
            raise CheckpointError(f"{source} is not a resumable training checkpoint (format {ckpt.get('format')!r})")
        diffs = self.config.resume_differences(ckpt.get("config", {}))
        if diffs:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ValueError(f"cannot resume from {source}: the training config changed ({lines})")
        self._check_fingerprint(ckpt.get("frozen_fingerprint"), source)
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

    def _check_fingerprint(self, saved: Any, source: str) -> None:
        """The frozen weights must be those the checkpoint was trained on."""
        if saved is None:
            return
        if not isinstance(saved, Mapping):  # before the per-tensor format: (sum, sum of squares) pairs
            raise CheckpointError(
                f"cannot resume from {source}: it stores the frozen-weight fingerprint in an older format "
                f"({type(saved).__name__}), which this version cannot check; start a new run")
        mismatch = fingerprint_mismatch(saved, self.fingerprint)
        if mismatch:
            raise CheckpointError(
                f"cannot resume from {source}: the model's frozen weights differ from those it was trained "
                f"on: {mismatch} (another pretrained --checkpoint or seed?)")


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
            self.start_step = self.step
            self.logger.rewind(self.step)
            self.logger.log("resume", step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                            checkpoint=str(ckpt_path))
        else:
            self.start_step = 0
            seed_everything(cfg.seed + self.dist.rank)
            self.logger.reset()
            self.logger.log("start", step=0, world_size=self.dist.world_size, device=str(self.device),
                            trainable_params=self.num_trainable, total_steps=self.total_steps,
                            config=cfg.to_dict(), extra=self.extra_state)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_json(self.out_dir / CONFIG)
        barrier()
