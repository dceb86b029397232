"""Dense targets derived exactly from a sample's stored maps (after augmentation, so they follow every crop
and flip): edges of the semantic labels, of the instances and of the depth, instance-centre offsets, the
surface curvature and where the surface is not planar. The synthetic renderer stores the maps they come from,
so each is exact there.

Every function takes the sample's tensors channels-first and returns a float32 target (C, H, W); pixels
where the target is undefined hold `IGNORE` (-1; the offsets are defined everywhere an instance is).

    edges(labels)                 (1, H, W) 1 where a 4-neighbour has another valid label, 0 elsewhere
    occlusion_edges(depth)        (1, H, W) 1 where a 4-neighbour is more than `jump` (relative) nearer / farther
    instance_offsets(instance)    (2, H, W) (cy - y, cx - x) / max(H, W): towards the centroid of the pixel's instance
    curvature(normal)             (1, H, W) mean angle (radians) to the valid 4-neighbours' normals
    nonplanar(normal)             (1, H, W) 1 where that curvature exceeds `angle` (creases, curved surfaces)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils.vectors import unit

__all__ = ["IGNORE", "edges", "occlusion_edges", "instance_offsets", "curvature", "nonplanar", "DERIVED",
           "add_derived"]

IGNORE = -1.0


def _neighbours(x: Tensor, fill: float) -> list[Tensor]:
    """The 4 neighbours of every pixel of x (C, H, W): x shifted up, down, left, right, `fill` outside."""
    p = F.pad(x[None].float(), (1, 1, 1, 1), value=fill)[0]
    return [p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]


def edges(labels: Tensor, ignore: int = -1) -> Tensor:
    """(H, W) ints -> (1, H, W): 1 where a valid 4-neighbour has another label; IGNORE where the pixel's own
    label is `ignore`."""
    lab = labels[None].float()
    out = torch.zeros_like(lab)
    for n in _neighbours(lab, float(ignore)):
        out = torch.maximum(out, ((n != lab) & (n != ignore)).float())
    return torch.where(lab == ignore, torch.full_like(out, IGNORE), out)


def occlusion_edges(depth: Tensor, jump: float = 0.1) -> Tensor:
    """(1, H, W) metres (0 = invalid) -> (1, H, W): 1 where a valid 4-neighbour's depth differs by more than
    `jump` of the nearer of the two (a depth discontinuity: an occluding contour); IGNORE on invalid depth."""
    valid = depth > 0
    log_d = torch.where(valid, depth.clamp_min(1e-6).log(), torch.zeros_like(depth))
    out = torch.zeros_like(depth)
    for n, nv in zip(_neighbours(log_d, 0.0), _neighbours(valid.float(), 0.0)):
        out = torch.maximum(out, (((n - log_d).abs() > math.log1p(jump)) & (nv > 0)).float())
    return torch.where(valid, out, torch.full_like(out, IGNORE))


def instance_offsets(instance: Tensor) -> Tensor:
    """(H, W) instance ids -> (2, H, W) float32: (cy - y, cx - x) / max(H, W), the offset of every pixel to the
    centroid of its instance in this view (what a centre-regression head predicts)."""
    H, W = instance.shape
    ids, inverse = torch.unique(instance.flatten(), return_inverse=True)
    ys = torch.arange(H, dtype=torch.float32).repeat_interleave(W)
    xs = torch.arange(W, dtype=torch.float32).repeat(H)
    count = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(H * W))
    cy = torch.zeros(len(ids)).index_add_(0, inverse, ys) / count
    cx = torch.zeros(len(ids)).index_add_(0, inverse, xs) / count
    off = torch.stack([cy[inverse] - ys, cx[inverse] - xs]).view(2, H, W)
    return off / max(H, W)


def curvature(normal: Tensor) -> Tensor:
    """(3, H, W) unit normals (0 = invalid) -> (1, H, W): the mean angle in radians between a pixel's normal
    and its valid 4-neighbours' (0 on a plane, large on creases and curved surfaces); IGNORE where the
    pixel's normal is invalid or it has no valid neighbour."""
    valid = normal.abs().sum(0, keepdim=True) > 0
    u = unit(normal.float(), dim=0)  # once per pixel: the neighbours are shifted views of it
    total = torch.zeros_like(u[:1])
    count = torch.zeros_like(u[:1])
    for n in _neighbours(u, 0.0):
        nv = n.abs().sum(0, keepdim=True) > 0
        cos = (n * u).sum(0, keepdim=True).clamp(-1, 1)
        total += torch.where(nv, torch.arccos(cos), torch.zeros_like(cos))
        count += nv.float()
    out = total / count.clamp_min(1)
    return torch.where(valid & (count > 0), out, torch.full_like(out, IGNORE))


def nonplanar(normal: Tensor, angle: float = 0.01) -> Tensor:
    """(3, H, W) unit normals (0 = invalid) -> (1, H, W): 1 where the surface bends, i.e. its `curvature`
    exceeds `angle` radians (creases between planes and curved surfaces), 0 on planes; IGNORE where the
    curvature is undefined.

    A binary map rather than the curvature itself: about 84 % of the synthetic scenes' valid pixels lie on planes
    (curvature exactly 0), so an L1 regression of the curvature is minimised by predicting 0 everywhere. At
    0.01 rad (0.57°) a sphere counts as curved up to a radius of about 100 pixels."""
    c = curvature(normal)
    return torch.where(c == IGNORE, c, (c > angle).float())


#: target name -> (the sample keys it needs, the function of those tensors)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[..., Tensor]]] = {
    "boundary": (("semantic",), edges),
    "occlusion": (("depth",), occlusion_edges),
    "contour": (("instance",), edges),
    "offset": (("instance",), instance_offsets),
    "nonplanar": (("normal",), nonplanar),
}


def add_derived(sample: dict, names: list[str] | tuple[str, ...]) -> dict:
    """`sample` with the derived targets `names` (keys of `DERIVED`) added, computed from its maps."""
    for name in names:
        if name not in DERIVED:
            raise ValueError(f"unknown derived target {name!r}; available: {list(DERIVED)}")
        keys, fn = DERIVED[name]
        missing = [k for k in keys if k not in sample]
        if missing:
            raise KeyError(f"target {name!r} needs {missing} in the sample (instance ids: with_instance=True)")
        sample[name] = fn(*(sample[k] for k in keys))
    return sample


def needs(names: Mapping[str, object] | list[str] | tuple[str, ...]) -> set[str]:
    """The stored maps the derived targets among `names` need."""
    return {k for n in names if n in DERIVED for k in DERIVED[n][0]}
