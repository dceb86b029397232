"""Surface materials: a colour pair, a procedural pattern kind, and the palettes colours are drawn from."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["Texture", "Material", "WOODS", "PAINTS", "FABRICS", "VIVID", "pick"]


class Texture(enum.IntEnum):
    """Procedural pattern of a material (evaluated by :mod:`.textures`). The values are stored in scenes."""

    PLAIN = 0
    WOOD = 1
    TILES = 2
    FABRIC = 3
    STRIPES = 4
    WINDOW = 5
    SCREEN = 6
    ART = 7
    EMISSIVE = 8


@dataclass
class Material:
    """What a surface looks like; the pattern blends `color` towards `color2`."""

    color: np.ndarray          # (3,) linear albedo
    color2: np.ndarray         # (3,) secondary colour of the pattern
    texture: int               # a Texture
    freq: float                # pattern frequency (1/m)
    phase: np.ndarray          # (4,) random phases


# palettes (linear RGB), (n, 3) each
WOODS = np.array([[0.45, 0.28, 0.14], [0.62, 0.45, 0.28], [0.30, 0.18, 0.10], [0.75, 0.62, 0.45],
                  [0.85, 0.84, 0.80], [0.20, 0.20, 0.22]])
PAINTS = np.array([[0.85, 0.83, 0.78], [0.80, 0.78, 0.70], [0.70, 0.76, 0.80], [0.82, 0.74, 0.66],
                   [0.70, 0.78, 0.68], [0.90, 0.90, 0.88], [0.60, 0.62, 0.66]])
FABRICS = np.array([[0.55, 0.12, 0.10], [0.15, 0.25, 0.50], [0.35, 0.45, 0.30], [0.60, 0.55, 0.45],
                    [0.25, 0.25, 0.28], [0.75, 0.70, 0.60], [0.50, 0.35, 0.55]])
VIVID = np.array([[0.80, 0.15, 0.10], [0.10, 0.45, 0.80], [0.90, 0.75, 0.10], [0.15, 0.60, 0.25],
                  [0.85, 0.45, 0.10], [0.55, 0.20, 0.60], [0.90, 0.90, 0.90], [0.10, 0.10, 0.10]])


def pick(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """One colour (3,) of `palette` (n, 3), uniformly."""
    return palette[rng.integers(len(palette))]
