"""Furniture: one builder function per kind, in a registry that :func:`~.sampler.sample_scene` draws from.

A builder ``build(b, room, walls)`` draws its sizes, finds a free spot (against one of `walls`, or in the
room), and adds its objects and primitives to the :class:`~.scene.SceneBuilder` `b`; when no spot is free
it adds nothing. :func:`furniture` registers a builder with its relative frequency. Adding a kind is one
decorated function here; it changes the scene distribution, so it goes with a ``SYNTHETIC_VERSION`` bump.
The registration order is part of the distribution (the sampler draws kinds by their index in
:data:`FURNITURE_KINDS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .classes import BED, BOOKS, CHAIR, FURNITURE as FURNITURE_CLASS, OBJECTS, SOFA, TABLE, TV, UNLABELLED
from .materials import FABRICS, VIVID, WOODS, Texture, pick
from .scene import Rect, SceneBuilder, footprint, try_against_wall, wall_frame, wall_length, yaw_axes

__all__ = ["FurnitureKind", "FURNITURE_KINDS", "furniture", "add_furniture", "add_table", "add_chair",
           "add_small_objects"]

#: build(builder, room (3,) = W, H, D, walls that may hold it)
Build = Callable[[SceneBuilder, np.ndarray, Sequence[int]], None]


@dataclass(frozen=True)
class FurnitureKind:
    name: str
    build: Build
    weight: float                          # relative frequency of the kind among a room's groups
    max_per_room: Optional[int] = None     # further draws of the kind are skipped


#: name -> kind, in registration order (part of the scene distribution).
FURNITURE_KINDS: dict[str, FurnitureKind] = {}


def furniture(name: str, weight: float, max_per_room: Optional[int] = None) -> Callable[[Build], Build]:
    """Register the decorated builder as furniture kind `name` drawn with relative frequency `weight`."""
    def register(build: Build) -> Build:
        if name in FURNITURE_KINDS:
            raise ValueError(f"furniture kind {name!r} is registered twice")
        FURNITURE_KINDS[name] = FurnitureKind(name, build, float(weight), max_per_room)
        return build
    return register


def add_furniture(b: SceneBuilder, room: np.ndarray, kind: str, walls: Sequence[int]) -> None:
    """Build one group of furniture `kind` (a key of :data:`FURNITURE_KINDS`) into `b`."""
    if kind not in FURNITURE_KINDS:
        raise ValueError(f"kind must be one of {list(FURNITURE_KINDS)}, got {kind!r}")
    FURNITURE_KINDS[kind].build(b, room, walls)


# pieces shared by several kinds ---------------------------------------------------------------
def add_table(b: SceneBuilder, origin: np.ndarray, yaw: float, w: float, d: float, h: float,
              label: int = TABLE) -> int:
    """A w x d table of height h (four legs, or a pedestal); returns its object index."""
    rng = b.rng
    wood = pick(rng, WOODS)
    obj = b.new_object(label, b.material(wood, texture=Texture.WOOD, freq=25.0))
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


def add_chair(b: SceneBuilder, origin: np.ndarray, yaw: float) -> int:
    """A chair whose front is the local +z; returns its object index."""
    rng = b.rng
    seat_h = rng.uniform(0.42, 0.48)
    s = rng.uniform(0.20, 0.25)
    fabric = rng.random() < 0.5
    mat = b.material(pick(rng, FABRICS) if fabric else pick(rng, WOODS),
                     texture=Texture.FABRIC if fabric else Texture.WOOD, freq=40.0 if fabric else 25.0)
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


def add_small_objects(b: SceneBuilder, x0: float, x1: float, z0: float, z1: float, top: float,
                      count: int) -> None:
    """Vases, bowls, boxes and books standing on a horizontal surface at height `top`."""
    rng = b.rng
    for _ in range(count):
        x = rng.uniform(x0, x1)
        z = rng.uniform(z0, z1)
        kind = rng.random()
        if kind < 0.35:  # a stack of books lying flat
            obj = b.new_object(BOOKS, b.material(pick(rng, VIVID), texture=Texture.STRIPES, freq=60.0))
            n = int(rng.integers(1, 4))
            y = top
            yaw = rng.uniform(-0.5, 0.5)
            for _k in range(n):
                hh = rng.uniform(0.012, 0.025)
                b.box(obj, (x, y, z), yaw, (0, hh, 0), (rng.uniform(0.08, 0.12), hh, rng.uniform(0.10, 0.15)))
                y += 2 * hh
        elif kind < 0.7:  # vase / cup / bottle
            obj = b.new_object(OBJECTS, b.material(pick(rng, VIVID), texture=Texture.PLAIN))
            r = rng.uniform(0.03, 0.08)
            hh = rng.uniform(0.05, 0.15)
            b.cylinder(obj, (x, top, z), 0.0, (0, hh, 0), r, hh)
            if rng.random() < 0.4:  # plant or ball on top
                b.sphere(obj, (x, top, z), 0.0, (0, 2 * hh + r, 0), r * 1.3)
        else:  # ball / bowl / fruit
            obj = b.new_object(OBJECTS, b.material(pick(rng, VIVID), texture=Texture.PLAIN))
            r = rng.uniform(0.04, 0.1)
            b.sphere(obj, (x, top, z), 0.0, (0, r, 0), r)


def _free_floor_spot(b: SceneBuilder, room: np.ndarray, r_lo: float, r_hi: float,
                     pad: float) -> Optional[tuple[np.ndarray, float, Rect]]:
    """Up to 10 draws of a radius r and a free square of half side r at least `pad` from the walls:
    (origin, r, rect), or None."""
    rng = b.rng
    W, _, D = room
    for _ in range(10):
        r = rng.uniform(r_lo, r_hi)
        origin = np.array([rng.uniform(r + pad, W - r - pad), 0.0, rng.uniform(r + pad, D - r - pad)])
        rect = (origin[0] - r, origin[0] + r, origin[2] - r, origin[2] + r)
        if b.free(rect):
            return origin, r, rect
    return None


# the kinds, in the order the sampler draws them ----------------------------------------------
@furniture("bed", weight=1.0, max_per_room=1)
def bed(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    rng = b.rng
    hw, hd = rng.uniform(0.5, 1.0), rng.uniform(0.95, 1.1)
    place = try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
    if place is None:
        return
    origin, yaw, rect, _ = place
    obj = b.new_object(BED, b.material(pick(rng, FABRICS), texture=Texture.STRIPES, freq=6.0))
    frame_h = rng.uniform(0.2, 0.35)
    b.box(obj, origin, yaw, (0, frame_h / 2, 0), (hw, frame_h / 2, hd))
    mh = rng.uniform(0.15, 0.25)
    b.box(obj, origin, yaw, (0, frame_h + mh / 2, 0.02), (hw - 0.03, mh / 2, hd - 0.05))
    hb = rng.uniform(0.5, 0.9)
    b.box(obj, origin, yaw, (0, hb / 2, -hd + 0.03), (hw, hb / 2, 0.03))
    for sx in ((-0.5, 0.5) if hw > 0.7 else (0.0,)):  # pillows
        b.box(obj, origin, yaw, (sx * hw, frame_h + mh + 0.06, -hd + 0.25), (min(0.3, hw * 0.45), 0.06, 0.15))
    b.footprints.append(rect)


@furniture("sofa", weight=1.2)
def sofa(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """A sofa against a wall, often with a coffee table (and small objects on it) in front."""
    rng = b.rng
    W, _, D = room
    hw, hd = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.48)
    place = try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
    if place is None:
        return
    origin, yaw, rect, _ = place
    obj = b.new_object(SOFA, b.material(pick(rng, FABRICS), texture=Texture.FABRIC, freq=50.0))
    seat = rng.uniform(0.38, 0.45)
    b.box(obj, origin, yaw, (0, seat / 2, 0.05), (hw, seat / 2, hd - 0.05))
    back = rng.uniform(0.75, 0.9)
    b.box(obj, origin, yaw, (0, back / 2, -hd + 0.1), (hw, back / 2, 0.1))
    arm = rng.uniform(0.55, 0.65)
    for sx in (-1, 1):
        b.box(obj, origin, yaw, (sx * (hw - 0.08), arm / 2, 0.05), (0.08, arm / 2, hd - 0.05))
    b.footprints.append(rect)
    if rng.random() < 0.6:  # a coffee table in front
        th = rng.uniform(0.35, 0.45)
        tw, td = rng.uniform(0.35, 0.6), rng.uniform(0.25, 0.35)
        local = np.array([0.0, 0.0, hd + 0.35 + td])
        t_origin = origin + local @ yaw_axes(yaw)
        trect = footprint(t_origin, yaw, tw, td)
        if b.free(trect) and 0 < trect[0] and trect[1] < W and 0 < trect[2] and trect[3] < D:
            add_table(b, t_origin, yaw, 2 * tw, 2 * td, th)
            b.footprints.append(trect)
            add_small_objects(b, trect[0] + 0.1, trect[1] - 0.1, trect[2] + 0.1, trect[3] - 0.1, th,
                              int(rng.integers(0, 3)))


def _storage_unit(b: SceneBuilder, room: np.ndarray, walls: Sequence[int], hw: float,
                  hd: float) -> Optional[tuple[int, np.ndarray, float]]:
    """Place a (2 hw) x (2 hd) storage piece against a wall and create its (furniture-class, wooden)
    object: (object index, origin, yaw), or None when no spot is free."""
    rng = b.rng
    place = try_against_wall(b, room, int(rng.choice(walls)), hw, hd)
    if place is None:
        return None
    origin, yaw, rect, _ = place
    obj = b.new_object(FURNITURE_CLASS, b.material(pick(rng, WOODS), texture=Texture.WOOD, freq=20.0))
    b.footprints.append(rect)
    return obj, origin, yaw


def _closed_unit(b: SceneBuilder, room: np.ndarray, walls: Sequence[int], hw: float, hd: float, h: float,
                 with_tv: bool) -> None:
    """A closed block of height h against a wall with a TV on top (always if `with_tv`, else sometimes)
    or else a few small objects."""
    rng = b.rng
    placed = _storage_unit(b, room, walls, hw, hd)
    if placed is None:
        return
    obj, origin, yaw = placed
    b.box(obj, origin, yaw, (0, h / 2, 0), (hw, h / 2, hd))
    if with_tv or rng.random() < 0.3:  # a TV on top
        tw = min(hw * 0.9, rng.uniform(0.35, 0.6))
        th = tw * 0.58
        tv = b.new_object(TV, b.material([0.03, 0.03, 0.035], jitter=0.01, texture=Texture.SCREEN))
        b.box(tv, origin, yaw, (0, h + 0.05 + th / 2, -0.05), (tw, th / 2, 0.025))
        b.box(tv, origin, yaw, (0, h + 0.025, -0.05), (0.08, 0.025, 0.06))
    else:
        # objects on top (positions drawn in the cabinet's frame)
        ax = yaw_axes(yaw)
        for _ in range(int(rng.integers(0, 3))):
            p = origin + np.array([rng.uniform(-0.7, 0.7) * hw, 0, rng.uniform(-0.5, 0.5) * hd]) @ ax
            add_small_objects(b, p[0], p[0], p[2], p[2], h, 1)


@furniture("cabinet", weight=2.0)
def cabinet(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    rng = b.rng
    hw, hd, h = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.3), rng.uniform(0.7, 1.4)
    _closed_unit(b, room, walls, hw, hd, h, with_tv=False)


@furniture("bookshelf", weight=1.5)
def bookshelf(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """Open shelves against a wall, most of them holding a row of books."""
    rng = b.rng
    hw, hd, h = rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.2), rng.uniform(1.2, 2.0)
    placed = _storage_unit(b, room, walls, hw, hd)
    if placed is None:
        return
    obj, origin, yaw = placed
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
        books = b.new_object(BOOKS, b.material(pick(rng, VIVID), texture=Texture.STRIPES, freq=80.0))
        x = -hw + 2 * t
        x_end = hw - 2 * t - rng.uniform(0, hw)
        while x < x_end:
            bw = rng.uniform(0.015, 0.04)
            bh = min(rng.uniform(0.15, 0.3), (y1 - y0) - 0.04)
            bd = rng.uniform(0.1, 0.9 * hd)
            b.box(books, origin, yaw, (x + bw, y0 + t + bh / 2, -hd + 2 * t + bd), (bw, bh / 2, bd))
            x += 2 * bw + 0.003


@furniture("tvstand", weight=0.8)
def tv_stand(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    rng = b.rng
    hw, hd, h = rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.25), rng.uniform(0.4, 0.6)
    _closed_unit(b, room, walls, hw, hd, h, with_tv=True)


@furniture("dining", weight=1.5)
def dining(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """A table away from the walls with up to four chairs facing it and small objects on it."""
    rng = b.rng
    W, _, D = room
    hw, hd = rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.5)
    h = rng.uniform(0.7, 0.78)
    for _ in range(15):
        origin = np.array([rng.uniform(hw + 0.7, W - hw - 0.7), 0.0, rng.uniform(hd + 0.7, D - hd - 0.7)])
        yaw = rng.uniform(-0.4, 0.4) if rng.random() < 0.5 else rng.uniform(0, 2 * math.pi)
        rect = footprint(origin, yaw, hw, hd)
        if origin[0] > 0 and origin[2] > 0 and b.free(rect, margin=0.5):
            break
    else:
        return
    add_table(b, origin, yaw, 2 * hw, 2 * hd, h)
    b.footprints.append(rect)
    ax = yaw_axes(yaw)
    n_chairs = int(rng.integers(0, 5))
    sides = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    for k in range(n_chairs):
        sx, sz = sides[k]
        off = np.array([sx * (hw + 0.15), 0.0, sz * (hd + 0.15)])
        c_origin = origin + off @ ax
        # the chair faces the table: its back is away from the table centre
        c_yaw = yaw + math.atan2(-sx, -sz) + rng.uniform(-0.3, 0.3)
        crect = footprint(c_origin, c_yaw, 0.25, 0.25)
        if b.free(crect, margin=0.0) and 0.05 < crect[0] and crect[1] < W - 0.05 and 0.05 < crect[2] \
                and crect[3] < D - 0.05:
            add_chair(b, c_origin, c_yaw)  # local +z (its front) points at the table
            b.footprints.append(crect)
    add_small_objects(b, rect[0] + 0.15, rect[1] - 0.15, rect[2] + 0.15, rect[3] - 0.15, h,
                      int(rng.integers(0, 4)))


@furniture("lamp", weight=1.0)
def floor_lamp(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    rng = b.rng
    for _ in range(10):
        wall = int(rng.choice(walls))
        L = wall_length(room, wall)
        origin, _yaw = wall_frame(room, wall, rng.uniform(0.3, L - 0.3), rng.uniform(0.25, 0.4))
        rect = (origin[0] - 0.2, origin[0] + 0.2, origin[2] - 0.2, origin[2] + 0.2)
        if b.free(rect):
            break
    else:
        return
    obj = b.new_object(OBJECTS, b.material(pick(rng, VIVID), texture=Texture.PLAIN))
    h = rng.uniform(1.2, 1.7)
    b.cylinder(obj, origin, 0.0, (0, 0.015, 0), 0.15, 0.015)
    b.cylinder(obj, origin, 0.0, (0, h / 2, 0), 0.015, h / 2)
    b.cylinder(obj, origin, 0.0, (0, h + 0.1, 0), rng.uniform(0.12, 0.2), 0.12)
    b.footprints.append(rect)


@furniture("clutter", weight=1.5)
def clutter(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    """Unlabelled stuff on the floor (NYUv2 has unlabelled pixels too): a box or a ball."""
    rng = b.rng
    spot = _free_floor_spot(b, room, 0.1, 0.25, 0.05)
    if spot is None:
        return
    origin, r, rect = spot
    obj = b.new_object(UNLABELLED, b.material(pick(rng, VIVID), texture=Texture.FABRIC, freq=30.0))
    if rng.random() < 0.5:
        b.box(obj, origin, rng.uniform(0, math.pi), (0, r * 0.8, 0), (r * 0.8, r * 0.8, r * 0.6))
    else:
        b.sphere(obj, origin, 0.0, (0, r, 0), r)
    b.footprints.append(rect)


@furniture("plant", weight=1.0)
def potted_plant(b: SceneBuilder, room: np.ndarray, walls: Sequence[int]) -> None:
    rng = b.rng
    spot = _free_floor_spot(b, room, 0.12, 0.2, 0.1)
    if spot is None:
        return
    origin, r, rect = spot
    obj = b.new_object(OBJECTS, b.material([0.15, 0.4, 0.12], texture=Texture.FABRIC, freq=60.0,
                                           color2=[0.05, 0.2, 0.05]))
    ph = rng.uniform(0.25, 0.4)
    b.cylinder(obj, origin, 0.0, (0, ph / 2, 0), r * 0.7, ph / 2)
    b.sphere(obj, origin, 0.0, (0, ph + r * 1.2, 0), r * 1.5)
    b.footprints.append(rect)
