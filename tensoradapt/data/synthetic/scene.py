"""The scene model: a room, the objects in it (made of primitives and wall decals), a camera and lights;
and the builder that collects them while a scene is sampled, with the placement helpers furniture uses.

World frame: x along the room width, y up, z along the room depth; the room spans [0, W] x [0, H] x [0, D]
metres. Room faces are numbered 0 (x = 0), 1 (x = W), 2 floor, 3 ceiling, 4 (z = 0), 5 (z = D).
Furniture is built in a local frame: origin on the floor, rotated by a yaw about +y, local +z pointing
away from the wall it stands against.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from .materials import Material, Texture

__all__ = [
    "Shape", "SceneObject", "Primitive", "Decal", "Scene", "SceneBuilder", "Rect", "yaw_axes", "footprint",
    "wall_frame", "wall_length", "try_against_wall",
]

#: An axis-aligned rectangle on the floor: (x_min, x_max, z_min, z_max).
Rect = tuple[float, float, float, float]


class Shape(enum.IntEnum):
    """Kind of a primitive (the ray caster has one intersection routine per shape)."""

    BOX = 0
    CYLINDER = 1   # vertical axis
    SPHERE = 2


@dataclass
class SceneObject:
    """One labelled thing (a wall, a chair, a row of books): all its primitives share class, id and material."""

    label: int                 # class id in [0, 13) or -1
    instance: int              # > 0
    material: Material


@dataclass
class Primitive:
    """A box, vertical cylinder or sphere belonging to object `obj`."""

    kind: int                  # a Shape
    obj: int                   # index into Scene.objects
    center: np.ndarray         # (3,) world; for a cylinder (x, y_mid, z) of its axis
    size: np.ndarray           # box: half extents (3,); cylinder: (radius, half height); sphere: (radius,)
    yaw: float = 0.0           # box rotation about the vertical axis (radians)


@dataclass
class Decal:
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

    The camera is given by its centre, a camera-to-world rotation (columns = camera x right, y down,
    z forward in world coordinates) and its horizontal field of view.
    """

    room: np.ndarray                      # (3,) W, H, D
    objects: list[SceneObject]
    primitives: list[Primitive]
    decals: list[Decal]
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


def yaw_axes(yaw: float) -> np.ndarray:
    """Rows = the local x, y, z axes (world coordinates) of a frame rotated by `yaw` about +y."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


class SceneBuilder:
    """Collects objects, primitives, decals and occupied floor rectangles while a scene is being sampled."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.objects: list[SceneObject] = []
        self.primitives: list[Primitive] = []
        self.decals: list[Decal] = []
        self.footprints: list[Rect] = []  # xmin, xmax, zmin, zmax

    # materials ---------------------------------------------------------------------------
    def material(self, base: ArrayLike, jitter: float = 0.08, texture: int = Texture.PLAIN, freq: float = 8.0,
                 color2: Optional[ArrayLike] = None, dark: float = 0.6) -> Material:
        """A material whose colour is `base` (3,) jittered; `color2` defaults to the colour times `dark`."""
        rng = self.rng
        base = np.asarray(base, dtype=np.float64)
        color = np.clip(base * (1.0 + rng.uniform(-jitter, jitter, 3)) + rng.uniform(-jitter, jitter) * 0.3,
                        0.02, 0.95)
        if color2 is None:
            color2 = color * dark
        return Material(color, np.clip(np.asarray(color2, float), 0.0, 1.0), texture,
                        freq * rng.uniform(0.8, 1.25), rng.uniform(0, 2 * math.pi, 4))

    def new_object(self, label: int, material: Material) -> int:
        """Add an object (instance ids count from 1); return its index."""
        self.objects.append(SceneObject(label, len(self.objects) + 1, material))
        return len(self.objects) - 1

    # primitives in an object's local frame (origin on the floor, yaw about y) --------------
    def box(self, obj: int, origin: ArrayLike, yaw: float, local_center: ArrayLike, half: ArrayLike) -> None:
        """A box with half extents `half` (3,) centred at `local_center`, turned with the frame."""
        ax = yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(Primitive(Shape.BOX, obj, c, np.asarray(half, float), yaw))

    def cylinder(self, obj: int, origin: ArrayLike, yaw: float, local_center: ArrayLike, radius: float,
                 half_height: float) -> None:
        """A vertical cylinder whose axis midpoint is `local_center`."""
        ax = yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(Primitive(Shape.CYLINDER, obj, c, np.array([radius, half_height], float)))

    def sphere(self, obj: int, origin: ArrayLike, yaw: float, local_center: ArrayLike, radius: float) -> None:
        ax = yaw_axes(yaw)
        c = np.asarray(origin, float) + np.asarray(local_center, float) @ ax
        self.primitives.append(Primitive(Shape.SPHERE, obj, c, np.array([radius], float)))

    # placement ----------------------------------------------------------------------------
    def free(self, rect: Rect, margin: float = 0.05) -> bool:
        """True if the floor rectangle `rect` keeps `margin` from every occupied footprint."""
        x0, x1, z0, z1 = rect
        for a0, a1, b0, b1 in self.footprints:
            if x0 < a1 + margin and a0 < x1 + margin and z0 < b1 + margin and b0 < z1 + margin:
                return False
        return True


def footprint(origin: np.ndarray, yaw: float, half_w: float, half_d: float) -> Rect:
    """Axis-aligned xz rectangle enclosing a (2 half_w) x (2 half_d) footprint rotated by yaw."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    ex = half_w * c + half_d * s
    ez = half_w * s + half_d * c
    return (origin[0] - ex, origin[0] + ex, origin[2] - ez, origin[2] + ez)


def wall_frame(room: np.ndarray, wall: int, u: float, dist: float) -> tuple[np.ndarray, float]:
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


def wall_length(room: np.ndarray, wall: int) -> float:
    """Length of a wall (faces 0 and 1 run along the depth, 4 and 5 along the width)."""
    return room[2] if wall in (0, 1) else room[0]


def try_against_wall(b: SceneBuilder, room: np.ndarray, wall: int, half_w: float, half_d: float,
                     tries: int = 12, gap: float = 0.02) -> Optional[tuple[np.ndarray, float, Rect, float]]:
    """A free spot for a (2 half_w) x (2 half_d) piece backed against `wall`, drawn up to `tries` times:
    (origin, yaw, footprint rect, u along the wall), or None."""
    rng = b.rng
    L = wall_length(room, wall)
    if 2 * half_w + 0.2 > L:
        return None
    for _ in range(tries):
        u = rng.uniform(half_w + 0.1, L - half_w - 0.1)
        origin, yaw = wall_frame(room, wall, u, half_d + gap)
        rect = footprint(origin, yaw, half_w, half_d)
        if b.free(rect):
            return origin, yaw, rect, u
    return None
