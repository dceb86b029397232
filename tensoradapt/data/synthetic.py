"""Synthetic indoor scenes in the NYUv2 layout: a ray-cast room with furniture-like primitives.

Each scene is a room (floor, four walls, ceiling, windows on the walls) furnished with composite
objects built from boxes, vertical cylinders and spheres (beds, chairs, tables, sofas, cabinets,
bookshelves with books, TVs, pictures, lamps, vases, unlabelled clutter). A pinhole camera with
square pixels and its principal point at the image centre looks into the room; every pixel's ray is
intersected analytically with every primitive (vectorised numpy, restricted to the primitive's
projected bounding rectangle), which gives *exact*:

* ``image``    (H, W, 3) float32 in [0, 1]: albedo from per-class procedural textures, Lambertian
  shading from a ceiling light and a window light, emissive windows / screens, gamma, sensor noise;
* ``label``    (H, W) int16 over the 13 NYUv2 classes (:data:`CLASSES`), -1 = unlabelled clutter;
* ``depth``    (H, W, 1) float32, metric depth along the camera z axis (0 would mean invalid; every
  ray hits the closed room so all pixels are valid);
* ``normal``   (H, W, 3) float32, unit surface normals in the camera frame (x right, y down,
  z forward, OpenCV convention), oriented towards the camera;
* ``instance`` (H, W) int32, one id per object (each wall, floor, ceiling, window, piece of furniture;
  0 is never used).

Scenes are a deterministic function of ``(seed, stream, index)`` and do not depend on the rendered
resolution, so the same scene can be rendered at 288x384 for the dataset and at 96x128 for SAM
pretraining. :func:`generate_synthetic` writes the preprocessed-NYUv2 layout
(``train|val/{image,label,depth,normal,instance}/<i>.npy`` + ``meta.json``), :func:`ensure_synthetic`
reuses a complete copy in the cache directory or (re)builds it.

Run ``python -m tensoradapt.data.synthetic --help`` for a command line that also reports images/s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "SYNTHETIC_VERSION",
    "STREAMS",
    "DEFAULT_N_TRAIN",
    "DEFAULT_N_VAL",
    "Scene",
    "sample_scene",
    "render_scene",
    "synthesize",
    "camera_intrinsics",
    "NYUV2_HFOV",
    "generate_synthetic",
    "ensure_synthetic",
    "synthetic_is_complete",
    "default_synthetic_root",
]

#: The 13 NYUv2 classes (Couprie et al. 2013 mapping, as in the preprocessed NYUv2 used by MTAN/LibMTL).
CLASSES: tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "painting", "sofa", "table", "tv", "wall", "window",
)
NUM_CLASSES = len(CLASSES)
(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS,
 PAINTING, SOFA, TABLE, TV, WALL, WINDOW) = range(NUM_CLASSES)
UNLABELLED = -1

#: Bumped whenever the scene distribution or the file layout changes (part of the cache key).
SYNTHETIC_VERSION = 1
#: Independent random streams: the dataset splits and the scenes used to pretrain the tiny SAM.
STREAMS = {"train": 0, "val": 1, "sam_train": 2, "sam_heldout": 3}
SPLIT_FOLDERS = ("image", "label", "depth", "normal", "instance")
#: Defaults of :func:`ensure_synthetic` (see its docstring for why these sizes).
DEFAULT_N_TRAIN = 600
DEFAULT_N_VAL = 200
META_FILE = "meta.json"

#: Horizontal field of view of the NYUv2 Kinect colour camera (fx = 518.86 px at 640 px width); every
#: scene uses it, so one set of intrinsics (see :func:`camera_intrinsics`) serves a whole dataset.
NYUV2_HFOV = 2.0 * math.atan(320.0 / 518.8579)

_BOX, _CYL, _SPHERE = 0, 1, 2

# texture kinds
_T_PLAIN, _T_WOOD, _T_TILES, _T_FABRIC, _T_STRIPES, _T_WINDOW, _T_SCREEN, _T_ART, _T_EMISSIVE = range(9)


# ----------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------
@dataclass
class _Material:
    color: np.ndarray          # (3,) linear albedo
    color2: np.ndarray         # (3,) secondary colour of the pattern
    texture: int               # one of _T_*
    freq: float                # pattern frequency (1/m)
    phase: np.ndarray          # (4,) random phases


@dataclass
class _Object:
    label: int                 # class id in [0, 13) or -1
    instance: int              # > 0
    material: _Material


@dataclass
class _Primitive:
    kind: int                  # _BOX | _CYL | _SPHERE
    obj: int                   # index into Scene.objects
    center: np.ndarray         # (3,) world; for a cylinder (x, y_mid, z) of its axis
    size: np.ndarray           # box: half extents (3,); cylinder: (radius, half height); sphere: (radius,)
    yaw: float = 0.0           # box rotation about the vertical axis (radians)


@dataclass
class _Decal:
    """A flat rectangle lying on a wall face (windows): relabels the wall pixels it covers."""

    face: int                  # room face id (0: x=0, 1: x=W, 4: z=0, 5: z=D)
    u0: float                  # horizontal extent along the wall
    u1: float
    y0: float                  # vertical extent
    y1: float
    obj: int


@dataclass
class Scene:
    """A room, its contents and a camera; a deterministic function of its random generator.

    World frame: x along the room width, y up, z along the room depth; the room spans
    [0, W] x [0, H] x [0, D] metres. The camera is given by its centre, a camera-to-world
    rotation (columns = camera x right, y down, z forward in world coordinates) and its
    horizontal field of view.
    """

    room: np.ndarray                      # (3,) W, H, D
    objects: list[_Object]
    primitives: list[_Primitive]
    decals: list[_Decal]
    cam_pos: np.ndarray                   # (3,)
    cam_rot: np.ndarray                   # (3, 3) camera -> world
    hfov: float                           # radians
    light_pos: np.ndarray                 # (3,) ceiling light
    light_power: float
    sun_dir: np.ndarray                   # (3,) unit, direction *towards* the window light
    sun_power: float
    ambient: float
    exposure: float
    noise_std: float
    face_objects: list[int] = field(default_factory=list)  # object index of the 6 room faces


def camera_intrinsics(height: int, width: int, hfov: float = NYUV2_HFOV) -> np.ndarray:
    """Pinhole intrinsics (3, 3): square pixels, principal point at the image centre.

    Pixel (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5);
    fx = fy = (width / 2) / tan(hfov / 2); cx = width / 2; cy = height / 2.
    """
    f = 0.5 * width / math.tan(0.5 * hfov)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _yaw_axes(yaw: float) -> np.ndarray:
    """Rows = the local x, y, z axes (world coordinates) of a frame rotated by `yaw` about +y."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


class _Builder:
    """Collects objects and primitives while a scene is being sampled."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.objects: list[_Object] = []
        self.primitives: list[_Primitive] = []
        self.decals: list[_Decal] = []
        self.footprints: list[tuple[float, float, float, float]] = []  # xmin, xmax, zmin, zmax

    # materials ---------------------------------------------------------------------------
    def material(self, base, jitter=0.08, texture=_T_PLAIN, freq=8.0, color2=None, dark=0.6):
        rng = self.rng
        base = np.asarray(base, dtype=np.float64)
        color = np.clip(base * (1.0 + rng.uniform(-jitter, jitter, 3)) + rng.uniform(-jitter, jitter) * 0.3,
                        0.02, 0.95)
        if color2 is None:
            color2 = color * dark
        return _Material(color, np.clip(np.asarray(color2, float), 0.0, 1.0), texture,
                         freq * rng.uniform(0.8, 1.25), rng.uniform(0, 2 * math.pi, 4))

    def new_object(self, label: int, material: _Material) -> int:
        self.objects.append(_Object(label, len(self.objects) + 1, material))
        return len(self.objects) - 1

    # primitives in an object's local frame (origin on the floor, yaw about y) --------------
    def box(self, obj, origin, yaw, local_center, half):
        ax = _yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(_Primitive(_BOX, obj, c, np.asarray(half, float), yaw))

    def cylinder(self, obj, origin, yaw, local_center, radius, half_height):
        ax = _yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(_Primitive(_CYL, obj, c, np.array([radius, half_height], float)))

    def sphere(self, obj, origin, yaw, local_center, radius):
        ax = _yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(_Primitive(_SPHERE, obj, c, np.array([radius], float)))

    # placement ----------------------------------------------------------------------------
    def free(self, rect, margin=0.05) -> bool:
        x0, x1, z0, z1 = rect
        for a0, a1, b0, b1 in self.footprints:
            if x0 < a1 + margin and a0 < x1 + margin and z0 < b1 + margin and b0 < z1 + margin:
                return False
        return True


def _footprint(origin, yaw, half_w, half_d):
    """Axis-aligned xz rectangle enclosing a (2 half_w) x (2 half_d) footprint rotated by yaw."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    ex = half_w * c + half_d * s
    ez = half_w * s + half_d * c
    return (origin[0] - ex, origin[0] + ex, origin[2] - ez, origin[2] + ez)


# palettes (linear RGB)
_WOODS = np.array([[0.45, 0.28, 0.14], [0.62, 0.45, 0.28], [0.30, 0.18, 0.10], [0.75, 0.62, 0.45],
                   [0.85, 0.84, 0.80], [0.20, 0.20, 0.22]])
_PAINTS = np.array([[0.85, 0.83, 0.78], [0.80, 0.78, 0.70], [0.70, 0.76, 0.80], [0.82, 0.74, 0.66],
                    [0.70, 0.78, 0.68], [0.90, 0.90, 0.88], [0.60, 0.62, 0.66]])
_FABRICS = np.array([[0.55, 0.12, 0.10], [0.15, 0.25, 0.50], [0.35, 0.45, 0.30], [0.60, 0.55, 0.45],
                     [0.25, 0.25, 0.28], [0.75, 0.70, 0.60], [0.50, 0.35, 0.55]])
_VIVID = np.array([[0.80, 0.15, 0.10], [0.10, 0.45, 0.80], [0.90, 0.75, 0.10], [0.15, 0.60, 0.25],
                   [0.85, 0.45, 0.10], [0.55, 0.20, 0.60], [0.90, 0.90, 0.90], [0.10, 0.10, 0.10]])


def _pick(rng, palette):
    return palette[rng.integers(len(palette))]


def _add_table(b: _Builder, origin, yaw, w, d, h, label=TABLE):
    rng = b.rng
    wood = _pick(rng, _WOODS)
    obj = b.new_object(label, b.material(wood, texture=_T_WOOD, freq=25.0))
    t = 0.03
    b.box(obj, origin, yaw, (0, h - t / 2, 0), (w / 2, t / 2, d / 2))
    if rng.random() < 0.7:
        leg = 0.025 + 0.01 * rng.random()
        for sx in (-1, 1):
            for sz in (-1, 1):
                b.box(obj, origin, yaw, (sx * (w / 2 - leg - 0.02), (h - t) / 2, sz * (d / 2 - leg - 0.02)),
                      (leg, (h - t) / 2, leg))
    else:  # pedestal table
        b.cylinder(obj, origin, yaw, (0, (h - t) / 2, 0), 0.05, (h - t) / 2)
        b.cylinder(obj, origin, yaw, (0, 0.015, 0), min(w, d) * 0.3, 0.015)
    return obj


def _add_chair(b: _Builder, origin, yaw):
    rng = b.rng
    seat_h = rng.uniform(0.42, 0.48)
    s = rng.uniform(0.20, 0.25)
    fabric = rng.random() < 0.5
    mat = b.material(_pick(rng, _FABRICS) if fabric else _pick(rng, _WOODS),
                     texture=_T_FABRIC if fabric else _T_WOOD, freq=40.0 if fabric else 25.0)
    obj = b.new_object(CHAIR, mat)
    t = 0.03
    b.box(obj, origin, yaw, (0, seat_h, 0), (s, t, s))
    back_h = rng.uniform(0.35, 0.5)
    b.box(obj, origin, yaw, (0, seat_h + back_h / 2, -s + 0.02), (s, back_h / 2, 0.02))
    leg = 0.018
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box(obj, origin, yaw, (sx * (s - leg), (seat_h - t) / 2, sz * (s - leg)),
                  (leg, (seat_h - t) / 2, leg))
    return obj


def _add_small_objects(b: _Builder, x0, x1, z0, z1, top, count):
    """Vases, bowls, boxes and books standing on a horizontal surface at height `top`."""
    rng = b.rng
    for _ in range(count):
        x = rng.uniform(x0, x1)
        z = rng.uniform(z0, z1)
        kind = rng.random()
        if kind < 0.35:  # a stack of books lying flat
            obj = b.new_object(BOOKS, b.material(_pick(rng, _VIVID), texture=_T_STRIPES, freq=60.0))
            n = int(rng.integers(1, 4))
            y = top
            yaw = rng.uniform(-0.5, 0.5)
            for _k in range(n):
                hh = rng.uniform(0.012, 0.025)
                b.box(obj, (x, y, z), yaw, (0, hh, 0), (rng.uniform(0.08, 0.12), hh, rng.uniform(0.10, 0.15)))
                y += 2 * hh
        elif kind < 0.7:  # vase / cup / bottle
            obj = b.new_object(OBJECTS, b.material(_pick(rng, _VIVID), texture=_T_PLAIN))
            r = rng.uniform(0.03, 0.08)
            hh = rng.uniform(0.05, 0.15)
            b.cylinder(obj, (x, top, z), 0.0, (0, hh, 0), r, hh)
            if rng.random() < 0.4:  # plant or ball on top
                b.sphere(obj, (x, top, z), 0.0, (0, 2 * hh + r, 0), r * 1.3)
        else:  # ball / bowl / fruit
            obj = b.new_object(OBJECTS, b.material(_pick(rng, _VIVID), texture=_T_PLAIN))
            r = rng.uniform(0.04, 0.1)
            b.sphere(obj, (x, top, z), 0.0, (0, r, 0), r)


def _wall_frame(room, wall: int, u: float, dist: float):
    """Origin (on the floor) and yaw of an object standing against `wall` at position u along it.

    The object's local +z points away from the wall into the room, its local x runs along the wall;
    `dist` is the distance from the wall to the object's centre.
    """
    W, _, D = room
    if wall == 0:    # wall x = 0, facing +x
        return np.array([dist, 0.0, u]), math.pi / 2
    if wall == 1:    # wall x = W, facing -x
        return np.array([W - dist, 0.0, u]), -math.pi / 2
    if wall == 4:    # wall z = 0, facing +z
        return np.array([u, 0.0, dist]), 0.0
    return np.array([u, 0.0, D - dist]), math.pi  # wall z = D, facing -z


def _wall_length(room, wall):
    return room[2] if wall in (0, 1) else room[0]


def _try_against_wall(b: _Builder, room, wall, half_w, half_d, tries=12, gap=0.02):
    rng = b.rng
    L = _wall_length(room, wall)
    if 2 * half_w + 0.2 > L:
        return None
    for _ in range(tries):
        u = rng.uniform(half_w + 0.1, L - half_w - 0.1)
        origin, yaw = _wall_frame(room, wall, u, half_d + gap)
        rect = _footprint(origin, yaw, half_w, half_d)
        if b.free(rect):
            return origin, yaw, rect, u
    return None


def _add_furniture_group(b: _Builder, room, kind: str, walls: Sequence[int]) -> None:
    rng = b.rng
    W, H, D = room
    if kind == "bed":
        hw, hd = rng.uniform(0.5, 1.0), rng.uniform(0.95, 1.1)
        place = _try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
        if place is None:
            return
        origin, yaw, rect, _ = place
        obj = b.new_object(BED, b.material(_pick(rng, _FABRICS), texture=_T_STRIPES, freq=6.0))
        frame_h = rng.uniform(0.2, 0.35)
        b.box(obj, origin, yaw, (0, frame_h / 2, 0), (hw, frame_h / 2, hd))
        mh = rng.uniform(0.15, 0.25)
        b.box(obj, origin, yaw, (0, frame_h + mh / 2, 0.02), (hw - 0.03, mh / 2, hd - 0.05))
        hb = rng.uniform(0.5, 0.9)
        b.box(obj, origin, yaw, (0, hb / 2, -hd + 0.03), (hw, hb / 2, 0.03))
        for sx in ((-0.5, 0.5) if hw > 0.7 else (0.0,)):
            b.box(obj, origin, yaw, (sx * hw, frame_h + mh + 0.06, -hd + 0.25), (min(0.3, hw * 0.45), 0.06, 0.15))
        b.footprints.append(rect)
    elif kind == "sofa":
        hw, hd = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.48)
        place = _try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
        if place is None:
            return
        origin, yaw, rect, _ = place
        obj = b.new_object(SOFA, b.material(_pick(rng, _FABRICS), texture=_T_FABRIC, freq=50.0))
        seat = rng.uniform(0.38, 0.45)
        b.box(obj, origin, yaw, (0, seat / 2, 0.05), (hw, seat / 2, hd - 0.05))
        back = rng.uniform(0.75, 0.9)
        b.box(obj, origin, yaw, (0, back / 2, -hd + 0.1), (hw, back / 2, 0.1))
        arm = rng.uniform(0.55, 0.65)
        for sx in (-1, 1):
            b.box(obj, origin, yaw, (sx * (hw - 0.08), arm / 2, 0.05), (0.08, arm / 2, hd - 0.05))
        b.footprints.append(rect)
        # a coffee table in front
        if rng.random() < 0.6:
            th = rng.uniform(0.35, 0.45)
            tw, td = rng.uniform(0.35, 0.6), rng.uniform(0.25, 0.35)
            local = np.array([0.0, 0.0, hd + 0.35 + td])
            t_origin = origin + local @ _yaw_axes(yaw)
            trect = _footprint(t_origin, yaw, tw, td)
            if b.free(trect) and 0 < trect[0] and trect[1] < W and 0 < trect[2] and trect[3] < D:
                _add_table(b, t_origin, yaw, 2 * tw, 2 * td, th)
                b.footprints.append(trect)
                _add_small_objects(b, trect[0] + 0.1, trect[1] - 0.1, trect[2] + 0.1, trect[3] - 0.1, th,
                                   int(rng.integers(0, 3)))
    elif kind in ("cabinet", "bookshelf", "tvstand"):
        if kind == "bookshelf":
            hw, hd, h = rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.2), rng.uniform(1.2, 2.0)
        elif kind == "tvstand":
            hw, hd, h = rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.25), rng.uniform(0.4, 0.6)
        else:
            hw, hd, h = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.3), rng.uniform(0.7, 1.4)
        place = _try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
        if place is None:
            return
        origin, yaw, rect, _ = place
        obj = b.new_object(FURNITURE, b.material(_pick(rng, _WOODS), texture=_T_WOOD, freq=20.0))
        b.footprints.append(rect)
        if kind != "bookshelf":
            b.box(obj, origin, yaw, (0, h / 2, 0), (hw, h / 2, hd))
            if kind == "tvstand" or rng.random() < 0.3:  # a TV on top
                tw = min(hw * 0.9, rng.uniform(0.35, 0.6))
                th = tw * 0.58
                tv = b.new_object(TV, b.material([0.03, 0.03, 0.035], jitter=0.01, texture=_T_SCREEN))
                b.box(tv, origin, yaw, (0, h + 0.05 + th / 2, -0.05), (tw, th / 2, 0.025))
                b.box(tv, origin, yaw, (0, h + 0.025, -0.05), (0.08, 0.025, 0.06))
            else:
                # objects on top (positions drawn in the cabinet's frame)
                ax = _yaw_axes(yaw)
                for _ in range(int(rng.integers(0, 3))):
                    p = origin + np.array([rng.uniform(-0.7, 0.7) * hw, 0, rng.uniform(-0.5, 0.5) * hd]) @ ax
                    _add_small_objects(b, p[0], p[0], p[2], p[2], h, 1)
        else:
            t = 0.02
            for sx in (-1, 1):
                b.box(obj, origin, yaw, (sx * (hw - t), h / 2, 0), (t, h / 2, hd))
            b.box(obj, origin, yaw, (0, h / 2, -hd + t / 2), (hw, h / 2, t / 2))
            n_shelves = int(rng.integers(3, 6))
            levels = np.linspace(0.02, h - t, n_shelves)
            for y in levels:
                b.box(obj, origin, yaw, (0, y, 0), (hw, t, hd))
            for y0, y1 in zip(levels[:-1], levels[1:]):  # a row of books per shelf
                if rng.random() < 0.2:
                    continue
                books = b.new_object(BOOKS, b.material(_pick(rng, _VIVID), texture=_T_STRIPES, freq=80.0))
                x = -hw + 2 * t
                x_end = hw - 2 * t - rng.uniform(0, hw)
                while x < x_end:
                    bw = rng.uniform(0.015, 0.04)
                    bh = min(rng.uniform(0.15, 0.3), (y1 - y0) - 0.04)
                    bd = rng.uniform(0.1, 0.9 * hd)
                    b.box(books, origin, yaw, (x + bw, y0 + t + bh / 2, -hd + 2 * t + bd), (bw, bh / 2, bd))
                    x += 2 * bw + 0.003
    elif kind == "dining":
        hw, hd = rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.5)
        h = rng.uniform(0.7, 0.78)
        for _ in range(15):
            origin = np.array([rng.uniform(hw + 0.7, W - hw - 0.7), 0.0, rng.uniform(hd + 0.7, D - hd - 0.7)])
            yaw = rng.uniform(-0.4, 0.4) if rng.random() < 0.5 else rng.uniform(0, 2 * math.pi)
            rect = _footprint(origin, yaw, hw, hd)
            if origin[0] > 0 and origin[2] > 0 and b.free(rect, margin=0.5):
                break
        else:
            return
        _add_table(b, origin, yaw, 2 * hw, 2 * hd, h)
        b.footprints.append(rect)
        ax = _yaw_axes(yaw)
        n_chairs = int(rng.integers(0, 5))
        sides = [(0, 1), (0, -1), (1, 0), (-1, 0)]
        for k in range(n_chairs):
            sx, sz = sides[k]
            off = np.array([sx * (hw + 0.15), 0.0, sz * (hd + 0.15)])
            c_origin = origin + off @ ax
            # the chair faces the table: its back is away from the table centre
            c_yaw = yaw + math.atan2(-sx, -sz) + rng.uniform(-0.3, 0.3)
            crect = _footprint(c_origin, c_yaw, 0.25, 0.25)
            if b.free(crect, margin=0.0) and 0.05 < crect[0] and crect[1] < W - 0.05 and 0.05 < crect[2] \
                    and crect[3] < D - 0.05:
                _add_chair(b, c_origin, c_yaw)  # local +z (its front) points at the table
                b.footprints.append(crect)
        _add_small_objects(b, rect[0] + 0.15, rect[1] - 0.15, rect[2] + 0.15, rect[3] - 0.15, h,
                           int(rng.integers(0, 4)))
    elif kind == "lamp":
        for _ in range(10):
            wall = int(rng.choice(walls))
            L = _wall_length(room, wall)
            origin, _yaw = _wall_frame(room, wall, rng.uniform(0.3, L - 0.3), rng.uniform(0.25, 0.4))
            rect = (origin[0] - 0.2, origin[0] + 0.2, origin[2] - 0.2, origin[2] + 0.2)
            if b.free(rect):
                break
        else:
            return
        obj = b.new_object(OBJECTS, b.material(_pick(rng, _VIVID), texture=_T_PLAIN))
        h = rng.uniform(1.2, 1.7)
        b.cylinder(obj, origin, 0.0, (0, 0.015, 0), 0.15, 0.015)
        b.cylinder(obj, origin, 0.0, (0, h / 2, 0), 0.015, h / 2)
        b.cylinder(obj, origin, 0.0, (0, h + 0.1, 0), rng.uniform(0.12, 0.2), 0.12)
        b.footprints.append(rect)
    elif kind == "clutter":  # unlabelled stuff on the floor (NYUv2 has unlabelled pixels too)
        for _ in range(10):
            r = rng.uniform(0.1, 0.25)
            origin = np.array([rng.uniform(r + 0.05, W - r - 0.05), 0.0, rng.uniform(r + 0.05, D - r - 0.05)])
            rect = (origin[0] - r, origin[0] + r, origin[2] - r, origin[2] + r)
            if b.free(rect):
                break
        else:
            return
        obj = b.new_object(UNLABELLED, b.material(_pick(rng, _VIVID), texture=_T_FABRIC, freq=30.0))
        if rng.random() < 0.5:
            b.box(obj, origin, rng.uniform(0, math.pi), (0, r * 0.8, 0), (r * 0.8, r * 0.8, r * 0.6))
        else:
            b.sphere(obj, origin, 0.0, (0, r, 0), r)
        b.footprints.append(rect)
    elif kind == "plant":
        for _ in range(10):
            r = rng.uniform(0.12, 0.2)
            origin = np.array([rng.uniform(r + 0.1, W - r - 0.1), 0.0, rng.uniform(r + 0.1, D - r - 0.1)])
            rect = (origin[0] - r, origin[0] + r, origin[2] - r, origin[2] + r)
            if b.free(rect):
                break
        else:
            return
        obj = b.new_object(OBJECTS, b.material([0.15, 0.4, 0.12], texture=_T_FABRIC, freq=60.0,
                                               color2=[0.05, 0.2, 0.05]))
        ph = rng.uniform(0.25, 0.4)
        b.cylinder(obj, origin, 0.0, (0, ph / 2, 0), r * 0.7, ph / 2)
        b.sphere(obj, origin, 0.0, (0, ph + r * 1.2, 0), r * 1.5)
        b.footprints.append(rect)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a furnished room and a camera inside it (independent of the image resolution)."""
    b = _Builder(rng)
    W = rng.uniform(3.2, 6.0)
    D = rng.uniform(3.5, 7.0)
    H = rng.uniform(2.4, 3.0)
    room = np.array([W, H, D])

    # room surfaces: faces 0 (x=0), 1 (x=W), 2 floor, 3 ceiling, 4 (z=0), 5 (z=D)
    paint = _pick(rng, _PAINTS)
    accent = rng.random() < 0.25
    face_objects = []
    for face in range(6):
        if face == 2:
            if rng.random() < 0.6:
                mat = b.material(_pick(rng, _WOODS), texture=_T_WOOD, freq=6.0)
            else:
                mat = b.material(_pick(rng, _PAINTS) * rng.uniform(0.6, 1.0), texture=_T_TILES, freq=2.0)
            face_objects.append(b.new_object(FLOOR, mat))
        elif face == 3:
            face_objects.append(b.new_object(CEILING, b.material([0.9, 0.9, 0.88], jitter=0.04, texture=_T_PLAIN)))
        else:
            col = _pick(rng, _PAINTS) if (accent and face == 5) else paint
            face_objects.append(b.new_object(WALL, b.material(col, jitter=0.03, texture=_T_PLAIN, freq=3.0)))

    # camera first: its surroundings are kept free of furniture
    cam_wall = int(rng.choice([0, 1, 4, 5]))
    L = W if cam_wall in (4, 5) else D
    u = rng.uniform(0.25 * L, 0.75 * L)
    dist = rng.uniform(0.3, 1.0)
    cam_origin, cam_yaw = _wall_frame(room, cam_wall, u, dist)
    cam_h = rng.uniform(1.1, 1.65)
    cam_pos = cam_origin + np.array([0.0, cam_h, 0.0])
    b.footprints.append((cam_pos[0] - 0.5, cam_pos[0] + 0.5, cam_pos[2] - 0.5, cam_pos[2] + 0.5))
    to_centre = math.atan2(W / 2 - cam_pos[0], D / 2 - cam_pos[2])  # yaw whose forward is (sin, ., cos)
    look_yaw = to_centre + rng.uniform(-0.5, 0.5)
    pitch = -rng.uniform(0.08, 0.45)
    roll = rng.uniform(-0.04, 0.04)
    hfov = NYUV2_HFOV
    # camera -> world rotation (columns: right, down, forward)
    fwd = np.array([math.sin(look_yaw) * math.cos(pitch), math.sin(pitch), math.cos(look_yaw) * math.cos(pitch)])
    right = np.array([math.cos(look_yaw), 0.0, -math.sin(look_yaw)])
    down = np.cross(right, fwd)  # for yaw = pitch = 0: right=(1,0,0), fwd=(0,0,1) -> down=(0,-1,0)
    cr, sr = math.cos(roll), math.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    cam_rot = np.stack([right, down, fwd], axis=1)

    other_walls = [0, 1, 4, 5]  # every wall may hold furniture, windows and pictures
    # windows: flat decals on the walls
    for _ in range(int(rng.integers(0, 3))):
        wall = int(rng.choice(other_walls))
        Lw = _wall_length(room, wall)
        ww = rng.uniform(0.6, 1.6)
        if ww + 0.4 > Lw:
            continue
        u0 = rng.uniform(0.2, Lw - ww - 0.2)
        y0 = rng.uniform(0.7, 1.1)
        y1 = min(H - 0.2, y0 + rng.uniform(0.9, 1.6))
        mat = b.material([0.75, 0.85, 1.0], jitter=0.05, texture=_T_WINDOW, freq=1.0 / ww,
                         color2=[0.9, 0.9, 0.9])
        b.decals.append(_Decal(wall, u0, u0 + ww, y0, y1, b.new_object(WINDOW, mat)))

    # furniture: 4-10 groups drawn with replacement (at most one bed)
    kinds = ["bed", "sofa", "cabinet", "bookshelf", "tvstand", "dining", "lamp", "clutter", "plant"]
    weights = np.array([1.0, 1.2, 2.0, 1.5, 0.8, 1.5, 1.0, 1.5, 1.0])
    n_groups = int(rng.integers(4, 11))
    drawn = rng.choice(len(kinds), size=n_groups, p=weights / weights.sum())
    has_bed = False
    for k in drawn:
        if kinds[k] == "bed":
            if has_bed:
                continue
            has_bed = True
        _add_furniture_group(b, room, kinds[k], other_walls)

    # pictures: thin boxes on walls
    for _ in range(int(rng.integers(0, 4))):
        wall = int(rng.choice(other_walls))
        Lw = _wall_length(room, wall)
        pw, ph = rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45)
        if 2 * pw + 0.4 > Lw:
            continue
        u = rng.uniform(pw + 0.2, Lw - pw - 0.2)
        origin, yaw = _wall_frame(room, wall, u, 0.015)
        yc = rng.uniform(1.2, min(H - ph - 0.15, 2.0))
        mat = b.material(_pick(rng, _VIVID), texture=_T_ART, freq=rng.uniform(3.0, 12.0),
                         color2=_pick(rng, _VIVID))
        obj = b.new_object(PAINTING, mat)
        b.box(obj, origin, yaw, (0, yc, 0), (pw, ph, 0.015))

    # ceiling light
    lx, lz = W / 2 + rng.uniform(-0.5, 0.5), D / 2 + rng.uniform(-0.5, 0.5)
    lamp = b.new_object(OBJECTS, b.material([1.0, 0.97, 0.9], jitter=0.0, texture=_T_EMISSIVE))
    b.cylinder(lamp, (lx, H, lz), 0.0, (0, -0.03, 0), rng.uniform(0.15, 0.3), 0.03)

    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1.0), rng.uniform(-1, 1)])
    return Scene(
        room=room, objects=b.objects, primitives=b.primitives, decals=b.decals,
        cam_pos=cam_pos, cam_rot=cam_rot, hfov=hfov,
        light_pos=np.array([lx, H - 0.25, lz]), light_power=rng.uniform(1.5, 3.0),
        sun_dir=sun / np.linalg.norm(sun), sun_power=rng.uniform(0.1, 0.5) if b.decals else rng.uniform(0.0, 0.2),
        ambient=rng.uniform(0.25, 0.45), exposure=rng.uniform(0.8, 1.2), noise_std=rng.uniform(0.005, 0.02),
        face_objects=face_objects,
    )


# ----------------------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------------------
def _rays(scene: Scene, height: int, width: int) -> np.ndarray:
    """World-space ray directions (H, W, 3) scaled so that their camera-z component is 1 (t = depth)."""
    K = camera_intrinsics(height, width, scene.hfov)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    x = ((np.arange(width) + 0.5 - cx) / f).astype(np.float32)
    y = ((np.arange(height) + 0.5 - cy) / f).astype(np.float32)
    R = scene.cam_rot.astype(np.float32)
    # d = R @ (x, y, 1) for every pixel, as an outer sum
    return (x[None, :, None] * R[:, 0] + y[:, None, None] * R[:, 1] + R[:, 2]).astype(np.float32)


def _primitive_corners(p: _Primitive) -> np.ndarray:
    """(8, 3) world-space corners of a box enclosing the primitive."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    if p.kind == _BOX:
        return p.center + (signs * p.size) @ _yaw_axes(p.yaw)
    if p.kind == _CYL:
        r, hh = p.size
        return p.center + signs * np.array([r, hh, r])
    return p.center + signs * p.size[0]


def _screen_rect(p: _Primitive, scene: Scene, K: np.ndarray, height: int, width: int):
    """Pixel rectangle (i0, i1, j0, j1) that contains the primitive's projection, or None if empty."""
    cam = (_primitive_corners(p) - scene.cam_pos) @ scene.cam_rot  # (8, 3) camera coordinates
    z = cam[:, 2]
    if np.all(z <= 0):
        return None
    if np.any(z <= 1e-3):
        return 0, height, 0, width
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    j0 = max(int(math.floor(u.min())) - 1, 0)
    j1 = min(int(math.ceil(u.max())) + 1, width)
    i0 = max(int(math.floor(v.min())) - 1, 0)
    i1 = min(int(math.ceil(v.max())) + 1, height)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


_EPS = 1e-4


def _hit_box(o, dx, dy, dz, tcur, p: _Primitive):
    """Rays o + t (dx, dy, dz) (each (h, w)) against a yawed box.

    Returns ``mask`` (h, w): the ray enters the box at 0 < t < tcur, and for those rays only,
    ``t`` (M,) and the world normals (M, 3) of the entered face (facing the ray).
    """
    A = _yaw_axes(p.yaw)
    ol = A @ (o - p.center)
    c, s = float(A[0, 0]), float(A[2, 0])
    dls = (c * dx - s * dz, dy, s * dx + c * dz)             # ray directions in the box frame
    near, far = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / dls[k]
            ta = (float(-p.size[k] - ol[k])) * inv
            tb = (float(p.size[k] - ol[k])) * inv
            near.append(np.minimum(ta, tb))
            far.append(np.maximum(ta, tb, out=ta))
    tmin = np.maximum(np.maximum(near[0], near[1]), near[2])
    tmax = np.minimum(np.minimum(far[0], far[1]), far[2])
    mask = (tmin <= tmax) & (tmin > _EPS) & (tmin < tcur)
    if not mask.any():
        return mask, None, None
    t = tmin[mask]
    n = np.zeros((t.shape[0], 3), np.float32)
    taken = np.zeros(t.shape[0], bool)
    for k in range(3):  # the entered face is the slab whose near distance is the largest
        sel = (near[k][mask] == t) & ~taken
        taken |= sel
        n[sel] = -np.sign(dls[k][mask][sel])[:, None] * A[k].astype(np.float32)
    return mask, t, n


def _hit_cylinder(o, dx, dy, dz, tcur, p: _Primitive):
    """Like :func:`_hit_box` for a vertical cylinder (side and the cap facing the camera)."""
    r, hh = (float(v) for v in p.size)
    cx, cy, cz = (float(v) for v in p.center)
    y0, y1 = cy - hh, cy + hh
    ox, oy, oz = float(o[0]) - cx, float(o[1]), float(o[2]) - cz
    a = dx * dx + dz * dz
    bb = ox * dx + oz * dz
    disc = bb * bb - a * (ox * ox + oz * oz - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-bb - np.sqrt(disc)) / a
        ys = oy + ts * dy
        t = np.where((disc >= 0) & (ts > _EPS) & (ys >= y0) & (ys <= y1), ts, np.inf)
        cap = None
        if oy > y1 or oy < y0:  # only the cap facing the camera can be hit first
            yc = y1 if oy > y1 else y0
            tc = (yc - oy) / dy
            qx, qz = ox + tc * dx, oz + tc * dz
            cap = (tc > _EPS) & (qx * qx + qz * qz <= r * r) & (tc < t)
            t = np.where(cap, tc, t)
    mask = t < tcur
    if not mask.any():
        return mask, None, None
    tm = t[mask]
    n = np.zeros((tm.shape[0], 3), np.float32)
    n[:, 0] = (ox + tm * dx[mask]) / r
    n[:, 2] = (oz + tm * dz[mask]) / r
    if cap is not None:
        cm = cap[mask]
        n[cm] = (0.0, 1.0 if oy > y1 else -1.0, 0.0)
    return mask, tm.astype(np.float32), n


def _hit_sphere(o, dx, dy, dz, tcur, p: _Primitive):
    """Like :func:`_hit_box` for a sphere."""
    r = float(p.size[0])
    ox, oy, oz = (float(v) for v in (o - p.center))
    a = dx * dx + dy * dy + dz * dz
    bb = ox * dx + oy * dy + oz * dz
    disc = bb * bb - a * (ox * ox + oy * oy + oz * oz - r * r)
    with np.errstate(invalid="ignore"):
        ts = (-bb - np.sqrt(disc)) / a
    mask = (disc >= 0) & (ts > _EPS) & (ts < tcur)
    if not mask.any():
        return mask, None, None
    tm = ts[mask]
    n = np.stack([ox + tm * dx[mask], oy + tm * dy[mask], oz + tm * dz[mask]], axis=1) / r
    return mask, tm.astype(np.float32), n.astype(np.float32)


_HIT = {_BOX: _hit_box, _CYL: _hit_cylinder, _SPHERE: _hit_sphere}


def _rowvec_matmul(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """x @ M for x (..., 3) float32 and a small M (3, k), as broadcast sums (no multi-threaded BLAS
    call, which oversubscribes the cores when several generator processes run)."""
    M = M.astype(np.float32)
    return x[..., 0:1] * M[0] + x[..., 1:2] * M[1] + x[..., 2:3] * M[2]


def _noise(u, v, phase, freq):
    """Smooth pseudo-random field in [-1, 1] (sum of three oriented sinusoids)."""
    return (np.sin(freq * (0.83 * u + 0.56 * v) + phase[:, 0])
            + np.sin(freq * (1.37 * (-0.42 * u + 0.91 * v)) + phase[:, 1])
            + np.sin(freq * (2.11 * (0.99 * u - 0.14 * v)) + phase[:, 2])) / 3.0


def render_scene(scene: Scene, height: int, width: int, rng: np.random.Generator | None = None) -> dict:
    """Ray-cast a scene into image, label, depth, normal and instance arrays (see the module doc).

    Returns a dict with ``image`` (H, W, 3) float32 in [0, 1], ``label`` (H, W) int16 in [-1, 13),
    ``depth`` (H, W, 1) float32 > 0, ``normal`` (H, W, 3) float32 unit vectors (camera frame),
    ``instance`` (H, W) int32 > 0. `rng` draws the sensor noise (none if None).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    o = scene.cam_pos.astype(np.float32)
    D3 = _rays(scene, height, width)                          # (H, W, 3)
    K = camera_intrinsics(height, width, scene.hfov)
    Wr, Hr, Dr = (float(v) for v in scene.room)

    # the room: rays start inside, the exit through the 6 faces is the hit
    d = D3.reshape(-1, 3)
    lo = np.zeros(3, np.float32)
    hi = np.array([Wr, Hr, Dr], np.float32)
    with np.errstate(divide="ignore"):
        tf = np.where(d > 0, (hi - o) / d, (lo - o) / d)     # (N, 3) exit distance per axis
    tf = np.where(d == 0, np.inf, tf)
    axis = tf.argmin(axis=1)
    t = np.take_along_axis(tf, axis[:, None], 1)[:, 0].astype(np.float32)
    positive = np.take_along_axis(d, axis[:, None], 1)[:, 0] > 0
    face = np.array([0, 2, 4])[axis] + positive               # 0/1: x, 2/3: y (floor/ceil), 4/5: z
    normal = np.zeros_like(d)
    normal[np.arange(d.shape[0]), axis] = np.where(positive, -1.0, 1.0)
    face_obj = np.asarray(scene.face_objects)
    obj = face_obj[face].astype(np.int32)

    t = t.reshape(height, width)
    normal = normal.reshape(height, width, 3)
    obj = obj.reshape(height, width)

    # decals (windows) on walls
    if scene.decals:
        P = o + t[..., None] * D3
        face2 = face.reshape(height, width)
        for dc in scene.decals:
            along = P[..., 2] if dc.face in (0, 1) else P[..., 0]
            m = (face2 == dc.face) & (along >= dc.u0) & (along <= dc.u1) & (P[..., 1] >= dc.y0) \
                & (P[..., 1] <= dc.y1)
            obj[m] = dc.obj

    # primitives, z-buffered, each on its projected rectangle only
    dxf, dyf, dzf = (np.ascontiguousarray(D3[..., k]) for k in range(3))
    for p in scene.primitives:
        rect = _screen_rect(p, scene, K, height, width)
        if rect is None:
            continue
        i0, i1, j0, j1 = rect
        tcur = t[i0:i1, j0:j1]
        mask, tp, npv = _HIT[p.kind](o, dxf[i0:i1, j0:j1], dyf[i0:i1, j0:j1], dzf[i0:i1, j0:j1], tcur, p)
        if tp is None:
            continue
        tcur[mask] = tp
        normal[i0:i1, j0:j1][mask] = npv
        obj[i0:i1, j0:j1][mask] = p.obj

    # per-object attributes gathered per pixel
    objs = scene.objects
    labels = np.array([ob.label for ob in objs], np.int16)
    instances = np.array([ob.instance for ob in objs], np.int32)
    color = np.array([ob.material.color for ob in objs], np.float32)
    color2 = np.array([ob.material.color2 for ob in objs], np.float32)
    texture = np.array([ob.material.texture for ob in objs], np.int8)
    freq = np.array([ob.material.freq for ob in objs], np.float32)
    phase = np.array([ob.material.phase for ob in objs], np.float32)

    label = labels[obj]
    instance = instances[obj]
    P = o + t[..., None] * D3                                  # world hit points (H, W, 3)

    # texture coordinates: project the hit point on the plane most orthogonal to its normal
    an = np.abs(normal)
    dom = an.argmax(axis=-1)
    u = np.where(dom == 0, P[..., 2], P[..., 0])
    v = np.where(dom == 1, P[..., 2], P[..., 1])
    tex = texture[obj]
    fq = freq[obj]
    ph = phase[obj].reshape(-1, 4)
    c1 = color[obj]
    c2 = color2[obj]
    w = np.zeros((height, width), np.float32)                 # blend weight of color2
    emissive = np.zeros((height, width), np.float32)
    uf, vf, fqf, texf = u.reshape(-1), v.reshape(-1), fq.reshape(-1), tex.reshape(-1)
    wf = w.reshape(-1)
    ef = emissive.reshape(-1)
    for kind in np.unique(texf):
        m = texf == kind
        uu, vv, ff, pp = uf[m], vf[m], fqf[m], ph[m]
        if kind == _T_PLAIN:
            wf[m] = 0.15 * (0.5 + 0.5 * _noise(uu, vv, pp, 3.0))
        elif kind == _T_WOOD:
            # planks along u with grain: stripes warped by low-frequency noise
            grain = np.sin(ff * (vv + 0.08 * np.sin(3.1 * uu + pp[:, 0])) + pp[:, 1])
            plank = np.floor(vv * 6.0 + pp[:, 2])
            wf[m] = 0.35 * (0.5 + 0.5 * grain) + 0.25 * (np.sin(plank * 12.9898 + pp[:, 3]) * 0.5 + 0.5)
        elif kind == _T_TILES:
            s = 1.0 / np.maximum(ff, 1e-3)
            a, bq = uu / s, vv / s
            checker = (np.floor(a) + np.floor(bq)) % 2
            grout = (np.abs(a - np.round(a)) < 0.03) | (np.abs(bq - np.round(bq)) < 0.03)
            wf[m] = np.where(grout, 0.9, 0.25 * checker)
        elif kind == _T_FABRIC:
            wf[m] = 0.25 * (0.5 + 0.5 * np.sin(ff * uu + pp[:, 0]) * np.sin(ff * vv + pp[:, 1])) \
                + 0.1 * (0.5 + 0.5 * _noise(uu, vv, pp, 10.0))
        elif kind == _T_STRIPES:
            wf[m] = 0.6 * (np.sin(ff * (uu + vv) + pp[:, 0]) > 0.3)
        elif kind == _T_WINDOW:
            # bright sky gradient crossed by a frame / mullions in color2
            cell = (uu * ff * 2.0 + pp[:, 0]) % 1.0
            mull = (cell < 0.05) | (np.abs(((vv * 1.5) % 1.0) - 0.5) < 0.03)
            wf[m] = mull.astype(np.float32)
            ef[m] = np.where(mull, 0.2, 0.9 + 0.1 * np.clip(vv - 1.0, 0, 1))
        elif kind == _T_SCREEN:
            wf[m] = 0.0
            ef[m] = 0.04 * (0.5 + 0.5 * np.sin(2.0 * (uu - vv) + pp[:, 0]))
        elif kind == _T_ART:
            g = 0.5 + 0.5 * np.sin(ff * uu + pp[:, 0]) * np.cos(ff * 1.3 * vv + pp[:, 1])
            wf[m] = np.clip(g + 0.3 * _noise(uu, vv, pp, ff.mean() * 2.0), 0.0, 1.0)
        elif kind == _T_EMISSIVE:
            ef[m] = 1.0
    albedo = c1 * (1.0 - w[..., None]) + c2 * w[..., None]

    # shading: ceiling point light + directional window light + ambient
    L = scene.light_pos.astype(np.float32) - P
    dist2 = np.einsum("hwc,hwc->hw", L, L)
    ndl = np.clip(np.einsum("hwc,hwc->hw", normal, L) / np.sqrt(np.maximum(dist2, 1e-6)), 0.0, None)
    ndl_sun = np.clip(_rowvec_matmul(normal, scene.sun_dir[:, None])[..., 0], 0.0, None)
    shade = scene.ambient + scene.light_power * ndl / (1.0 + 0.25 * dist2) + scene.sun_power * ndl_sun
    # a little ambient occlusion near the floor and in the room corners
    near = np.minimum(np.minimum(P[..., 0], Wr - P[..., 0]), np.minimum(P[..., 2], Dr - P[..., 2]))
    occl = 1.0 - 0.25 * np.exp(-np.minimum(near, np.minimum(P[..., 1], Hr - P[..., 1])) / 0.15)
    radiance = albedo * (shade * occl)[..., None] * (1.0 - emissive[..., None]) + emissive[..., None] * c1
    rgb = np.clip(radiance * scene.exposure, 0.0, None) ** (1.0 / 2.2)
    # vignetting and sensor noise
    yy = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    xx = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    rgb = rgb * (1.0 - 0.35 * (xx[None, :] ** 2 + yy[:, None] ** 2))[..., None]
    if rng is not None and scene.noise_std > 0:
        rgb = rgb + np.float32(scene.noise_std) * rng.standard_normal(rgb.shape, dtype=np.float32)
    image = np.clip(rgb, 0.0, 1.0).astype(np.float32)

    # camera-frame normals (row vectors: n_cam = n_world @ R), oriented towards the camera
    n_cam = _rowvec_matmul(normal, scene.cam_rot)
    ray_cam = np.stack(np.broadcast_arrays(
        ((np.arange(width, dtype=np.float32) + 0.5 - K[0, 2]) / K[0, 0])[None, :],
        ((np.arange(height, dtype=np.float32) + 0.5 - K[1, 2]) / K[1, 1])[:, None],
        np.ones((1, 1), np.float32)), axis=-1)
    flip = np.einsum("hwc,hwc->hw", n_cam, ray_cam) > 0
    n_cam[flip] *= -1
    n_cam /= np.linalg.norm(n_cam, axis=-1, keepdims=True)

    return {
        "image": image,
        "label": label.astype(np.int16),
        "depth": t[..., None].astype(np.float32),
        "normal": n_cam.astype(np.float32),
        "instance": instance.astype(np.int32),
    }


def _scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng([int(seed), int(stream), int(index), SYNTHETIC_VERSION])


def synthesize(index: int, seed: int = 0, stream: str | int = "train", height: int = 288,
               width: int = 384) -> dict:
    """Render scene `index` of a random stream (see :data:`STREAMS`) at height x width.

    The scene (geometry, materials, camera, lights) depends only on (seed, stream, index); the
    resolution changes only the sampling. Returns the dict of :func:`render_scene`.
    """
    if isinstance(stream, str) and stream not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)} or an int, got {stream!r}")
    s = STREAMS[stream] if isinstance(stream, str) else int(stream)
    rng = _scene_rng(seed, s, index)
    scene = sample_scene(rng)
    return render_scene(scene, height, width, rng=rng)


# ----------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------
def _write_one(args) -> None:
    root, split, index, seed, height, width = args
    sample = synthesize(index, seed=seed, stream=split, height=height, width=width)
    base = Path(root) / split
    for key in SPLIT_FOLDERS:
        np.save(base / key / f"{index}.npy", sample[key])


def _params(n_train, n_val, seed, height, width) -> dict:
    return {"version": SYNTHETIC_VERSION, "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed),
            "height": int(height), "width": int(width)}


def _check_counts(n_train, n_val, height, width):
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or v < 8:
            raise ValueError(f"{name} must be an int >= 8, got {v!r}")


def generate_synthetic(root: str | os.PathLike, n_train: int, n_val: int, seed: int = 0, height: int = 288,
                       width: int = 384, workers: int | None = None, progress: bool = False) -> Path:
    """Render `n_train` + `n_val` scenes into `root` in the preprocessed-NYUv2 layout; return `root`.

    Layout: ``root/{train,val}/{image,label,depth,normal,instance}/<i>.npy`` with image (H, W, 3)
    float32 in [0, 1], label (H, W) int16 in [-1, 13), depth (H, W, 1) float32 (metres along the
    camera z axis), normal (H, W, 3) float32 (camera frame, unit), instance (H, W) int32; and
    ``root/meta.json`` (classes, camera model, generation parameters, measured images/s), written
    last: its presence marks a complete dataset. Existing files are overwritten.

    Scenes are rendered in `workers` processes (default: the CPU count, at most 8); the output does
    not depend on the number of workers.
    """
    _check_counts(n_train, n_val, height, width)
    root = Path(root)
    meta_path = root / META_FILE
    if meta_path.exists():
        meta_path.unlink()  # the dataset is incomplete until meta.json is written again
    for split in ("train", "val"):
        for key in SPLIT_FOLDERS:
            (root / split / key).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), split, i, seed, height, width)
            for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(int(workers), len(jobs) // 8 or 1))
    bar = _progress(len(jobs), progress, "synthetic scenes")
    t0 = time.perf_counter()
    if workers == 1:
        for job in jobs:
            _write_one(job)
            bar.update(1)
    else:
        import multiprocessing as mp

        # fork is much cheaper than spawn (no re-import of torch); the workers only use numpy
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=4):
                bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    for split, n in (("train", n_train), ("val", n_val)):  # files left over from a larger earlier run
        for key in SPLIT_FOLDERS:
            for f in (root / split / key).glob("*.npy"):
                if not f.stem.isdigit() or int(f.stem) >= n:
                    f.unlink()
    meta = {
        "format": "tensoradapt synthetic NYUv2 layout",
        "classes": list(CLASSES),
        "ignore_label": -1,
        "arrays": {
            "image": "(H, W, 3) float32 in [0, 1]",
            "label": "(H, W) int16, -1 = unlabelled",
            "depth": "(H, W, 1) float32, metres along the camera z axis, 0 = invalid",
            "normal": "(H, W, 3) float32 unit, camera frame x right / y down / z forward, 0 = invalid",
            "instance": "(H, W) int32 object id, > 0",
        },
        "camera": "pinhole, square pixels, principal point at the image centre (pixel (i, j) centre at "
                  "u = j + 0.5, v = i + 0.5); K below (same for every image)",
        "hfov_deg": math.degrees(NYUV2_HFOV),
        "K": camera_intrinsics(height, width, NYUV2_HFOV).tolist(),
        "params": _params(n_train, n_val, seed, height, width),
        "workers": workers,
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(jobs) / elapsed, 2) if elapsed > 0 else None,
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return root


def synthetic_is_complete(root: str | os.PathLike, n_train: int | None = None, n_val: int | None = None,
                          seed: int | None = None, height: int | None = None, width: int | None = None) -> bool:
    """True if `root` holds a finished :func:`generate_synthetic` output with the given parameters."""
    root = Path(root)
    try:
        meta = json.loads((root / META_FILE).read_text())
        params = meta["params"]
    except (OSError, ValueError, KeyError):
        return False
    want = {"n_train": n_train, "n_val": n_val, "seed": seed, "height": height, "width": width}
    if params.get("version") != SYNTHETIC_VERSION:
        return False
    if any(v is not None and params.get(k) != v for k, v in want.items()):
        return False
    for split, n in (("train", params["n_train"]), ("val", params["n_val"])):
        for key in SPLIT_FOLDERS:
            folder = root / split / key
            if not folder.is_dir() or sum(1 for f in folder.iterdir() if f.suffix == ".npy") != n:
                return False
    return True


def default_synthetic_root(n_train: int = DEFAULT_N_TRAIN, n_val: int = DEFAULT_N_VAL, seed: int = 0,
                           height: int = 288, width: int = 384) -> Path:
    """The cache folder of a synthetic dataset: ``cache_dir("synthetic", "v<version>-<params>")``."""
    from .._utils import cache_dir

    name = f"v{SYNTHETIC_VERSION}-train{n_train}-val{n_val}-seed{seed}-{height}x{width}"
    return cache_dir("synthetic", name)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (so that concurrent DDP ranks build the data once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_synthetic(root: str | os.PathLike | None = None, n_train: int = DEFAULT_N_TRAIN,
                     n_val: int = DEFAULT_N_VAL, seed: int = 0, height: int = 288, width: int = 384,
                     workers: int | None = None, progress: bool = True) -> Path:
    """Return a complete synthetic dataset folder, generating it when missing or incomplete.

    `root` defaults to :func:`default_synthetic_root` (under ``$TENSORADAPT_CACHE``). A folder that
    holds a finished dataset with these parameters (``meta.json`` present, every file there) is reused
    as is; anything else in it is deleted and regenerated. A file lock makes concurrent callers wait
    for one build.

    The default size, 600 train / 200 val scenes at 288x384, renders in about half a minute on 2 CPU
    cores (~2.8 GB of .npy), which keeps the first run of the experiment CLI inside its 10-minute budget,
    while giving as many distinct training scenes as a CPU run can use (a few epochs at the tiny SAM's
    resolution) and a validation set large enough for stable metrics.
    """
    _check_counts(n_train, n_val, height, width)
    root = Path(root) if root is not None else default_synthetic_root(n_train, n_val, seed, height, width)
    root.mkdir(parents=True, exist_ok=True)
    if synthetic_is_complete(root, n_train, n_val, seed, height, width):
        return root
    with _file_lock(root.parent / f".{root.name}.lock"):
        if synthetic_is_complete(root, n_train, n_val, seed, height, width):
            return root
        for split in ("train", "val"):
            if (root / split).exists():
                shutil.rmtree(root / split)
        (root / META_FILE).unlink(missing_ok=True)
        return generate_synthetic(root, n_train, n_val, seed=seed, height=height, width=width,
                                  workers=workers, progress=progress)


class _NullBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate the synthetic NYUv2-layout dataset and report images/s.")
    ap.add_argument("--root", type=Path, default=None, help="output folder (default: the cache folder)")
    ap.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    ap.add_argument("--n-val", type=int, default=DEFAULT_N_VAL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    ap.add_argument("--render-only", action="store_true",
                    help="benchmark rendering in this process without writing files")
    args = ap.parse_args(argv)
    if args.render_only:
        n = args.n_train
        t0 = time.perf_counter()
        for i in range(n):
            synthesize(i, seed=args.seed, stream="train", height=args.height, width=args.width)
        dt = time.perf_counter() - t0
        print(f"rendered {n} scenes at {args.height}x{args.width} in {dt:.2f} s: {n / dt:.1f} images/s "
              f"(1 process, no writing)")
        return
    root = args.root if args.root is not None else default_synthetic_root(
        args.n_train, args.n_val, args.seed, args.height, args.width)
    if args.force:
        (Path(root) / META_FILE).unlink(missing_ok=True)
    t0 = time.perf_counter()
    out = ensure_synthetic(root, args.n_train, args.n_val, args.seed, args.height, args.width,
                           workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    meta = json.loads((out / META_FILE).read_text())
    print(f"{out}: {args.n_train} train + {args.n_val} val scenes; generation {meta['seconds']} s, "
          f"{meta['images_per_s']} images/s with {meta['workers']} worker(s) (this call {dt:.1f} s)")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
