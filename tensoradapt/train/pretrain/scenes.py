"""Pretraining data: synthetic scenes rendered at SAM's input size, preprocessed as SAM does, with instances.

Input: the scene rendered with its longest side at ``image_size`` (NYUv2's 3:4 aspect gives 96 x 128 for the
tiny config), normalised with SAM's pixel mean / std on the 0-255 scale and zero-padded bottom-right to a
square, exactly as :meth:`Sam.preprocess` does. Masks: every instance covering at least ``min_area_frac`` of
the image (walls, floor and ceiling included: SAM is class-agnostic), or with ``masks="objects"`` all but the
room's shell (`SHELL_CLASSES`: an instance is shell when the most common class among its labelled pixels is).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm  # not tqdm.auto: in notebooks that wants ipywidgets

from ...sam import SamConfig
from .config import MASK_SETS

__all__ = ["NYU_ASPECT", "SHELL_CLASSES", "input_size_for", "palette_shift", "shell_instances", "PromptScenes"]

#: (H, W) of NYUv2 frames: the aspect the scenes are rendered at.
NYU_ASPECT = (288, 384)
#: The semantic classes of a room's shell, left out of the prompted masks by ``masks="objects"``.
SHELL_CLASSES = ("wall", "floor", "ceiling")


def shell_instances(instance: Tensor, label: Tensor) -> set[int]:
    """Ids of the instances whose most common class among their labelled pixels is a `SHELL_CLASSES` one;
    instance, label: (h, w) integer maps (label -1: unlabelled)."""
    from ...data.synthetic.classes import CLASSES

    shell = torch.tensor([CLASSES.index(c) for c in SHELL_CLASSES])
    labelled = label >= 0
    ids, cls = instance[labelled], label[labelled].long()
    out = set()
    for k in ids.unique().tolist():
        if bool(torch.isin(cls[ids == k].mode().values, shell)):
            out.add(k)
    return out


def input_size_for(cfg: SamConfig, aspect: tuple[int, int] = NYU_ASPECT) -> tuple[int, int]:
    """(h, w) of an image of the given aspect with its longest side resized to the SAM input size."""
    H, W = aspect
    s = cfg.image_size / max(H, W)
    return int(round(H * s)), int(round(W * s))


def palette_shift(image: Tensor, rng: np.random.Generator) -> Tensor:
    """A scene in another colour world: (3, h, w) in [0, 1] -> its channels permuted, each scaled by a gain
    in U(0.6, 1.4), clipped, then raised to a gamma in U(0.6, 1.6). One palette per scene (drawn from `rng`).

    Pretraining on such scenes opens a domain gap to the task scenes (natural palette), as SA-1B's
    photographs differ from NYUv2's indoor frames: the encoder learns colour-blind, class-agnostic
    segmentation, which a task may need to undo.
    """
    perm = torch.from_numpy(rng.permutation(3))
    gain = torch.from_numpy(rng.uniform(0.6, 1.4, size=(3, 1, 1))).to(image.dtype)
    gamma = float(rng.uniform(0.6, 1.6))
    return (image[perm] * gain).clamp(0, 1) ** gamma


class PromptScenes:
    """`n` scenes of one synthetic stream, ready for SAM (`domain_gap`: "none" or "palette", :func:`palette_shift`;
    `masks`: "all" or "objects", see the module's docstring).

    Attributes:
        inputs: (N, 3, S, S) float32, normalised (SAM pixel mean / std on 0-255) and zero-padded.
        instances: (N, h, w) int64 instance ids (h, w: the unpadded size).
        masks: per scene, the instance ids large enough to prompt (area >= min_area pixels).
        areas: per scene, (len(masks),) float64 pixel counts of those instances.
    """

    def __init__(self, cfg: SamConfig, n: int, seed: int = 0, stream: str = "sam_train",
                 min_area_frac: float = 0.004, domain_gap: str = "none", masks: str = "all",
                 progress: bool = False) -> None:
        from ...data.synthetic import synthesize

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if masks not in MASK_SETS:
            raise ValueError(f"masks must be one of {MASK_SETS}, got {masks!r}")
        self.cfg = cfg
        self.h, self.w = input_size_for(cfg)
        S = cfg.image_size
        mean = torch.tensor(cfg.pixel_mean).view(3, 1, 1)
        std = torch.tensor(cfg.pixel_std).view(3, 1, 1)
        self.inputs = torch.zeros(n, 3, S, S)
        self.instances = torch.zeros(n, self.h, self.w, dtype=torch.int64)
        self.masks: list[list[int]] = []
        self.areas: list[Tensor] = []
        min_area = max(4, int(min_area_frac * self.h * self.w))
        for i in tqdm(range(n), desc=f"render {stream} scenes", disable=not progress):
            s = synthesize(i, seed=seed, stream=stream, height=self.h, width=self.w)
            img = torch.from_numpy(s["image"]).permute(2, 0, 1)
            if domain_gap == "palette":
                img = palette_shift(img, np.random.default_rng([seed, i, len(stream), 7919]))
            img = img * 255.0
            self.inputs[i, :, : self.h, : self.w] = (img - mean) / std
            inst = torch.from_numpy(s["instance"].astype(np.int64))
            self.instances[i] = inst
            ids, counts = torch.unique(inst, return_counts=True)
            keep = counts >= min_area
            if masks == "objects":
                shell = shell_instances(inst, torch.from_numpy(s["label"].astype(np.int64)))
                keep &= torch.tensor([k not in shell for k in ids.tolist()], dtype=torch.bool)
            self.masks.append(ids[keep].tolist())
            self.areas.append(counts[keep].double())

    def __len__(self) -> int:
        return self.inputs.shape[0]
