"""The pinhole camera every scene uses: NYUv2's field of view, intrinsics, orientation and per-pixel rays.

Camera frame (OpenCV): x right, y down, z forward. Pixel (row i, column j) has its centre at
(u, v) = (j + 0.5, i + 0.5); the principal point is the image centre and pixels are square.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["NYUV2_HFOV", "camera_intrinsics", "camera_rotation", "world_rays", "camera_rays"]

#: Horizontal field of view of the NYUv2 Kinect colour camera (fx = 518.86 px at 640 px width); every
#: scene uses it, so one set of intrinsics (see :func:`camera_intrinsics`) serves a whole dataset.
NYUV2_HFOV = 2.0 * math.atan(320.0 / 518.8579)


def camera_intrinsics(height: int, width: int, hfov: float = NYUV2_HFOV) -> np.ndarray:
    """Pinhole intrinsics (3, 3): square pixels, principal point at the image centre.

    Pixel (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5);
    fx = fy = (width / 2) / tan(hfov / 2); cx = width / 2; cy = height / 2.
    """
    f = 0.5 * width / math.tan(0.5 * hfov)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (3, 3), columns = the camera's right, down and forward axes in the world
    (y up). `yaw` turns about +y (forward (sin yaw, ., cos yaw)), `pitch` < 0 looks down, `roll` turns
    about the forward axis."""
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    down = np.cross(right, fwd)  # for yaw = pitch = 0: right=(1,0,0), fwd=(0,0,1) -> down=(0,-1,0)
    cr, sr = math.cos(roll), math.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    return np.stack([right, down, fwd], axis=1)


def world_rays(cam_rot: np.ndarray, hfov: float, height: int, width: int) -> np.ndarray:
    """World-space ray directions (H, W, 3) float32, scaled so that their camera-z component is 1 (the hit
    distance along a ray is then the depth)."""
    K = camera_intrinsics(height, width, hfov)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    x = ((np.arange(width) + 0.5 - cx) / f).astype(np.float32)
    y = ((np.arange(height) + 0.5 - cy) / f).astype(np.float32)
    R = cam_rot.astype(np.float32)
    # d = R @ (x, y, 1) for every pixel, as an outer sum
    return (x[None, :, None] * R[:, 0] + y[:, None, None] * R[:, 1] + R[:, 2]).astype(np.float32)


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame ray directions (H, W, 3) with z = 1 (float64), from the intrinsics `K` (3, 3)."""
    return np.stack(np.broadcast_arrays(
        ((np.arange(width, dtype=np.float32) + 0.5 - K[0, 2]) / K[0, 0])[None, :],
        ((np.arange(height, dtype=np.float32) + 0.5 - K[1, 2]) / K[1, 1])[:, None],
        np.ones((1, 1), np.float32)), axis=-1)
