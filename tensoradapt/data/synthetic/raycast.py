"""Ray casting: which surface every pixel's ray hits first, at what depth, with which normal.

Rays start at the camera inside the closed room, so every ray exits through one of the room's 6 faces;
wall decals (windows) relabel the face pixels they cover; then every primitive is intersected analytically
(vectorised numpy) on the pixels of its projected bounding rectangle only, z-buffered against the nearest
hit so far. :data:`HIT` maps every :class:`~.scene.Shape` to its intersection routine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .camera import camera_intrinsics, world_rays
from .scene import Primitive, Scene, Shape, yaw_axes

__all__ = ["RayHits", "cast_rays", "HIT", "hit_box", "hit_cylinder", "hit_sphere", "screen_rect"]

_EPS = 1e-4
#: (mask (h, w), t (M,) float32 or None, world normals (M, 3) float32 or None)
Hit = tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


@dataclass
class RayHits:
    """The first hit of every pixel's ray (H, W: the image size)."""

    origin: np.ndarray       # (3,) float32 camera centre
    rays: np.ndarray         # (H, W, 3) float32 world directions with camera-z component 1
    depth: np.ndarray        # (H, W) float32 hit distance along the ray = depth along the camera z axis
    normal: np.ndarray       # (H, W, 3) float32 world normal of the hit surface, facing the ray
    obj: np.ndarray          # (H, W) int index into Scene.objects

    @property
    def points(self) -> np.ndarray:
        """World hit points (H, W, 3) float32."""
        return self.origin + self.depth[..., None] * self.rays


def _primitive_corners(p: Primitive) -> np.ndarray:
    """(8, 3) world-space corners of a box enclosing the primitive."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    if p.kind == Shape.BOX:
        return p.center + (signs * p.size) @ yaw_axes(p.yaw)
    if p.kind == Shape.CYLINDER:
        r, hh = p.size
        return p.center + signs * np.array([r, hh, r])
    return p.center + signs * p.size[0]


def screen_rect(p: Primitive, scene: Scene, K: np.ndarray, height: int,
                width: int) -> Optional[tuple[int, int, int, int]]:
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


def hit_box(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, tcur: np.ndarray,
            p: Primitive) -> Hit:
    """Rays o + t (dx, dy, dz) (each (h, w)) against a yawed box.

    Returns ``mask`` (h, w): the ray enters the box at 0 < t < tcur, and for those rays only,
    ``t`` (M,) and the world normals (M, 3) of the entered face (facing the ray).
    """
    A = yaw_axes(p.yaw)
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


def hit_cylinder(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, tcur: np.ndarray,
                 p: Primitive) -> Hit:
    """Like :func:`hit_box` for a vertical cylinder (side and the cap facing the camera)."""
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


def hit_sphere(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, tcur: np.ndarray,
               p: Primitive) -> Hit:
    """Like :func:`hit_box` for a sphere."""
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


HIT: dict[Shape, Callable[..., Hit]] = {Shape.BOX: hit_box, Shape.CYLINDER: hit_cylinder, Shape.SPHERE: hit_sphere}


def _room_exit(o: np.ndarray, rays: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where rays (N, 3) starting at `o` inside the room leave it: distance (N,) float32, room face id (N,)
    (0/1: x, 2/3: y floor/ceiling, 4/5: z) and the face's inward normal (N, 3)."""
    lo = np.zeros(3, np.float32)
    hi = np.asarray(room, np.float32)
    with np.errstate(divide="ignore"):
        tf = np.where(rays > 0, (hi - o) / rays, (lo - o) / rays)     # (N, 3) exit distance per axis
    tf = np.where(rays == 0, np.inf, tf)
    axis = tf.argmin(axis=1)
    t = np.take_along_axis(tf, axis[:, None], 1)[:, 0].astype(np.float32)
    positive = np.take_along_axis(rays, axis[:, None], 1)[:, 0] > 0
    face = np.array([0, 2, 4])[axis] + positive
    normal = np.zeros_like(rays)
    normal[np.arange(rays.shape[0]), axis] = np.where(positive, -1.0, 1.0)
    return t, face, normal


def cast_rays(scene: Scene, height: int, width: int) -> RayHits:
    """The first surface (room face, window decal or primitive) every pixel's ray hits."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    o = scene.cam_pos.astype(np.float32)
    D3 = world_rays(scene.cam_rot, scene.hfov, height, width)            # (H, W, 3)
    K = camera_intrinsics(height, width, scene.hfov)

    t, face, normal = _room_exit(o, D3.reshape(-1, 3), scene.room)
    obj = np.asarray(scene.face_objects)[face].astype(np.int32)
    t = t.reshape(height, width)
    normal = normal.reshape(height, width, 3)
    obj = obj.reshape(height, width)

    if scene.decals:  # windows on walls
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
        rect = screen_rect(p, scene, K, height, width)
        if rect is None:
            continue
        i0, i1, j0, j1 = rect
        tcur = t[i0:i1, j0:j1]
        mask, tp, npv = HIT[p.kind](o, dxf[i0:i1, j0:j1], dyf[i0:i1, j0:j1], dzf[i0:i1, j0:j1], tcur, p)
        if tp is None:
            continue
        tcur[mask] = tp
        normal[i0:i1, j0:j1][mask] = npv
        obj[i0:i1, j0:j1][mask] = p.obj
    return RayHits(o, D3, t, normal, obj)
