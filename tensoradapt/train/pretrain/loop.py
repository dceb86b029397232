"""Pretrain the original SAM (tiny by default) on prompted synthetic instance masks: a fixed number of steps.

The official SAM checkpoints are far too large to fine-tune on two CPU cores, and a random-init tiny SAM
would make the adaptation experiments meaningless (there is nothing to adapt). So the *original* SAM
architecture (image encoder, prompt encoder, mask decoder; :func:`tensoradapt.sam.build_sam`) is pretrained
the way SAM was (:mod:`.objective`) on class-agnostic instance masks of synthetic indoor scenes
(:mod:`.scenes`; streams ``sam_train`` / ``sam_heldout``, never the dataset's train / val scenes), with
AdamW over the shared parameter groups (:mod:`tensoradapt.train.optim`: no weight decay on norms, biases and
position tables), gradient clipping, and a linear warm-up then cosine decay over exactly ``steps`` steps
(:mod:`tensoradapt.train.schedule`).

Reproducible: ``steps`` and ``seed`` fix everything (initial weights, scenes, batches, prompts); torch runs
one intra-op thread meanwhile (set and restored) so floating-point reductions do not depend on the machine's
core count, and the global RNG is left as it was. The same config gives the same checkpoint bytes on every
machine of a kind (same torch build and CPU instruction set).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm  # not tqdm.auto: in notebooks that wants ipywidgets

from ..._utils import atomic_write_json
from ...sam import build_sam, get_sam_config
from ..optim import build_optimizer, no_decay_1d, param_groups
from ..schedule import build_scheduler
from .artifact import CHECKPOINT_FORMAT, code_revision, report_path, write_checkpoint
from .config import PRETRAIN_VERSION, PretrainConfig
from .evaluate import evaluate_prompted_iou, heldout_scenes
from .objective import prompted_mask_loss
from .scenes import PromptScenes

__all__ = ["LOG_EVERY", "POSITION_TABLES", "no_decay_sam", "single_thread", "pretrain_tiny_sam"]

#: A history entry (the means since the previous one) every this many steps, and after step 1.
LOG_EVERY = 25
#: SAM's learned position tables (leaf parameter names): like norms and biases, they get no weight decay.
POSITION_TABLES = frozenset({"pos_embed", "rel_pos_h", "rel_pos_w"})


def no_decay_sam(name: str, p: Tensor) -> bool:
    """No weight decay on 1-d parameters (norms, biases) and on SAM's position tables."""
    return no_decay_1d(name, p) or name.rsplit(".", 1)[-1] in POSITION_TABLES


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch with one intra-op thread inside, restoring the previous count on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(sam: nn.Module, data: PromptScenes, pc: PretrainConfig, progress: bool) -> list[dict[str, Any]]:
    """`pc.steps` optimiser steps on `sam` (in place); returns the loss history."""
    sam.train()
    groups = param_groups(sam.named_parameters(), pc.weight_decay, no_decay=no_decay_sam)
    opt = build_optimizer("adamw", groups, pc.lr)
    sched = build_scheduler(opt, pc.steps, schedule="cosine", warmup_steps=pc.warmup_steps,
                            min_lr_ratio=pc.min_lr_ratio)
    g = torch.Generator().manual_seed(pc.seed + 1)
    history: list[dict[str, Any]] = []
    window: dict[str, list[float]] = {"loss": [], "focal": [], "dice": [], "train_iou": []}
    ema: float | None = None
    bar = tqdm(range(1, pc.steps + 1), desc="pretrain SAM", unit="step", disable=not progress)
    for step in bar:
        lr = opt.param_groups[0]["lr"]
        out = prompted_mask_loss(sam, data, pc, g)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if pc.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(sam.parameters(), pc.clip_norm)
        opt.step()
        sched.step()
        loss = float(out["loss"].detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss} at step {step}")
        for key in window:
            window[key].append(loss if key == "loss" else float(out[key]))
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        bar.set_postfix(loss=f"{ema:.3f}", iou=f"{out['train_iou']:.2f}", refresh=False)
        if step % LOG_EVERY == 0 or step in (1, pc.steps):
            entry: dict[str, Any] = {"step": step, "lr": lr, "threads": torch.get_num_threads()}
            entry.update({k: round(sum(v) / len(v), 5) for k, v in window.items()})
            history.append(entry)
            window = {k: [] for k in window}
    return history


def pretrain_tiny_sam(out_path: str | os.PathLike, config: PretrainConfig | None = None, progress: bool = True,
                      device: str | torch.device = "cpu", **overrides: Any) -> dict[str, Any]:
    """Pretrain SAM (``config.model``, default tiny) for ``config.steps`` steps; write the checkpoint and
    its report.

    Renders the scenes, evaluates the random-init model on the held-out scenes, trains, evaluates again,
    writes the weights atomically to `out_path` (:mod:`.artifact`) and then the JSON report beside them
    (``out_path.with_suffix(".json")``: config, seed, steps, losses, held-out IoUs, the weights' sha256).
    `overrides` replace fields of `config`. `device`: where the model trains (the scenes and every random
    draw stay on the CPU, so a seed gives the same batches anywhere; the weights' bits are the same only on
    the same kind of device). Returns the report.
    """
    device = torch.device(device)
    pc = config if config is not None else PretrainConfig()
    if overrides:
        pc = pc.replace(**overrides)
    out_path = Path(out_path)
    cfg = get_sam_config(pc.model)
    t0 = time.perf_counter()
    revision = code_revision()  # the code that trains, not whatever the work tree holds an hour later
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(pc.seed)
        sam = build_sam(cfg).to(device)
        data = PromptScenes(cfg, pc.n_scenes, seed=pc.seed, stream="sam_train", min_area_frac=pc.min_area_frac,
                            domain_gap=pc.domain_gap, masks=pc.masks, progress=progress)
        heldout = heldout_scenes(pc)
        random_init = evaluate_prompted_iou(sam, heldout, pc.eval_masks_per_scene)
        t_train = time.perf_counter()
        history = _train(sam, data, pc, progress)
        train_s = time.perf_counter() - t_train
        pretrained = evaluate_prompted_iou(sam, heldout, pc.eval_masks_per_scene)
    sha = write_checkpoint(sam.state_dict(), out_path)
    report = {
        "checkpoint": str(out_path),
        "sha256": sha,
        "format": CHECKPOINT_FORMAT,
        "version": PRETRAIN_VERSION,
        "sam_config": cfg.to_dict(),
        "pretrain_config": pc.to_dict(),
        "seed": pc.seed,
        "steps": pc.steps,
        "torch_threads": 1,
        "torch_version": torch.__version__,
        "code_revision": revision,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "input_hw": [data.h, data.w],
        "n_train_scenes": len(data),
        "n_heldout_scenes": len(heldout),
        "final_loss": history[-1]["loss"],
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "seconds_per_step": round(train_s / pc.steps, 4),
        "heldout_iou": {"pretrained": pretrained, "random_init": random_init},
        "history": history,
    }
    atomic_write_json(report_path(out_path), report)
    return report
