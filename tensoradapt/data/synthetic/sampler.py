"""Sampling a scene: a furnished room with windows, pictures, lights and a camera standing in it.

Every random draw comes from one generator, in a fixed order, so a scene is a deterministic function of
that generator's seed (see :func:`~.streams.scene_rng`) and independent of the rendered resolution.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .camera import NYUV2_HFOV, camera_rotation
from .classes import CEILING, FLOOR, OBJECTS, PAINTING, WALL, WINDOW
from .furniture import FURNITURE_KINDS, add_furniture
from .materials import PAINTS, VIVID, WOODS, Texture, pick
from .scene import Decal, Scene, SceneBuilder, wall_frame, wall_length

__all__ = ["sample_scene"]

#: Every wall may hold furniture, windows and pictures (room faces 0, 1, 4, 5).
_WALLS = [0, 1, 4, 5]


def _room_surfaces(b: SceneBuilder) -> list[int]:
    """Objects for the 6 room faces (0: x=0, 1: x=W, 2 floor, 3 ceiling, 4: z=0, 5: z=D), in face order."""
    rng = b.rng
    paint = pick(rng, PAINTS)
    accent = rng.random() < 0.25
    face_objects = []
    for face in range(6):
        if face == 2:
            if rng.random() < 0.6:
                mat = b.material(pick(rng, WOODS), texture=Texture.WOOD, freq=6.0)
            else:
                mat = b.material(pick(rng, PAINTS) * rng.uniform(0.6, 1.0), texture=Texture.TILES, freq=2.0)
            face_objects.append(b.new_object(FLOOR, mat))
        elif face == 3:
            face_objects.append(b.new_object(CEILING, b.material([0.9, 0.9, 0.88], jitter=0.04,
                                                                 texture=Texture.PLAIN)))
        else:
            col = pick(rng, PAINTS) if (accent and face == 5) else paint
            face_objects.append(b.new_object(WALL, b.material(col, jitter=0.03, texture=Texture.PLAIN, freq=3.0)))
    return face_objects


def _camera(b: SceneBuilder, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A camera near a wall looking roughly at the room centre, slightly down: (position (3,), camera-to-world
    rotation (3, 3)). Its surroundings are reserved so that no furniture stands in front of the lens."""
    rng = b.rng
    W, _, D = room
    cam_wall = int(rng.choice([0, 1, 4, 5]))
    L = W if cam_wall in (4, 5) else D
    u = rng.uniform(0.25 * L, 0.75 * L)
    dist = rng.uniform(0.3, 1.0)
    cam_origin, _ = wall_frame(room, cam_wall, u, dist)
    cam_h = rng.uniform(1.1, 1.65)
    cam_pos = cam_origin + np.array([0.0, cam_h, 0.0])
    b.footprints.append((cam_pos[0] - 0.5, cam_pos[0] + 0.5, cam_pos[2] - 0.5, cam_pos[2] + 0.5))
    to_centre = math.atan2(W / 2 - cam_pos[0], D / 2 - cam_pos[2])  # yaw whose forward is (sin, ., cos)
    look_yaw = to_centre + rng.uniform(-0.5, 0.5)
    pitch = -rng.uniform(0.08, 0.45)
    roll = rng.uniform(-0.04, 0.04)
    return cam_pos, camera_rotation(look_yaw, pitch, roll)


def _windows(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """0-2 windows: flat decals on the walls."""
    rng = b.rng
    H = room[1]
    for _ in range(int(rng.integers(0, 3))):
        wall = int(rng.choice(walls))
        Lw = wall_length(room, wall)
        ww = rng.uniform(0.6, 1.6)
        if ww + 0.4 > Lw:
            continue
        u0 = rng.uniform(0.2, Lw - ww - 0.2)
        y0 = rng.uniform(0.7, 1.1)
        y1 = min(H - 0.2, y0 + rng.uniform(0.9, 1.6))
        mat = b.material([0.75, 0.85, 1.0], jitter=0.05, texture=Texture.WINDOW, freq=1.0 / ww,
                         color2=[0.9, 0.9, 0.9])
        b.decals.append(Decal(wall, u0, u0 + ww, y0, y1, b.new_object(WINDOW, mat)))


def _furnish(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """4-10 furniture groups drawn with replacement by their weights (a kind past its per-room limit is
    skipped)."""
    rng = b.rng
    kinds = list(FURNITURE_KINDS.values())
    weights = np.array([k.weight for k in kinds])
    n_groups = int(rng.integers(4, 11))
    drawn = rng.choice(len(kinds), size=n_groups, p=weights / weights.sum())
    count = dict.fromkeys(FURNITURE_KINDS, 0)
    for i in drawn:
        kind = kinds[i]
        if kind.max_per_room is not None and count[kind.name] >= kind.max_per_room:
            continue
        count[kind.name] += 1
        add_furniture(b, room, kind.name, walls)


def _pictures(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """0-3 pictures: thin boxes on the walls."""
    rng = b.rng
    H = room[1]
    for _ in range(int(rng.integers(0, 4))):
        wall = int(rng.choice(walls))
        Lw = wall_length(room, wall)
        pw, ph = rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45)
        if 2 * pw + 0.4 > Lw:
            continue
        u = rng.uniform(pw + 0.2, Lw - pw - 0.2)
        origin, yaw = wall_frame(room, wall, u, 0.015)
        yc = rng.uniform(1.2, min(H - ph - 0.15, 2.0))
        mat = b.material(pick(rng, VIVID), texture=Texture.ART, freq=rng.uniform(3.0, 12.0),
                         color2=pick(rng, VIVID))
        obj = b.new_object(PAINTING, mat)
        b.box(obj, origin, yaw, (0, yc, 0), (pw, ph, 0.015))


def _ceiling_lamp(b: SceneBuilder, room: np.ndarray) -> tuple[float, float]:
    """An emissive disc on the ceiling near its centre; returns its (x, z)."""
    rng = b.rng
    W, H, D = room
    lx, lz = W / 2 + rng.uniform(-0.5, 0.5), D / 2 + rng.uniform(-0.5, 0.5)
    lamp = b.new_object(OBJECTS, b.material([1.0, 0.97, 0.9], jitter=0.0, texture=Texture.EMISSIVE))
    b.cylinder(lamp, (lx, H, lz), 0.0, (0, -0.03, 0), rng.uniform(0.15, 0.3), 0.03)
    return lx, lz


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a furnished room and a camera inside it (independent of the image resolution)."""
    b = SceneBuilder(rng)
    W = rng.uniform(3.2, 6.0)
    D = rng.uniform(3.5, 7.0)
    H = rng.uniform(2.4, 3.0)
    room = np.array([W, H, D])
    face_objects = _room_surfaces(b)
    cam_pos, cam_rot = _camera(b, room)  # first: its surroundings are kept free of furniture
    _windows(b, room, _WALLS)
    _furnish(b, room, _WALLS)
    _pictures(b, room, _WALLS)
    lx, lz = _ceiling_lamp(b, room)
    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1.0), rng.uniform(-1, 1)])
    return Scene(
        room=room, objects=b.objects, primitives=b.primitives, decals=b.decals,
        cam_pos=cam_pos, cam_rot=cam_rot, hfov=NYUV2_HFOV,
        light_pos=np.array([lx, H - 0.25, lz]), light_power=rng.uniform(1.5, 3.0),
        sun_dir=sun / np.linalg.norm(sun), sun_power=rng.uniform(0.1, 0.5) if b.decals else rng.uniform(0.0, 0.2),
        ambient=rng.uniform(0.25, 0.45), exposure=rng.uniform(0.8, 1.2), noise_std=rng.uniform(0.005, 0.02),
        face_objects=face_objects,
    )
