"""SAM's mask losses (sigmoid focal, soft Dice) and the IoU of boolean masks, per mask.

Logits and targets are (..., h, w) with targets in {0, 1}; every function reduces the last two dims only, so
(K, M, h, w) inputs give (K, M) losses: one per mask and output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "dice_loss", "mask_iou"]


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss averaged over pixels: (..., h, w) -> (...).

    Per pixel ``a_t * (1 - p_t) ** gamma * BCE``, with ``p_t = p`` on the mask and ``1 - p`` off it,
    ``a_t = alpha`` on the mask and ``1 - alpha`` off it.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice: (..., h, w) -> (...); ``1 - (2 sum(p t) + eps) / (sum p + sum t + eps)``."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of boolean masks: (..., h, w) -> (...); two empty masks agree perfectly (IoU 1)."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
