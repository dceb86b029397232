"""Which scene is which: a scene is a deterministic function of (seed, stream, index, SYNTHETIC_VERSION)."""
from __future__ import annotations

import numpy as np

from .sampler import sample_scene
from .shading import render_scene

__all__ = ["SYNTHETIC_VERSION", "STREAMS", "scene_rng", "synthesize"]

#: Bumped whenever the scene distribution, the rendering or the file layout changes (it seeds every scene
#: and is part of the cache key). tests/test_synthetic_pins.py pins the output of this version.
SYNTHETIC_VERSION = 1
#: Independent random streams: the dataset splits and the scenes used to pretrain the tiny SAM.
STREAMS = {"train": 0, "val": 1, "sam_train": 2, "sam_heldout": 3}


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator that samples scene `index` of stream number `stream` (and then draws its sensor noise)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng([int(seed), int(stream), int(index), SYNTHETIC_VERSION])


def synthesize(index: int, seed: int = 0, stream: str | int = "train", height: int = 288,
               width: int = 384) -> dict:
    """Render scene `index` of a random stream (see :data:`STREAMS`) at height x width.

    The scene (geometry, materials, camera, lights) depends only on (seed, stream, index); the
    resolution changes only the sampling. Returns the dict of :func:`~.shading.render_scene`.
    """
    if isinstance(stream, str) and stream not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)} or an int, got {stream!r}")
    s = STREAMS[stream] if isinstance(stream, str) else int(stream)
    rng = scene_rng(seed, s, index)
    scene = sample_scene(rng)
    return render_scene(scene, height, width, rng=rng)
