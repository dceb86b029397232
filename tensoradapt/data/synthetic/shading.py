"""Rendering a scene into the dataset's arrays: the ray-cast geometry, shaded into an image.

The image is albedo (per-class procedural textures, :mod:`.textures`) times Lambertian shading from a
ceiling point light, a directional window light and ambient light with a little occlusion near the floor
and corners; windows and screens emit; then exposure, gamma, vignetting and sensor noise.

Every output is listed once, in :data:`OUTPUTS` (name -> shape, dtype, meaning); the writer stores each
one in its own folder and describes it in meta.json from that table. To add an output, compute it in
:func:`render_scene` from the intermediate fields (:class:`~.raycast.RayHits`, :class:`Surface`, the
lighting) and add its line to :data:`OUTPUTS` (a new output changes the file layout: bump
``SYNTHETIC_VERSION``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .camera import camera_intrinsics, camera_rays
from .raycast import RayHits, cast_rays
from .scene import Scene
from .textures import blend_and_emission

__all__ = ["OUTPUTS", "Surface", "render_scene"]

#: The arrays :func:`render_scene` returns, in order: name -> "(shape) dtype, meaning".
OUTPUTS: dict[str, str] = {
    "image": "(H, W, 3) float32 in [0, 1]",
    "label": "(H, W) int16, -1 = unlabelled",
    "depth": "(H, W, 1) float32, metres along the camera z axis, 0 = invalid",
    "normal": "(H, W, 3) float32 unit, camera frame x right / y down / z forward, 0 = invalid",
    "instance": "(H, W) int32 object id, > 0",
}


@dataclass
class Surface:
    """What the hit surface is at every pixel (H, W)."""

    label: np.ndarray        # (H, W) int16 class id, -1 = unlabelled
    instance: np.ndarray     # (H, W) int32 object id > 0
    color: np.ndarray        # (H, W, 3) float32 the material's base colour (emitters emit it)
    albedo: np.ndarray       # (H, W, 3) float32 textured diffuse colour
    emission: np.ndarray     # (H, W) float32 in [0, 1], how much of the colour is emitted instead


def _rowvec_matmul(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """x @ M for x (..., 3) float32 and a small M (3, k), as broadcast sums (no multi-threaded BLAS
    call, which oversubscribes the cores when several generator processes run)."""
    M = M.astype(np.float32)
    return x[..., 0:1] * M[0] + x[..., 1:2] * M[1] + x[..., 2:3] * M[2]


def _surface(scene: Scene, hits: RayHits, points: np.ndarray) -> Surface:
    """Gather the hit objects' attributes per pixel and evaluate their textures at the world `points`."""
    objs, obj = scene.objects, hits.obj
    labels = np.array([ob.label for ob in objs], np.int16)
    instances = np.array([ob.instance for ob in objs], np.int32)
    color = np.array([ob.material.color for ob in objs], np.float32)
    color2 = np.array([ob.material.color2 for ob in objs], np.float32)
    texture = np.array([ob.material.texture for ob in objs], np.int8)
    freq = np.array([ob.material.freq for ob in objs], np.float32)
    phase = np.array([ob.material.phase for ob in objs], np.float32)

    # texture coordinates: project the hit point on the plane most orthogonal to its normal
    dom = np.abs(hits.normal).argmax(axis=-1)
    u = np.where(dom == 0, points[..., 2], points[..., 0])
    v = np.where(dom == 1, points[..., 2], points[..., 1])
    w, emission = blend_and_emission(texture[obj], u, v, freq[obj], phase[obj])
    c1, c2 = color[obj], color2[obj]
    albedo = c1 * (1.0 - w[..., None]) + c2 * w[..., None]
    return Surface(labels[obj], instances[obj], c1, albedo, emission)


def _irradiance(scene: Scene, normal: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W) light reaching the surface: ceiling point light + directional window light + ambient, times
    a little ambient occlusion near the floor and in the room corners. normal, points (H, W, 3) world."""
    Wr, Hr, Dr = (float(v) for v in scene.room)
    P = points
    L = scene.light_pos.astype(np.float32) - P
    dist2 = np.einsum("hwc,hwc->hw", L, L)
    ndl = np.clip(np.einsum("hwc,hwc->hw", normal, L) / np.sqrt(np.maximum(dist2, 1e-6)), 0.0, None)
    ndl_sun = np.clip(_rowvec_matmul(normal, scene.sun_dir[:, None])[..., 0], 0.0, None)
    shade = scene.ambient + scene.light_power * ndl / (1.0 + 0.25 * dist2) + scene.sun_power * ndl_sun
    near = np.minimum(np.minimum(P[..., 0], Wr - P[..., 0]), np.minimum(P[..., 2], Dr - P[..., 2]))
    occl = 1.0 - 0.25 * np.exp(-np.minimum(near, np.minimum(P[..., 1], Hr - P[..., 1])) / 0.15)
    return shade * occl


def _expose(scene: Scene, surface: Surface, irradiance: np.ndarray,
            rng: Optional[np.random.Generator]) -> np.ndarray:
    """The camera image (H, W, 3) float32 in [0, 1]: radiance, exposure, gamma, vignetting, sensor noise."""
    height, width = irradiance.shape
    emissive = surface.emission[..., None]
    radiance = surface.albedo * irradiance[..., None] * (1.0 - emissive) + emissive * surface.color
    rgb = np.clip(radiance * scene.exposure, 0.0, None) ** (1.0 / 2.2)
    yy = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    xx = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    rgb = rgb * (1.0 - 0.35 * (xx[None, :] ** 2 + yy[:, None] ** 2))[..., None]
    if rng is not None and scene.noise_std > 0:
        rgb = rgb + np.float32(scene.noise_std) * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _camera_normals(scene: Scene, normal: np.ndarray) -> np.ndarray:
    """World normals (H, W, 3) -> unit camera-frame normals (row vectors: n_cam = n_world @ R), oriented
    towards the camera."""
    height, width = normal.shape[:2]
    n_cam = _rowvec_matmul(normal, scene.cam_rot)
    ray_cam = camera_rays(camera_intrinsics(height, width, scene.hfov), height, width)
    flip = np.einsum("hwc,hwc->hw", n_cam, ray_cam) > 0
    n_cam[flip] *= -1
    n_cam /= np.linalg.norm(n_cam, axis=-1, keepdims=True)
    return n_cam


def render_scene(scene: Scene, height: int, width: int, rng: Optional[np.random.Generator] = None) -> dict:
    """Ray-cast a scene into the arrays of :data:`OUTPUTS` (a dict in that order).

    ``image`` (H, W, 3) float32 in [0, 1], ``label`` (H, W) int16 in [-1, 13), ``depth`` (H, W, 1)
    float32 > 0, ``normal`` (H, W, 3) float32 unit vectors (camera frame), ``instance`` (H, W) int32 > 0.
    `rng` draws the sensor noise (none if None).
    """
    hits = cast_rays(scene, height, width)
    points = hits.points
    surface = _surface(scene, hits, points)
    image = _expose(scene, surface, _irradiance(scene, hits.normal, points), rng)
    out = {
        "image": image,
        "label": surface.label.astype(np.int16),
        "depth": hits.depth[..., None].astype(np.float32),
        "normal": _camera_normals(scene, hits.normal).astype(np.float32),
        "instance": surface.instance.astype(np.int32),
    }
    assert list(out) == list(OUTPUTS), "render_scene and OUTPUTS list different arrays"
    return out
