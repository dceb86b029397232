"""Procedural patterns: for every pixel, how far its material blends towards `color2`, and how much it glows.

A pattern is a function of the pixels of one texture kind, each given by its texture coordinates `u`, `v`
(M,) (metres on the surface), its material's frequency `freq` (M,) and phases `phase` (M, 4); it returns the
blend weight and the emission, each (M,) or a scalar (None: no emission). :data:`PATTERNS` maps every
:class:`~.materials.Texture` to its pattern; :func:`blend_and_emission` applies them to a whole image.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from .materials import Texture

__all__ = ["Pattern", "PATTERNS", "blend_and_emission", "smooth_noise"]

_Value = Union[np.ndarray, float]
#: (u, v, freq, phase) -> (blend weight towards color2, emission or None)
Pattern = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[_Value, Optional[_Value]]]


def smooth_noise(u: np.ndarray, v: np.ndarray, phase: np.ndarray, freq: float | np.ndarray) -> np.ndarray:
    """Smooth pseudo-random field in [-1, 1] (sum of three oriented sinusoids); phase (M, 4)."""
    return (np.sin(freq * (0.83 * u + 0.56 * v) + phase[:, 0])
            + np.sin(freq * (1.37 * (-0.42 * u + 0.91 * v)) + phase[:, 1])
            + np.sin(freq * (2.11 * (0.99 * u - 0.14 * v)) + phase[:, 2])) / 3.0


def _plain(u, v, f, p):
    return 0.15 * (0.5 + 0.5 * smooth_noise(u, v, p, 3.0)), None


def _wood(u, v, f, p):
    # planks along u with grain: stripes warped by low-frequency noise
    grain = np.sin(f * (v + 0.08 * np.sin(3.1 * u + p[:, 0])) + p[:, 1])
    plank = np.floor(v * 6.0 + p[:, 2])
    return 0.35 * (0.5 + 0.5 * grain) + 0.25 * (np.sin(plank * 12.9898 + p[:, 3]) * 0.5 + 0.5), None


def _tiles(u, v, f, p):
    s = 1.0 / np.maximum(f, 1e-3)
    a, b = u / s, v / s
    checker = (np.floor(a) + np.floor(b)) % 2
    grout = (np.abs(a - np.round(a)) < 0.03) | (np.abs(b - np.round(b)) < 0.03)
    return np.where(grout, 0.9, 0.25 * checker), None


def _fabric(u, v, f, p):
    return 0.25 * (0.5 + 0.5 * np.sin(f * u + p[:, 0]) * np.sin(f * v + p[:, 1])) \
        + 0.1 * (0.5 + 0.5 * smooth_noise(u, v, p, 10.0)), None


def _stripes(u, v, f, p):
    return 0.6 * (np.sin(f * (u + v) + p[:, 0]) > 0.3), None


def _window(u, v, f, p):
    # bright sky gradient crossed by a frame / mullions in color2
    cell = (u * f * 2.0 + p[:, 0]) % 1.0
    mull = (cell < 0.05) | (np.abs(((v * 1.5) % 1.0) - 0.5) < 0.03)
    return mull.astype(np.float32), np.where(mull, 0.2, 0.9 + 0.1 * np.clip(v - 1.0, 0, 1))


def _screen(u, v, f, p):
    return 0.0, 0.04 * (0.5 + 0.5 * np.sin(2.0 * (u - v) + p[:, 0]))


def _art(u, v, f, p):
    # the noise frequency is the mean over *all* art pixels in view (kept as is: it is part of the images)
    g = 0.5 + 0.5 * np.sin(f * u + p[:, 0]) * np.cos(f * 1.3 * v + p[:, 1])
    return np.clip(g + 0.3 * smooth_noise(u, v, p, f.mean() * 2.0), 0.0, 1.0), None


def _emissive(u, v, f, p):
    return 0.0, 1.0


PATTERNS: dict[Texture, Pattern] = {
    Texture.PLAIN: _plain, Texture.WOOD: _wood, Texture.TILES: _tiles, Texture.FABRIC: _fabric,
    Texture.STRIPES: _stripes, Texture.WINDOW: _window, Texture.SCREEN: _screen, Texture.ART: _art,
    Texture.EMISSIVE: _emissive,
}


def blend_and_emission(texture: np.ndarray, u: np.ndarray, v: np.ndarray, freq: np.ndarray,
                       phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel blend weight towards color2 and emission, both (H, W) float32.

    texture (H, W) int (a Texture per pixel), u, v, freq (H, W) float32, phase (H, W, 4) float32.
    """
    weight = np.zeros(texture.shape, np.float32)
    emission = np.zeros(texture.shape, np.float32)
    wf, ef, texf = weight.reshape(-1), emission.reshape(-1), texture.reshape(-1)
    uf, vf, ff, pf = u.reshape(-1), v.reshape(-1), freq.reshape(-1), phase.reshape(-1, 4)
    for kind in np.unique(texf):
        m = texf == kind
        w, e = PATTERNS[Texture(int(kind))](uf[m], vf[m], ff[m], pf[m])
        wf[m] = w
        if e is not None:
            ef[m] = e
    return weight, emission
