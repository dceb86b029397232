#!/usr/bin/env python
"""Train and evaluate a multi-task SAM (mSAM) with one adapter configuration on NYUv2-style data.

    python experiments/sam_mtl.py             # TA-LoRA (Tucker 4,8,8) on the pretrained tiny SAM, synthetic
                                              # scenes, 5 epochs: ~2.5 min on 2 idle CPU cores, ~6 min the
                                              # first time (builds the scenes and the tiny SAM checkpoint)
    python experiments/sam_mtl.py --decomp lora --out runs/sam_mtl/lora          # LoRA-STL baseline
    python experiments/sam_mtl.py --decomp tucker --baseline runs/sam_mtl/lora/results.json   # + delta-m
    python experiments/sam_mtl.py --model vit_b --checkpoint sam_vit_b_01ec64.pth \\
        --data nyuv2 --data-root data/nyuv2 --epochs 100 --batch-size 4 --device cuda
    torchrun --nproc_per_node 2 experiments/sam_mtl.py ...         # DDP (gloo on CPU, nccl on CUDA)
    python experiments/sam_mtl.py ... --resume                     # continue a killed run from out/last.pt

Writes into --out: results.json (per-task metrics, delta-m against --baseline, trainable parameters,
wall time, the config), loss_curves.png, predictions.png, run_config.json, train_config.json,
log.jsonl, last.pt / best.pt (trainable state only).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # `python experiments/sam_mtl.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DECOMPS = ("cp", "tucker", "tt", "lora", "shared-lora", "full", "frozen", "none")
NO_DELTA = ("full", "frozen", "none")
MODELS = ("tiny", "vit_b", "vit_l", "vit_h")
DATASETS = ("synthetic", "nyuv2")
RESULTS, RUN_CONFIG = "results.json", "run_config.json"


class UsageError(ValueError):
    """A bad argument: reported as one line, exit status 2, before any training."""


def default_rank_text(decomp: str, model: str) -> str | None:
    """build_msam's default ranks for this decomposition and SAM size, as CLI text ("4,8,8")."""
    from tensoradapt.sam import default_ranks, get_sam_config

    r = default_ranks(decomp, get_sam_config(model))
    return None if r is None else ",".join(map(str, r)) if isinstance(r, tuple) else str(r)


# -------------------------------------------------------------------------------------------- config
@dataclass
class ExperimentConfig:
    """Everything `sam_mtl.py` was asked to do (validated on construction; saved as run_config.json)."""

    decomp: str = "tucker"
    ranks: str | None = None              # None: tensoradapt.sam.default_ranks; must be None without a delta
    model: str = "tiny"
    checkpoint: str | None = None         # None: the pretrained tiny SAM (built on first use) for --model tiny
    data: str = "synthetic"
    data_root: str | None = None
    tasks: tuple[str, ...] = ("semantic", "depth", "normal")
    image_size: tuple[int, int] | None = None   # (H, W) the data are resized to; None: per model default
    train_size: int | None = None         # use only the first N training / validation samples
    val_size: int | None = None
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_ratio: float = 0.05
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    qkv: str = "qkv"
    scale: float = 0.5
    dropout: float = 0.1
    orth_weight: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)
    augment: bool = True
    amp: str = "auto"
    compile: bool = False
    eval_every: int = 1
    ckpt_every: int = 0                   # optimiser steps between mid-epoch checkpoints (0: epoch ends only)
    skip_nonfinite: bool = False
    num_workers: int = 0
    device: str = "auto"
    threads: int = 0                      # torch intra-op threads; 0: auto (1 for tiny on CPU, else torch's)
    out: str | None = None                # None: runs/sam_mtl/<decomp>-seed<seed>
    baseline: str | None = None           # results.json of the single-task baseline (e.g. the lora run)
    num_figures: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        from tensoradapt.deltas import parse_ranks

        if self.decomp not in DECOMPS:
            raise UsageError(f"--decomp must be one of {', '.join(DECOMPS)}; got {self.decomp!r}")
        if self.model not in MODELS:
            raise UsageError(f"--model must be one of {', '.join(MODELS)}; got {self.model!r}")
        if self.decomp in NO_DELTA:
            if self.ranks is not None:
                raise UsageError(f"--ranks does not apply to --decomp {self.decomp} (it has no task delta)")
        else:
            if self.ranks is None:
                self.ranks = default_rank_text(self.decomp, self.model)
            self.ranks = str(self.ranks)
            try:
                parse_ranks(self.decomp, self.ranks)
            except ValueError as e:
                raise UsageError(f"--ranks: {e}") from None
        if self.data not in DATASETS:
            raise UsageError(f"--data must be one of {', '.join(DATASETS)}; got {self.data!r}")
        if self.data == "nyuv2" and not self.data_root:
            raise UsageError("--data nyuv2 needs --data-root (the folder holding train/ and val/)")
        if self.data_root is not None:
            root = Path(self.data_root)
            if not root.is_dir():
                raise UsageError(f"--data-root {root} does not exist or is not a directory")
            missing = [s for s in ("train", "val") if not (root / s / "image").is_dir()]
            if missing and self.data == "nyuv2":
                raise UsageError(f"--data-root {root} has no {' / '.join(s + '/image' for s in missing)} folder "
                                 "(expected the preprocessed NYUv2 .npy layout)")
        if self.checkpoint not in (None, "none") and not Path(self.checkpoint).is_file():
            raise UsageError(f"--checkpoint {self.checkpoint} does not exist")
        self.tasks = tuple(self.tasks)
        try:
            from tensoradapt.mtl import get_tasks

            get_tasks(self.tasks)
        except ValueError as e:
            raise UsageError(f"--tasks: {e}") from None
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) <= 0:
                raise UsageError(f"--image-size must be H,W with positive ints; got {self.image_size}")
        for name in ("train_size", "val_size"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive; got {v}")
        if not self.qkv or any(c not in "qkv" for c in self.qkv) or len(set(self.qkv)) != len(self.qkv):
            raise UsageError(f"--qkv must be a non-empty subset of 'qkv'; got {self.qkv!r}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise UsageError(f"--scale must be a positive number; got {self.scale}")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1); got {self.dropout}")
        self.task_weights = {str(k): float(v) for k, v in dict(self.task_weights).items()}
        unknown = sorted(set(self.task_weights) - set(self.tasks))
        if unknown:
            raise UsageError(f"--task-weights names unknown task(s) {unknown}; tasks are {list(self.tasks)}")
        if self.baseline is not None:
            p = Path(self.baseline)
            if not p.is_file():
                raise UsageError(f"--baseline {p} does not exist (give the results.json of a finished run)")
            try:
                if "metrics" not in json.loads(p.read_text()):
                    raise ValueError
            except ValueError:
                raise UsageError(f"--baseline {p} is not a sam_mtl results.json (no 'metrics')") from None
        if self.out is None:
            self.out = str(Path("runs") / "sam_mtl" / f"{self.decomp}-seed{self.seed}")
        if self.threads < 0:
            raise UsageError(f"--threads must be >= 0; got {self.threads}")
        if self.num_figures < 0:
            raise UsageError(f"--num-figures must be >= 0; got {self.num_figures}")
        try:
            self.train_config()
        except ValueError as e:
            msg = str(e)
            for f in dataclasses.fields(self):
                if msg.startswith(f.name + " "):
                    msg = "--" + f.name.replace("_", "-") + msg[len(f.name):]
            raise UsageError(msg) from None

    def parsed_ranks(self):
        from tensoradapt.deltas import parse_ranks

        return None if self.ranks is None else parse_ranks(self.decomp, self.ranks)

    def train_config(self):
        from tensoradapt.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.weight_decay, schedule=self.schedule, warmup_ratio=self.warmup_ratio,
            task_weights=self.task_weights, orth_weight=self.orth_weight, grad_accum=self.grad_accum,
            max_grad_norm=self.max_grad_norm, amp=self.amp, compile=self.compile, eval_every=self.eval_every,
            ckpt_every_steps=self.ckpt_every, seed=self.seed, skip_nonfinite=self.skip_nonfinite,
            num_workers=self.num_workers, progress=self.progress, device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        return cls(**d)


# ------------------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _weights(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected task=weight[,task=weight...], got {text!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    d = ExperimentConfig.__dataclass_fields__
    p = _Parser(prog="sam_mtl.py", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    a = p.add_argument
    a("--decomp", default="tucker", help=f"adapter: {', '.join(DECOMPS)} (default tucker = TA-LoRA)")
    a("--ranks", default=None, help="decomposition ranks, e.g. 4,32,32 (tucker: r_task,r_out,r_in), 32 (cp, "
      "lora, shared-lora), 16,16 (tt); default: tucker 4,8,8 / cp 8 / tt 4,8 / lora 8 for tiny, the paper's "
      "4,32,32 / 32 / 16,16 / 32 for vit_*")
    a("--model", default="tiny", help=f"SAM size: {', '.join(MODELS)} (default tiny)")
    a("--checkpoint", default=None, help="official-format SAM checkpoint of that size; 'none' = random init "
      "(default: the pretrained tiny SAM, built on first use, for --model tiny)")
    a("--data", default="synthetic", help="synthetic (generated on first use) or nyuv2")
    a("--data-root", default=None, help="dataset folder with train/ and val/ (.npy layout)")
    a("--tasks", default=",".join(d["tasks"].default), help="comma-separated task names")
    a("--image-size", type=_ints, default=None, help="H,W the samples are resized to (default per model)")
    a("--train-size", type=int, default=None, help="use only the first N training samples")
    a("--val-size", type=int, default=None, help="use only the first N validation samples")
    a("--epochs", type=int, default=d["epochs"].default)
    a("--batch-size", type=int, default=d["batch_size"].default, help="per process")
    a("--lr", type=float, default=d["lr"].default)
    a("--optimizer", default=d["optimizer"].default, help="adamw, adam or sgd (momentum 0.9)")
    a("--weight-decay", type=float, default=d["weight_decay"].default)
    a("--schedule", default=d["schedule"].default, help="constant, linear or cosine (after warm-up)")
    a("--warmup-ratio", type=float, default=d["warmup_ratio"].default)
    a("--grad-accum", type=int, default=d["grad_accum"].default)
    a("--max-grad-norm", type=float, default=d["max_grad_norm"].default, help="0 disables clipping")
    a("--seed", type=int, default=d["seed"].default)
    a("--qkv", default=d["qkv"].default, help="which of q, k, v get a delta")
    a("--scale", type=float, default=d["scale"].default)
    a("--dropout", type=float, default=d["dropout"].default)
    a("--orth-weight", type=float, default=d["orth_weight"].default, help="orthogonality penalty weight")
    a("--task-weights", type=_weights, default={}, help="e.g. semantic=1,depth=0.5,normal=1")
    a("--no-augment", dest="augment", action="store_false", help="no random scale-crop / flip")
    a("--amp", default=d["amp"].default, help="auto (bf16 on CUDA), bf16 or off")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--eval-every", type=int, default=d["eval_every"].default, help="epochs between evaluations")
    a("--ckpt-every", type=int, default=0, help="also checkpoint every N steps within an epoch")
    a("--skip-nonfinite", action="store_true", help="skip steps with a NaN/inf loss instead of stopping")
    a("--num-workers", type=int, default=d["num_workers"].default)
    a("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a("--threads", type=int, default=0, help="torch intra-op threads; 0 (default): 1 for the tiny model on "
      "CPU (its ops are too small to gain from more, and on a shared CPU 2 oversubscribed threads ran 4-9x "
      "slower), torch's default otherwise")
    a("--out", default=None, help="output folder (default runs/sam_mtl/<decomp>-seed<seed>)")
    a("--resume", action="store_true", help="continue from <out>/last.pt")
    a("--baseline", default=None, help="results.json of the single-task baseline for delta-m (e.g. the lora run)")
    a("--num-figures", type=int, default=d["num_figures"].default, help="validation images in predictions.png")
    a("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig) if hasattr(args, f.name)}
    kw["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if kw.get("max_grad_norm") == 0:
        kw["max_grad_norm"] = None
    return ExperimentConfig(**kw)


# --------------------------------------------------------------------------------------------- pieces
# Fields that may change between a run and its --resume (they do not change what is computed).
RESUME_TOLERANT = {"progress", "num_workers", "device", "out", "baseline", "num_figures", "ckpt_every", "threads"}


def _log(msg: str, main: bool = True) -> None:
    if main:
        print(f"[sam_mtl] {msg}", flush=True)


def default_image_size(model: str) -> tuple[int, int]:
    """Data resolution per model: NYUv2's 3:4 aspect with the long side at the SAM input size."""
    from tensoradapt.sam.config import get_sam_config

    side = get_sam_config(model).image_size
    return (side * 3 // 4, side)


def resolve_data_root(cfg: ExperimentConfig, main: bool) -> Path:
    """The dataset folder; the synthetic one is generated (or reused from the cache) here."""
    if cfg.data == "nyuv2":
        return Path(cfg.data_root)
    from tensoradapt.data import ensure_synthetic

    return ensure_synthetic(cfg.data_root, progress=main and cfg.progress)


def resolve_checkpoint(cfg: ExperimentConfig, main: bool) -> str | None:
    if cfg.checkpoint == "none":
        return None
    if cfg.checkpoint is not None:
        return cfg.checkpoint
    if cfg.model == "tiny":
        from tensoradapt.sam.pretrained import ensure_tiny_sam_checkpoint

        return str(ensure_tiny_sam_checkpoint(progress=main and cfg.progress))
    _log(f"warning: no --checkpoint for --model {cfg.model}: the SAM weights are random", main)
    return None


def build_model(cfg: ExperimentConfig, tasks, checkpoint: str | None):
    import torch

    from tensoradapt.sam import build_msam

    torch.manual_seed(cfg.seed)  # the deltas' / heads' random init
    return build_msam(
        cfg.model, {name: spec.channels for name, spec in tasks.items()}, checkpoint=checkpoint,
        decomp=cfg.decomp, ranks=cfg.parsed_ranks(), qkv=cfg.qkv, scale=cfg.scale, dropout=cfg.dropout,
        train_norms=True,
    )


def build_datasets(cfg: ExperimentConfig, root: Path):
    from torch.utils.data import Subset

    from tensoradapt.data import NYUv2

    size = cfg.image_size or default_image_size(cfg.model)
    train = NYUv2(root, "train", augment=cfg.augment, size=size)
    val = NYUv2(root, "val", augment=False, size=size)
    if cfg.train_size is not None and cfg.train_size < len(train):
        train = Subset(train, range(cfg.train_size))
    if cfg.val_size is not None and cfg.val_size < len(val):
        val = Subset(val, range(cfg.val_size))
    return train, val


def parameter_counts(model) -> dict[str, int]:
    """Trainable / total / delta counts (and mSAM's per-part breakdown when the model is an mSAM)."""
    from tensoradapt import task_deltas

    try:
        from tensoradapt.sam import MultiTaskSAM, parameter_breakdown

        if isinstance(model, MultiTaskSAM):
            return parameter_breakdown(model)
    except ImportError:
        pass
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    delta = sum(p.numel() for _, d in task_deltas(model) for p in d.parameters())
    return {"trainable": trainable, "total": total, "delta": delta}


def nest_metrics(flat: dict[str, float] | None) -> dict[str, dict[str, float]]:
    """{"semantic/mIoU": v, "loss/depth": l} -> {"semantic": {"mIoU": v}} (losses dropped)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in (flat or {}).items():
        task, sep, metric = key.partition("/")
        if sep and task != "loss":
            out.setdefault(task, {})[metric] = value
    return out


def compute_delta_m(metrics: dict[str, dict[str, float]], baseline: str | None, tasks) -> dict[str, Any] | None:
    if baseline is None:
        return None
    from tensoradapt.mtl import delta_m

    base = json.loads(Path(baseline).read_text())
    out = {"value": None, "baseline": str(baseline), "baseline_decomp": base.get("config", {}).get("decomp"),
           "baseline_ranks": base.get("config", {}).get("ranks")}
    try:
        out["value"] = float(delta_m(metrics, base["metrics"], tasks))
    except ValueError as e:  # another task set, or a baseline metric at 0 (relative change undefined)
        out["error"] = str(e)
    return out


def write_figures(cfg: ExperimentConfig, model, tasks, val, out: Path, device) -> list[str]:
    """loss_curves.png and predictions.png (image / ground truth / prediction on a few val images)."""
    import torch
    from torch.utils.data import DataLoader

    from tensoradapt.train.plots import plot_loss_curves, plot_predictions

    title = f"mSAM {cfg.model} · {cfg.decomp}" + (f" ({cfg.ranks})" if cfg.ranks else "")
    paths = [plot_loss_curves(out / "log.jsonl", out / "loss_curves.png", title=title)]
    n = min(cfg.num_figures, len(val))
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


def _median_step_time(log: Path) -> float | None:
    from tensoradapt.train import read_jsonl

    times = sorted(r["step_time"] for r in read_jsonl(log) if r.get("event") == "train" and "step_time" in r)
    return times[len(times) // 2] if times else None


# ------------------------------------------------------------------------------------------------ run
def run(cfg: ExperimentConfig, resume: bool = False) -> dict[str, Any]:
    """Train + evaluate one configuration; returns (rank 0: and writes) the results dict.

    Raises UsageError for anything wrong with the request, before training starts.
    """
    t_start = time.perf_counter()
    import torch

    from tensoradapt.mtl import get_tasks
    from tensoradapt.train import LAST, CheckpointError, Trainer, cleanup_distributed, init_distributed
    from tensoradapt.train.distributed import barrier
    from tensoradapt._utils import atomic_write_text

    try:
        info = init_distributed(cfg.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
    main = info.is_main
    threads = cfg.threads or (1 if info.device.type == "cpu" and cfg.model == "tiny" else 0)
    if threads:
        torch.set_num_threads(threads)
    out = Path(cfg.out)
    if (out / LAST).exists() and not resume:
        raise UsageError(f"{out / LAST} exists: add --resume to continue it, or choose another --out")
    if resume and (out / RUN_CONFIG).exists():
        stored = json.loads((out / RUN_CONFIG).read_text())
        mine = cfg.to_dict()
        diffs = sorted(k for k in mine if k not in RESUME_TOLERANT and k in stored and stored[k] != mine[k])
        if diffs:
            raise UsageError("--resume with other settings than the run in {}: {}".format(
                out, ", ".join(f"{k} {stored[k]!r} -> {mine[k]!r}" for k in diffs)))
    tasks = get_tasks(cfg.tasks)

    # First-use builds (pretrained tiny SAM, synthetic scenes): rank 0 first, the others then find them cached.
    for turn in ((True,) if not info.distributed else (True, False)):
        if main == turn:
            checkpoint = resolve_checkpoint(cfg, main)
            try:
                model = build_model(cfg, tasks, checkpoint)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
            root = resolve_data_root(cfg, main)
            try:
                train, val = build_datasets(cfg, root)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(f"data: {str(e).splitlines()[0]}") from None
        barrier()
    setup_time = time.perf_counter() - t_start
    counts = parameter_counts(model)
    _log(f"{cfg.decomp} ranks={cfg.ranks} model={cfg.model} data={cfg.data} ({len(train)} train / {len(val)} val, "
         f"{tuple(cfg.image_size or default_image_size(cfg.model))}) on {info.device} x{info.world_size}; "
         f"trainable {counts['trainable']:,} of {counts['total']:,} params; setup {setup_time:.1f}s", main)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")

    trainer = Trainer(model, tasks, train, val, cfg.train_config(), out_dir=out,
                      extra_state={"run_config": cfg.to_dict()}, dist_info=info)
    try:
        summary = trainer.fit(resume=resume)
    except CheckpointError as e:
        raise UsageError(str(e)) from None

    results: dict[str, Any] = {}
    if main:
        metrics = nest_metrics(summary["metrics"])
        best = summary["best"]
        results = {
            "metrics": metrics,
            "val_loss": {k: v for k, v in (summary["metrics"] or {}).items() if k.startswith("loss")},
            "delta_m": compute_delta_m(metrics, cfg.baseline, tasks),
            "best": best and {"epoch": best["epoch"], "step": best["step"], "metric": best["metric"],
                              "metrics": nest_metrics(best["metrics"])},
            "main_metrics": {t: {"metric": s.main_metric, "value": metrics.get(t, {}).get(s.main_metric),
                                 "higher_is_better": s.metrics[s.main_metric] > 0} for t, s in tasks.items()},
            "params": counts,
            "epochs": summary["epochs"], "steps": summary["steps"], "skipped_steps": summary["skipped_steps"],
            "train_time_s": summary["train_time_s"], "setup_time_s": setup_time,
            "median_step_time_s": _median_step_time(out / "log.jsonl"),
            "device": str(info.device), "world_size": info.world_size, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "config": cfg.to_dict(), "train_config": cfg.train_config().to_dict(),
        }
        try:
            import matplotlib  # noqa: F401  (the `plot` extra)
        except ImportError:
            _log("matplotlib is not installed (pip install 'tensoradapt[plot]'): no figures written", main)
            results["figures"] = []
        else:
            results["figures"] = write_figures(cfg, model, tasks, val, out, info.device)
        results["wall_time_s"] = time.perf_counter() - t_start
        atomic_write_text(out / RESULTS, json.dumps(results, indent=2) + "\n")
        line = "  ".join(f"{t} {m['metric']}={m['value']:.4g}" for t, m in results["main_metrics"].items()
                         if m["value"] is not None)
        if results["delta_m"] and results["delta_m"]["value"] is not None:
            line += f"  delta_m={results['delta_m']['value']:+.2f}% vs {results['delta_m']['baseline_decomp']}"
        elif results["delta_m"]:
            line += f"  delta_m undefined: {results['delta_m']['error']}"
        _log(f"done in {results['wall_time_s']:.1f}s ({summary['steps']} steps): {line}", main)
        _log(f"wrote {out / RESULTS}", main)
    cleanup_distributed()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tensoradapt.train import NonFiniteLossError

    try:
        cfg = config_from_args(args)
        run(cfg, resume=args.resume)
    except UsageError as e:
        print(f"sam_mtl.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as e:  # the last checkpoint is intact: fix the cause, then --resume
        print(f"sam_mtl.py: error: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
