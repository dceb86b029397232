"""SAM's promptable-mask objective on one random batch of scenes (what one pretraining step computes).

* batch: `batch_size` scenes drawn with replacement, each flipped horizontally with probability 1/2;
* masks: `masks_per_image` instances per image, drawn without replacement with probability
  ~ area ** area_power, so the large, easy ones come often enough to leave the all-background start;
* prompts, one kind per image: a jittered box (45 %, single-mask output), one positive point (35 %, the
  three multimask outputs, the loss back-propagated through the best one only, as SAM does for
  ambiguous prompts) or two positive points and one negative (20 %, single-mask output);
* loss per mask: focal_weight x focal + dice_weight x Dice on the logits at the input resolution, plus
  iou_weight x the MSE between the IoU head's predictions and the IoUs the masks reach; averaged over masks.

Every random draw comes from the generator `g`, so a seed fixes the whole stream of batches and prompts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PretrainConfig
from .decode import decode_prompts, to_input_frame
from .losses import dice_loss, focal_loss, mask_iou
from .prompts import jitter_boxes, mask_boxes, random_points
from .scenes import PromptScenes

__all__ = ["BOX_SHARE", "ONE_POINT_SHARE", "prompted_mask_loss"]

#: Share of images prompted with a jittered box; the next ONE_POINT_SHARE get one point, the rest three.
BOX_SHARE = 0.45
ONE_POINT_SHARE = 0.35


def _flipped_batch(data: PromptScenes, batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Scene indices (B,), inputs (B, 3, S, S) and instances (B, h, w), half of them flipped left-right
    (the unpadded region only, so the padding stays bottom-right)."""
    idx = torch.randint(len(data), (batch_size,), generator=g)
    flip = torch.rand(batch_size, generator=g) < 0.5
    x = data.inputs[idx]
    inst = data.instances[idx]
    h, w = data.h, data.w
    x[flip, :, :h, :w] = x[flip, :, :h, :w].flip(-1)
    inst[flip] = inst[flip].flip(-1)
    return idx, x, inst


def _prompt_and_decode(sam: nn.Module, embedding: Tensor, gt: Tensor,
                       g: torch.Generator) -> tuple[Tensor, Tensor, bool]:
    """Draw one prompt kind for the (K, h, w) masks `gt` (on the CPU, where `g` draws; the prompts then go to
    the embedding's device); low-res logits (K, 4, ., .), IoUs (K, 4), and whether the multimask outputs
    are the ones trained."""
    K, dev = gt.shape[0], embedding.device
    r = float(torch.rand((), generator=g))
    if r < BOX_SHARE:
        low, iou = decode_prompts(sam, embedding, boxes=jitter_boxes(mask_boxes(gt), g).to(dev))
        return low, iou, False
    if r < BOX_SHARE + ONE_POINT_SHARE:
        pts = random_points(gt, True, g)[:, None]
        low, iou = decode_prompts(sam, embedding, points=(pts.to(dev), torch.ones(K, 1, device=dev)))
        return low, iou, True
    pts = torch.stack([random_points(gt, True, g), random_points(gt, True, g), random_points(gt, False, g)], 1)
    labels = torch.tensor([[1.0, 1.0, 0.0]], device=dev).expand(K, 3)
    low, iou = decode_prompts(sam, embedding, points=(pts.to(dev), labels))
    return low, iou, False


def prompted_mask_loss(sam: nn.Module, data: PromptScenes, pc: PretrainConfig,
                       g: torch.Generator) -> dict[str, Tensor | float]:
    """One batch's loss: {"loss": scalar tensor (mean over masks), "focal", "dice", "train_iou": floats
    (means over masks of the trained output)}. The scenes and the random draws stay on the CPU; the model
    runs where its parameters are."""
    idx, x, inst = _flipped_batch(data, pc.batch_size, g)
    h, w = data.h, data.w
    dev = next(sam.parameters()).device
    emb = sam.image_encoder(x.to(dev))
    losses: list[Tensor] = []
    focal_sum = dice_sum = iou_sum = 0.0
    n_masks = 0
    for b in range(pc.batch_size):
        ids = data.masks[int(idx[b])]
        if not ids:
            continue
        weights = data.areas[int(idx[b])] ** pc.area_power
        pick = torch.multinomial(weights, min(pc.masks_per_image, len(ids)), replacement=False, generator=g)
        gt = torch.stack([inst[b] == ids[int(k)] for k in pick])           # (K, h, w) bool
        K = gt.shape[0]
        low, iou_pred, multi = _prompt_and_decode(sam, emb[b:b + 1], gt, g)
        sl = slice(1, 4) if multi else slice(0, 1)
        logits = to_input_frame(sam, low[:, sl], h, w)                      # (K, M, h, w)
        gt = gt.to(dev)
        target = gt[:, None].float().expand_as(logits)
        fl = focal_loss(logits, target, alpha=pc.focal_alpha)               # (K, M)
        dl = dice_loss(logits, target)
        mask_loss = pc.focal_weight * fl + pc.dice_weight * dl
        with torch.no_grad():
            true_iou = mask_iou(logits > 0, gt[:, None].expand_as(logits))
        iou_loss = F.mse_loss(iou_pred[:, sl], true_iou, reduction="none")  # (K, M)
        best = mask_loss.argmin(dim=1) if multi else torch.zeros(K, dtype=torch.long, device=dev)
        ar = torch.arange(K, device=dev)
        losses.append((mask_loss[ar, best] + pc.iou_weight * iou_loss.mean(1)).sum())
        focal_sum += float(fl.detach()[ar, best].sum())
        dice_sum += float(dl.detach()[ar, best].sum())
        iou_sum += float(true_iou[ar, best].sum())
        n_masks += K
    n = max(n_masks, 1)
    total = torch.stack(losses).sum() / n if losses else emb.sum() * 0.0
    return {"loss": total, "focal": focal_sum / n, "dice": dice_sum / n, "train_iou": iou_sum / n}
