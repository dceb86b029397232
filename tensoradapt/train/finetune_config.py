"""What one mSAM fine-tuning run is asked to do: `FinetuneConfig`, composed of the training config
(`TrainConfig`) and the model-building options (`MSamOptions`), each field validated once, where it is
defined (the training fields by `TrainConfig`, the model's by `MSamConfig`; this module checks only the
run's own fields: data, SAM size, tasks, outputs).

Errors are `UsageError`s whose message names the CLI flag of the offending field (`--epochs must be ...`),
so `experiments/sam_mtl.py` prints them as they are.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from .._utils import dataclass_kwargs
from ..sam import DECOMPS, MSAM_PARAM_GROUPS, SAM2_CONFIGS, SAM_CONFIGS, MSamConfig, get_model_config, msam_from_config
from ..sam.config import parse_targets
from .config import TrainConfig

__all__ = [
    "UsageError", "MSamOptions", "FinetuneConfig", "finetune_train_config", "MODELS", "DATASETS", "DECOMPS",
    "FINETUNE_TRAIN_DEFAULTS", "PRETRAINED_MODELS", "flag",
]

MODELS: tuple[str, ...] = (*SAM_CONFIGS, *SAM2_CONFIGS)
#: the sizes with a project-pretrained SAM (`tensoradapt.train.pretrain.pretrained_checkpoint`), used when no
#: --checkpoint is given: tiny_p8's ships in the package (the embedded benchmark's), tiny's is built on first use
PRETRAINED_MODELS: tuple[str, ...] = ("tiny_p8", "tiny")
DATASETS: tuple[str, ...] = ("synthetic", "nyuv2")
#: the largest (H, W) synthetic scenes are rendered at (NYUv2's frames)
SYNTHETIC_MAX_HW = (288, 384)

#: where fine-tuning departs from `TrainConfig`'s defaults
FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 5, "warmup_ratio": 0.05, "max_grad_norm": 1.0, "lr": 3e-3,
    # measured on the embedded benchmark (docs/embedded_benchmark.md): the no-mask embeddings learn 10x
    # faster, the encoder's deltas (and the whole encoder, with "full") 3x slower than the decoders
    "lr_scale": {"embed": 10.0, "delta": 0.33, "encoder": 0.33},
}

#: CLI flags whose name is not the field's
_FLAGS = {"ckpt_every_steps": "--ckpt-every"}


class UsageError(ValueError):
    """A bad request: reported as one line (exit status 2), before any training."""


def flag(name: str) -> str:
    """The CLI flag of a config field: `train_size` -> `--train-size`."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _usage(error: ValueError | TypeError, fields: tuple[str, ...], prefix: str = "") -> UsageError:
    """`error` as a UsageError, its leading field name (if one of `fields`) written as the CLI flag."""
    msg = str(error).splitlines()[0] if str(error) else repr(error)
    for name in sorted(fields, key=len, reverse=True):
        if msg.startswith((name + " ", name + "[", name + ":")):
            return UsageError(flag(name) + msg[len(name):])
    return UsageError(prefix + msg)


def _msam_differences(stored: Mapping[str, Any] | None, mine: Mapping[str, Any],
                       tolerant: frozenset[str]) -> dict[str, tuple[Any, Any]]:
    """{option: (stored, now)} of the model options (JSON form) that differ. An option missing from a stored
    `msam` section had its default then (e.g. targets: qkv only); a record without the section compares none."""
    if stored is None:
        return {}
    stored = {**json.loads(json.dumps(MSamOptions().to_dict())), **stored}
    if isinstance(stored.get("targets"), (str, list, tuple)):  # "qkv" or ["mlp", "qkv"] as written by hand
        try:
            stored["targets"] = list(parse_targets(stored["targets"]))
        except ValueError:
            pass
    return {k: (stored[k], v) for k, v in mine.items() if k not in tolerant and stored[k] != v}


def finetune_train_config(**changes: Any) -> TrainConfig:
    """`TrainConfig` with the fine-tuning defaults (`FINETUNE_TRAIN_DEFAULTS`) and `changes` applied."""
    return TrainConfig(**{**FINETUNE_TRAIN_DEFAULTS, **changes})


_MSAM_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MSamConfig)}


@dataclass
class MSamOptions:
    """`build_msam`'s keyword options (defaults: `MSamConfig`'s). `ranks=None`: `default_ranks` for the
    decomposition and SAM size. Validated by `MSamConfig` when a `FinetuneConfig` holds them."""

    decomp: str = _MSAM_DEFAULTS["decomp"]
    ranks: int | tuple[int, ...] | str | None = None
    qkv: str = _MSAM_DEFAULTS["qkv"]
    targets: tuple[str, ...] = _MSAM_DEFAULTS["targets"]
    scale: float = _MSAM_DEFAULTS["scale"]
    dropout: float = _MSAM_DEFAULTS["dropout"]
    train_norms: bool = _MSAM_DEFAULTS["train_norms"]
    init: str = _MSAM_DEFAULTS["init"]
    grad_checkpointing: bool = _MSAM_DEFAULTS["grad_checkpointing"]
    attention: str = _MSAM_DEFAULTS["attention"]
    shared_blocks: int = _MSAM_DEFAULTS["shared_blocks"]
    train_modules: tuple[str, ...] = _MSAM_DEFAULTS["train_modules"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MSamOptions":
        return cls(**dataclass_kwargs(cls, data))  # a JSON list of ranks becomes a tuple when validated


_SECTIONS = ("msam", "train")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run was asked to do (validated on construction; saved as run_config.json).

    `model`: SAM size (`MODELS`); `checkpoint`: an official-format SAM checkpoint of that size (None: the
    project's pretrained SAM for `PRETRAINED_MODELS`, else random weights; "none": random init); `data` / `data_root`: the
    dataset (`DATASETS`; the synthetic scenes are generated on first use); `image_size`: (H, W) the samples
    are resized to (None: the model's default); `train_size` / `val_size`: use only the first N samples;
    `threads`: torch intra-op threads (0: torch's default, every core); `flush_denormal`: compute subnormal
    floats as zero on the CPU (`tensoradapt._utils.denormal`: sharp attention makes them common, and they
    are slow; the T = 8 training step took 1.72x as long without); `out`: output folder (None:
    runs/sam_mtl/<decomp>-seed<seed>); `baseline`: results.json of the single-task baseline for delta-m;
    `num_figures`: validation images drawn in predictions.png.
    """

    model: str = "tiny_p8"
    checkpoint: str | None = None
    data: str = "synthetic"
    data_root: str | None = None
    tasks: tuple[str, ...] = ("semantic", "depth", "normal")
    image_size: tuple[int, int] | None = None
    train_size: int | None = None
    val_size: int | None = None
    augment: bool = True
    msam: MSamOptions = field(default_factory=MSamOptions)
    train: TrainConfig = field(default_factory=finetune_train_config)
    threads: int = 0
    flush_denormal: bool = True
    out: str | None = None
    baseline: str | None = None
    num_figures: int = 3

    #: fields that may change between a run and its resumption (and train/config.py's RESUME_TOLERANT_FIELDS)
    RESUME_TOLERANT_FIELDS: ClassVar[frozenset[str]] = frozenset({"threads", "flush_denormal", "out", "baseline",
                                                                   "num_figures"})
    #: msam fields that change how, not what, the model computes (equal to float tolerance)
    RESUME_TOLERANT_MSAM: ClassVar[frozenset[str]] = frozenset({"attention", "grad_checkpointing"})

    def __post_init__(self) -> None:
        if isinstance(self.msam, Mapping):
            self.msam = MSamOptions.from_dict(self.msam)
        if isinstance(self.train, Mapping):
            self.train = TrainConfig.from_dict(self.train)
        if self.model not in MODELS:
            raise UsageError(f"--model must be one of {', '.join(MODELS)}; got {self.model!r}")
        self._check_data()
        if self.checkpoint not in (None, "none") and not Path(self.checkpoint).exists():
            raise UsageError(f"--checkpoint {self.checkpoint} does not exist")
        self.tasks = tuple(self.tasks)
        try:
            specs = self.task_specs()
        except ValueError as e:
            raise UsageError(f"--tasks: {e}") from None
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) <= 0:
                raise UsageError(f"--image-size must be H,W with positive ints; got {self.image_size}")
        for name in ("train_size", "val_size"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"{flag(name)} must be positive; got {v}")
        if not isinstance(self.flush_denormal, bool):
            raise UsageError(f"flush_denormal must be True or False; got {self.flush_denormal!r}")
        for name in ("threads", "num_figures"):
            if getattr(self, name) < 0:
                raise UsageError(f"{flag(name)} must be >= 0; got {getattr(self, name)}")
        self._check_baseline()
        try:
            resolved = self.msam_config()
        except (ValueError, TypeError) as e:
            raise _usage(e, tuple(f.name for f in dataclasses.fields(MSamOptions)), "model: ") from None
        if self.msam.ranks is not None:  # normalised: "4,8,8" or [4, 8, 8] -> (4, 8, 8)
            self.msam = dataclasses.replace(self.msam, ranks=resolved.ranks)
        self.msam = dataclasses.replace(self.msam, targets=resolved.targets,  # "mlp,qkv" -> ("qkv", "mlp")
                                        train_modules=resolved.train_modules)  # "patch_embed" -> ("patch_embed",)
        if resolved.train_modules:  # do the names exist in this encoder? (a structure-only build, no weights)
            try:
                with torch.device("meta"):
                    msam_from_config(resolved)
            except ValueError as e:
                raise _usage(e, ("train_modules",)) from None
        try:
            self.train.check_tasks(specs)
        except ValueError as e:
            raise _usage(e, tuple(f.name for f in dataclasses.fields(TrainConfig))) from None
        unknown = sorted(set(self.train.lr_scale) - set(MSAM_PARAM_GROUPS))
        if unknown:
            raise UsageError(f"--lr-scale names unknown parameter group(s) {unknown}; the groups are "
                             f"{', '.join(MSAM_PARAM_GROUPS)}")

    def _check_data(self) -> None:
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

    def _check_baseline(self) -> None:
        if self.baseline is None:
            return
        p = Path(self.baseline)
        if not p.is_file():
            raise UsageError(f"--baseline {p} does not exist (give the results.json of a finished run)")
        try:
            if "metrics" not in json.loads(p.read_text()):
                raise ValueError
        except ValueError:
            raise UsageError(f"--baseline {p} is not a sam_mtl results.json (no 'metrics')") from None

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        """`out`, or runs/sam_mtl/<decomp>-seed<seed>."""
        if self.out is not None:
            return Path(self.out)
        return Path("runs") / "sam_mtl" / f"{self.msam.decomp}-seed{self.train.seed}"

    def task_specs(self) -> dict[str, Any]:
        """{name: TaskSpec} of `tasks`, from the task table."""
        from ..mtl import get_tasks

        return get_tasks(self.tasks)

    def msam_config(self, checkpoint: str | None = None) -> MSamConfig:
        """The mSAM this run builds (ranks resolved); raises ValueError / TypeError naming a bad option."""
        channels = {name: spec.channels for name, spec in self.task_specs().items()}
        return MSamConfig(sam=get_model_config(self.model), tasks=channels, checkpoint=checkpoint,
                          **dataclasses.asdict(self.msam))

    def default_image_size(self) -> tuple[int, int]:
        """NYUv2's 3:4 aspect with the long side at the SAM input size."""
        side = get_model_config(self.model).image_size
        return (side * 3 // 4, side)

    def synthetic_render_size(self) -> tuple[int, int]:
        """(H, W) the synthetic scenes are rendered at: 1.5x the training size (the largest zoom of the
        scale-crop augmentation then still has a pixel per input pixel), at most NYUv2's 288 x 384. Rendering
        no larger than that keeps loading a sample (~4x cheaper at the tiny models' 144 x 192 than at
        288 x 384) from costing as much as the training step."""
        h, w = self.image_size or self.default_image_size()
        return (min(SYNTHETIC_MAX_HW[0], math.ceil(1.5 * h)), min(SYNTHETIC_MAX_HW[1], math.ceil(1.5 * w)))

    # ---- composing -------------------------------------------------------------------------------
    def updated(self, **changes: Any) -> "FinetuneConfig":
        """A copy with `changes` applied, each given by its field name in this config, `MSamOptions` or
        `TrainConfig` (the names are disjoint): `cfg.updated(decomp="lora", ranks=4, seed=1, epochs=2)`.
        Changing `decomp` without `ranks` resets the ranks to the default."""
        sections: dict[str, dict[str, Any]] = {"msam": {}, "train": {}, "": {}}
        owners = {"msam": {f.name for f in dataclasses.fields(MSamOptions)},
                  "train": {f.name for f in dataclasses.fields(TrainConfig)}}
        for name, value in changes.items():
            owner = next((s for s, names in owners.items() if name in names), "")
            if owner == "" and (name in _SECTIONS or name not in {f.name for f in dataclasses.fields(self)}):
                raise TypeError(f"unknown fine-tuning option {name!r}")
            sections[owner][name] = value
        if "decomp" in sections["msam"] and "ranks" not in sections["msam"]:
            sections["msam"]["ranks"] = None
        try:
            train = self.train.replace(**sections["train"])
        except ValueError as e:
            raise _usage(e, tuple(owners["train"])) from None
        return dataclasses.replace(self, msam=dataclasses.replace(self.msam, **sections["msam"]), train=train,
                                   **sections[""])

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the run's fields, then "msam" and "train" as nested objects."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _SECTIONS}
        d["tasks"] = list(self.tasks)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return {**d, "msam": self.msam.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FinetuneConfig":
        return cls(**dataclass_kwargs(cls, data))

    def resume_differences(self, stored: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{field: (stored, now)} for the fields that differ from a stored `to_dict()` and change what is
        computed (outside the tolerant fields of this config and of `TrainConfig`)."""
        mine = json.loads(json.dumps(self.to_dict()))
        diffs = {k: (stored[k], v) for k, v in mine.items()
                 if k not in _SECTIONS and k not in self.RESUME_TOLERANT_FIELDS and k in stored and stored[k] != v}
        diffs.update(_msam_differences(stored.get("msam"), mine["msam"], self.RESUME_TOLERANT_MSAM))
        diffs.update(self.train.resume_differences(stored.get("train") or {}))
        return diffs
