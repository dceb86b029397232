"""The pretraining recipe's hyper-parameters: one validated dataclass, saved in the report beside the weights.

Every field shapes the checkpoint (there is no wall-clock setting): the same config on the same kind of
machine gives the same bytes. `PRETRAIN_VERSION` names the code's part of the recipe (what a config cannot
say: the prompt mix, the loss terms, the schedule's shape); bump it when that changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..._utils import dataclass_kwargs
from ...sam import get_sam_config

__all__ = ["PRETRAIN_VERSION", "DEFAULT_STEPS", "DOMAIN_GAPS", "MASK_SETS", "LATER_FIELDS", "PretrainConfig"]

#: Part of the cached file name and of the report: bump when the recipe's code changes.
PRETRAIN_VERSION = 4
#: Optimiser steps of the default build: about 3 minutes on one idle core of the reference machine
#: (0.11 s a step, plus ~8 s of rendering and evaluation), what the first use of the experiments pays.
DEFAULT_STEPS = 1500
#: How the pretraining scenes' images differ from the task scenes' (:func:`.scenes.palette_shift`).
DOMAIN_GAPS = ("none", "palette")
#: Which instances are prompted masks (:class:`.scenes.PromptScenes`): every one, or objects only (the room's
#: shell, its walls, floor and ceiling, never is a target, as in SAM's object-centric data).
MASK_SETS = ("all", "objects")
#: Fields added after recipe version 4 with the value every earlier report meant: a saved config without them
#: reads as having them, and `build.config_digest` leaves them out at these values (cached names stay valid).
LATER_FIELDS = {"masks": "all"}


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain_tiny_sam` (validated in ``__post_init__``)."""

    model: str = "tiny"
    steps: int = DEFAULT_STEPS          # optimiser steps (the schedule spans exactly these)
    seed: int = 0                       # initial weights, the scenes drawn and the prompts
    batch_size: int = 4                 # images per step
    masks_per_image: int = 6            # prompted masks per image and step
    lr: float = 2e-3
    weight_decay: float = 0.05          # off norms, biases and position tables
    warmup_steps: int = 20              # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.05
    clip_norm: float = 1.0              # gradient-norm clipping
    n_scenes: int = 360                 # training scenes (stream "sam_train")
    n_heldout: int = 48                 # held-out scenes for the IoU evaluation (stream "sam_heldout")
    eval_masks_per_scene: int = 8
    min_area_frac: float = 0.004        # smallest mask used, as a share of the image area
    focal_weight: float = 20.0
    focal_alpha: float = 0.5
    area_power: float = 0.5             # masks drawn with probability ~ area ** area_power
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    domain_gap: str = "none"            # "palette": a random colour palette per pretraining scene
    masks: str = "all"                  # "objects": no wall / floor / ceiling masks (training and held-out)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "masks_per_image", "n_scenes", "n_heldout", "eval_masks_per_scene"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must lie in (0, 1), got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must lie in [0, 1], got {self.focal_alpha}")
        if not 0 < self.min_area_frac < 1:
            raise ValueError(f"min_area_frac must lie in (0, 1), got {self.min_area_frac}")
        for name in ("weight_decay", "clip_norm", "focal_weight", "dice_weight", "iou_weight", "area_power"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.domain_gap not in DOMAIN_GAPS:
            raise ValueError(f"domain_gap must be one of {DOMAIN_GAPS}, got {self.domain_gap!r}")
        if self.masks not in MASK_SETS:
            raise ValueError(f"masks must be one of {MASK_SETS}, got {self.masks!r}")
        get_sam_config(self.model)  # raises for an unknown model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PretrainConfig":
        """The inverse of `to_dict`; unknown keys are refused (a report of another version is not half-read),
        a missing `LATER_FIELDS` key takes the value its report meant."""
        return cls(**{**LATER_FIELDS, **dataclass_kwargs(cls, data)})

    def replace(self, **overrides: Any) -> "PretrainConfig":
        """A copy with `overrides` (validated again)."""
        return dataclasses.replace(self, **overrides)
