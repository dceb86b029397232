"""The fine-tuning recipe: train and evaluate one mSAM adapter configuration on NYUv2-style data.

    from tensoradapt.train.finetune import FinetuneConfig, run
    results = run(FinetuneConfig().updated(decomp="lora", epochs=2, out="runs/lora"))

`run` resolves the data (the synthetic scenes are generated on first use) and the SAM checkpoint (the
pretrained tiny SAM is built on first use), builds the mSAM, trains it with the engine (`Trainer`, so
`torchrun` gives DDP), and writes into `cfg.out_dir`: results.json (per-task metrics, delta-m against
`cfg.baseline`, parameter counts, times, the config), loss_curves.png, predictions.png, run_config.json,
train_config.json, log.jsonl, last.pt / best.pt (trainable state only).
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .._utils import atomic_write_json, flush_denormal
from ..sam import MultiTaskSAMBase, msam_param_groups
from .checkpoint import CheckpointError, load_checkpoint, load_trainable_state_dict
from .distributed import barrier, cleanup_distributed, init_distributed
from .engine import Trainer
from .finetune_config import (
    FINETUNE_TRAIN_DEFAULTS, PRETRAINED_MODELS, FinetuneConfig, MSamOptions, UsageError, finetune_train_config,
)
from .resume import BEST, LAST
from .results import (
    RESULTS, RUN_CONFIG, parameter_counts, rank_text, results_record, summary_line, write_figures, write_results,
)

__all__ = [
    "FinetuneConfig", "MSamOptions", "UsageError", "finetune_train_config", "run", "build_model", "ModelBuilder",
    "build_datasets", "resolve_checkpoint", "resolve_data_root", "read_run_config", "load_run", "checkpoint_sha256",
    "checkpoint_change", "RESULTS", "RUN_CONFIG",
]


def _log(msg: str, main: bool = True) -> None:
    if main:
        print(f"[sam_mtl] {msg}", flush=True)


def resolve_data_root(cfg: FinetuneConfig, main: bool = True) -> Path:
    """The dataset folder; the synthetic one is generated (or reused from the cache) here, rendered at
    `cfg.synthetic_render_size()` unless `cfg.data_root` already holds a finished one."""
    if cfg.data == "nyuv2":
        return Path(cfg.data_root)
    from ..data import ensure_synthetic
    from ..data.synthetic import synthetic_is_complete

    if cfg.data_root is not None and synthetic_is_complete(cfg.data_root):
        return Path(cfg.data_root)  # a finished synthetic dataset, at whatever size it was rendered
    height, width = cfg.synthetic_render_size()
    return ensure_synthetic(cfg.data_root, height=height, width=width, progress=main and cfg.train.progress)


def resolve_checkpoint(cfg: FinetuneConfig, main: bool = True) -> str | None:
    """The SAM checkpoint path: the given one, none ("none"), or the project's pretrained SAM of `cfg.model`
    (`PRETRAINED_MODELS`: tiny_p8's ships in the package, tiny's is built on first use)."""
    if cfg.checkpoint == "none":
        return None
    if cfg.checkpoint is not None:
        return cfg.checkpoint
    if cfg.model in PRETRAINED_MODELS:
        from .pretrain import pretrained_checkpoint

        return str(pretrained_checkpoint(cfg.model, progress=main and cfg.train.progress))
    _log(f"warning: no --checkpoint for --model {cfg.model}: the SAM weights are random", main)
    return None


def build_model(cfg: FinetuneConfig, checkpoint: str | None) -> nn.Module:
    """The mSAM of `cfg` (deltas and heads drawn from `cfg.train.seed`), frozen weights from `checkpoint`."""
    import dataclasses

    from ..sam import build_msam

    torch.manual_seed(cfg.train.seed)
    channels = {name: spec.channels for name, spec in cfg.task_specs().items()}
    return build_msam(cfg.model, channels, checkpoint=checkpoint, **dataclasses.asdict(cfg.msam))


ModelBuilder = Callable[[FinetuneConfig, "str | None"], nn.Module]


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from .pretrain.artifact import file_sha256

    return file_sha256(path)


def checkpoint_sha256(checkpoint: str | None) -> str | None:
    """sha256 of the SAM checkpoint a run starts from (None: random weights); for a folder (Hub-layout weights),
    of its files' names and sha256s. A run records it in results.json, so a later look at the run (`load_run`, a
    sweep's stale check) notices another foundation model behind the same settings, e.g. a new shipped default."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = "".join(f"{p.relative_to(path)} {checkpoint_sha256(str(p))}\n" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def build_datasets(cfg: FinetuneConfig, root: Path) -> tuple[Dataset, Dataset]:
    """(train, val) at `cfg.image_size` (default: the model's), cut to `train_size` / `val_size`, with the
    derived targets among `cfg.tasks` (`tensoradapt.data.derived`) computed per sample."""
    from ..data import NYUv2
    from ..data.derived import DERIVED

    size = cfg.image_size or cfg.default_image_size()
    derived = [t for t in cfg.tasks if t in DERIVED]  # targets made from the stored maps
    train = NYUv2(root, "train", augment=cfg.augment, size=size, derived=derived)
    val = NYUv2(root, "val", augment=False, size=size, derived=derived)
    if cfg.train_size is not None and cfg.train_size < len(train):
        train = Subset(train, range(cfg.train_size))
    if cfg.val_size is not None and cfg.val_size < len(val):
        val = Subset(val, range(cfg.val_size))
    return train, val


def read_run_config(run_dir: str | Path) -> FinetuneConfig:
    """The config a `run` recorded in `run_dir` (run_config.json)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run_dir must be a sam_mtl.py output folder")
    return FinetuneConfig.from_dict(json.loads(path.read_text()))


def checkpoint_change(cfg: FinetuneConfig, results: Mapping[str, Any]) -> tuple[str | None, str | None] | None:
    """(recorded, now): the sha256 of the SAM checkpoint a run's `results` (results.json) recorded and of the one
    `cfg` resolves to now, when they differ; None when they agree or the record predates the field."""
    if "checkpoint_sha256" not in results:
        return None
    now = checkpoint_sha256(resolve_checkpoint(cfg, main=False))
    return None if results["checkpoint_sha256"] == now else (results["checkpoint_sha256"], now)


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[FinetuneConfig, nn.Module, Dataset]:
    """(config, model in eval mode, validation split) of a `run` in `run_dir`: the model its run_config.json
    describes, frozen weights from that config's SAM checkpoint, trainable ones from best.pt or last.pt."""
    files = {"best": BEST, "last": LAST}
    if checkpoint not in files:
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if not (run_dir / files[checkpoint]).is_file():
        raise FileNotFoundError(f"{run_dir / files[checkpoint]} is missing: run_dir must be a sam_mtl.py output folder")
    sam = resolve_checkpoint(cfg, main=False)
    changed = (run_dir / RESULTS).is_file() and checkpoint_change(cfg, json.loads((run_dir / RESULTS).read_text()))
    if changed:
        raise ValueError(f"{run_dir} was trained on the SAM checkpoint with sha256 {changed[0]}, but its config now "
                         f"resolves to {sam} (sha256 {changed[1]}): pass that run's checkpoint explicitly")
    model = build_model(cfg, sam)
    load_trainable_state_dict(model, load_checkpoint(run_dir / files[checkpoint])["model"], str(run_dir))
    _, val = build_datasets(cfg, resolve_data_root(cfg, main=False))
    return cfg, model.eval(), val


def _check_resume(cfg: FinetuneConfig, out: Path, resume: bool) -> None:
    if (out / LAST).exists() and not resume:
        raise UsageError(f"{out / LAST} exists: add --resume to continue it, or choose another --out")
    if resume and (out / RUN_CONFIG).exists():
        diffs = cfg.resume_differences(json.loads((out / RUN_CONFIG).read_text()))
        if diffs:
            raise UsageError("--resume with other settings than the run in {}: {}".format(
                out, ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(diffs.items()))))


def run(cfg: FinetuneConfig, resume: bool = False, callbacks: Iterable[Callable[[Trainer], None]] = (),
        model_builder: ModelBuilder = build_model) -> dict[str, Any]:
    """Train + evaluate one configuration; returns (rank 0: and writes) the results dict.

    `callbacks` go to the `Trainer` (called after every optimiser step); `model_builder(cfg, checkpoint)`
    builds the model (default `build_model`, the mSAM). Raises `UsageError` for anything wrong with the
    request, before training starts; `NonFiniteLossError` if a loss turns NaN / inf. With
    `cfg.flush_denormal` the CPU computes subnormal floats as zero for the run (`_utils.denormal`): set first,
    so that the intra-op threads the run starts inherit it; the calling thread's flag is restored on return,
    and results.json's "denormals_flushed" says whether it was in effect.
    """
    with flush_denormal(cfg.flush_denormal) as flushed:
        return _run(cfg, resume, callbacks, model_builder, flushed)


def _run(cfg: FinetuneConfig, resume: bool, callbacks: Iterable[Callable[[Trainer], None]],
         model_builder: ModelBuilder, flushed: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    from .pretrain.artifact import code_revision

    revision = code_revision()  # the code that trains, not what the work tree holds when the run ends
    try:
        info = init_distributed(cfg.train.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
    main = info.is_main
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = cfg.out_dir
    _check_resume(cfg, out, resume)
    tasks = cfg.task_specs()

    # First-use builds (pretrained tiny SAM, synthetic scenes): rank 0 first, the others then find them cached.
    for turn in ((True,) if not info.distributed else (True, False)):
        if main == turn:
            checkpoint = resolve_checkpoint(cfg, main)
            try:
                model = model_builder(cfg, checkpoint)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(str(e).splitlines()[0] if str(e) else repr(e)) from None
            root = resolve_data_root(cfg, main)
            try:
                train, val = build_datasets(cfg, root)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(f"data: {str(e).splitlines()[0]}") from None
        barrier()
    sam_sha256 = checkpoint_sha256(checkpoint) if main else None  # before training: a bad path fails now
    setup_time = time.perf_counter() - t_start
    counts = parameter_counts(model)
    ranks = rank_text(cfg.msam_config().ranks)  # the defaults resolved
    _log(f"{cfg.msam.decomp} ranks={ranks} model={cfg.model} data={cfg.data} ({len(train)} train / {len(val)} val, "
         f"{tuple(cfg.image_size or cfg.default_image_size())}) on {info.device} x{info.world_size}; "
         f"trainable {counts['trainable']:,} of {counts['total']:,} params; setup {setup_time:.1f}s", main)
    if main:
        atomic_write_json(out / RUN_CONFIG, cfg.to_dict())

    train_cfg, groups = cfg.train, None
    if isinstance(model, MultiTaskSAMBase):
        groups = msam_param_groups(model)
    elif train_cfg.lr_scale == FINETUNE_TRAIN_DEFAULTS["lr_scale"]:
        train_cfg = train_cfg.replace(lr_scale={})  # the recipe's default multipliers name mSAM's groups
    trainer = Trainer(model, tasks, train, val, train_cfg, out_dir=out, extra_state={"run_config": cfg.to_dict()},
                      callbacks=callbacks, dist_info=info, param_groups_by=groups)
    try:
        summary = trainer.fit(resume=resume)
    except CheckpointError as e:
        raise UsageError(str(e)) from None

    results: dict[str, Any] = {}
    if main:
        results = results_record(summary, tasks, config=cfg.to_dict(), counts=counts, baseline=cfg.baseline,
                                 log=out / "log.jsonl", setup_time=setup_time, device=info.device,
                                 world_size=info.world_size)
        results["checkpoint_sha256"] = sam_sha256
        results["code_revision"] = revision  # this process's: a resumed run may have started on another
        results["denormals_flushed"] = flushed
        if hasattr(model, "msam_config"):
            results["msam_config"] = model.msam_config.to_dict()
        results["figures"] = _figures(cfg, model, tasks, val, out, info.device, ranks)
        results["wall_time_s"] = time.perf_counter() - t_start
        write_results(out, results)
        _log(f"done in {results['wall_time_s']:.1f}s ({summary['steps']} steps): {summary_line(results)}", main)
        _log(f"wrote {out / RESULTS}", main)
    cleanup_distributed()
    return results


def _figures(cfg: FinetuneConfig, model: nn.Module, tasks: Mapping[str, Any], val: Dataset, out: Path,
             device: torch.device, ranks: str | None) -> list[str]:
    try:
        import matplotlib  # noqa: F401  (the `plot` extra)
    except ImportError:
        _log("matplotlib is not installed (pip install 'tensoradapt[plot]'): no figures written")
        return []
    title = f"mSAM {cfg.model} · {cfg.msam.decomp}" + (f" ({ranks})" if ranks else "")
    return write_figures(model, tasks, val, out, device, cfg.num_figures, title)
