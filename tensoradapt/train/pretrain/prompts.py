"""Prompts from masks: boxes, points inside / outside, the most interior point, and a box as a mask.

Masks are (K, h, w) bool; boxes are (K, 4) float ``x0, y0, x1, y1`` (inclusive pixel indices); points are
(K, 2) float ``x, y``, the coordinate order SAM's prompt encoder takes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_boxes", "jitter_boxes", "box_masks", "random_points", "interior_points"]


def mask_boxes(masks: Tensor) -> Tensor:
    """(K, h, w) bool -> (K, 4) float tight boxes x0, y0, x1, y1 (inclusive pixel indices)."""
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h).expand_as(rows)
    ar_w = torch.arange(w).expand_as(cols)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def jitter_boxes(boxes: Tensor, g: torch.Generator, rel: float = 0.1, max_px: float = 4.0) -> Tensor:
    """(K, 4) -> (K, 4): each coordinate moved by N(0, (rel * side)^2), clamped to +-max_px, kept >= 0
    (SAM's training noise on box prompts)."""
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2) + 1
    noise = (torch.randn(boxes.shape[0], 4, generator=g) * rel * side).clamp(-max_px, max_px)
    return (boxes + noise).clamp_min(0)


def box_masks(boxes: Tensor, h: int, w: int) -> Tensor:
    """(K, 4) boxes -> (K, h, w) bool: the box itself as a mask (the "predict the box" reference)."""
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    b = boxes[:, :, None, None]
    return (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])


def random_points(masks: Tensor, inside: bool, g: torch.Generator) -> Tensor:
    """(K, h, w) bool -> (K, 2) float (x, y): a uniformly drawn pixel inside (or outside) each mask."""
    sel = masks if inside else ~masks
    flat = sel.flatten(1).float()
    empty = flat.sum(1) == 0
    flat[empty] = 1.0  # degenerate (a mask covering everything, or nothing): any pixel
    idx = torch.multinomial(flat, 1, generator=g)[:, 0]
    w = masks.shape[-1]
    return torch.stack([idx % w, idx // w], dim=1).float()


def interior_points(masks: Tensor) -> Tensor:
    """(K, h, w) bool -> (K, 2) float (x, y): the pixel farthest inside each mask (deterministic, by
    repeated 3x3 erosion with the image border outside; ties broken towards the mask's centre of mass)."""
    m = masks.float()[:, None]
    depth = torch.zeros_like(m)
    cur = m
    for _ in range(max(masks.shape[-2:])):
        depth += cur
        if not bool(cur.any()):
            break
        cur = -F.max_pool2d(-cur, 3, stride=1, padding=1)  # erosion
        cur = cur * F.pad(torch.ones_like(cur[..., 1:-1, 1:-1]), (1, 1, 1, 1))
    depth = depth[:, 0]
    K, h, w = masks.shape
    ys = torch.arange(h).view(1, h, 1).float()
    xs = torch.arange(w).view(1, 1, w).float()
    area = m[:, 0].sum((1, 2)).clamp_min(1)
    cy = (m[:, 0] * ys).sum((1, 2)) / area
    cx = (m[:, 0] * xs).sum((1, 2)) / area
    dist2 = (ys - cy.view(K, 1, 1)) ** 2 + (xs - cx.view(K, 1, 1)) ** 2
    score = depth * 1e6 - dist2
    score[~masks] = -float("inf")
    idx = score.flatten(1).argmax(1)
    return torch.stack([idx % w, idx // w], dim=1).float()
