"""Held-out prompted-mask IoU of a SAM (deterministic prompts), the held-out scenes a pretraining config is judged
on, and the report's table."""
from __future__ import annotations

import os
import statistics
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...sam import get_sam_config
from ..stats import t_interval
from .artifact import load_sam_checkpoint
from .config import PretrainConfig
from .decode import decode_prompts, to_input_frame
from .losses import mask_iou
from .prompts import box_masks, interior_points, mask_boxes
from .scenes import PromptScenes

__all__ = ["evaluate_prompted_iou", "heldout_scenes", "evaluate_checkpoint", "format_report"]


def heldout_scenes(pc: PretrainConfig) -> PromptScenes:
    """The held-out scenes `pc` is judged on: its own stream, seed, mask set and domain gap, `pc.n_heldout` scenes."""
    return PromptScenes(get_sam_config(pc.model), pc.n_heldout, seed=pc.seed, stream="sam_heldout",
                        min_area_frac=pc.min_area_frac, domain_gap=pc.domain_gap, masks=pc.masks)


@torch.no_grad()
def evaluate_prompted_iou(sam: nn.Module, data: PromptScenes, masks_per_scene: int = 8,
                          batch_size: int = 16) -> dict[str, float]:
    """Mean IoU of SAM's masks on held-out scenes, per prompt type, with deterministic prompts.

    For each scene, the `masks_per_scene` largest instances are prompted with (a) their exact box
    (single-mask output) and (b) one positive point at the mask's most interior pixel (three outputs;
    the one with the highest predicted IoU is kept, as SAM's predictor does; ``point_iou_best_of_3`` is
    the oracle choice). IoU of the thresholded (logit > 0) mask at the input resolution.
    ``box_fill_iou`` is the reference "predict the box itself". Returns those four means, ``n_masks``, and
    ``box_gain`` / ``box_gain_ci95``: the paired difference box IoU - box-itself IoU, averaged per scene, and
    the mean and 95 % t-interval half-width over scenes (the masks of one scene share an image, so they are
    not independent pairs; ``n_scenes`` counts the scenes with a mask).
    """
    was_training = sam.training
    sam.eval()
    box_ious: list[Tensor] = []
    point_ious: list[Tensor] = []
    point_oracle: list[Tensor] = []
    fill_ious: list[Tensor] = []
    scene_gain: list[float] = []
    h, w = data.h, data.w
    dev = next(sam.parameters()).device
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        emb = sam.image_encoder(data.inputs[start:stop].to(dev))
        for j, i in enumerate(range(start, stop)):
            ids = data.masks[i]
            if not ids:
                continue
            gts = torch.stack([data.instances[i] == k for k in ids])
            gt = gts[gts.flatten(1).sum(1).argsort(descending=True)[:masks_per_scene]]
            K = gt.shape[0]
            box = mask_boxes(gt)
            fill_ious.append(mask_iou(box_masks(box, h, w), gt))
            points = interior_points(gt)[:, None].to(dev)
            gt = gt.to(dev)
            low, _ = decode_prompts(sam, emb[j:j + 1], boxes=box.to(dev))
            box_ious.append(mask_iou(to_input_frame(sam, low[:, 0], h, w) > 0, gt).cpu())
            scene_gain.append(float((box_ious[-1] - fill_ious[-1]).mean()))
            low, iou_pred = decode_prompts(sam, emb[j:j + 1], points=(points, torch.ones(K, 1, device=dev)))
            preds = to_input_frame(sam, low[:, 1:], h, w) > 0                   # (K, 3, h, w)
            ious = mask_iou(preds, gt[:, None].expand_as(preds))
            point_ious.append(ious[torch.arange(K, device=dev), iou_pred[:, 1:].argmax(1)].cpu())
            point_oracle.append(ious.max(1).values.cpu())
    sam.train(was_training)

    def mean(v: list[Tensor]) -> float:
        return float(torch.cat(v).mean()) if v else float("nan")

    return {"box_iou": mean(box_ious), "point_iou": mean(point_ious), "point_iou_best_of_3": mean(point_oracle),
            "box_fill_iou": mean(fill_ious), "n_masks": int(sum(len(v) for v in box_ious)),
            "n_scenes": len(scene_gain), "box_gain": statistics.fmean(scene_gain) if scene_gain else float("nan"),
            "box_gain_ci95": t_interval(scene_gain)}


def evaluate_checkpoint(path: str | os.PathLike, pc: PretrainConfig) -> dict[str, float]:
    """:func:`evaluate_prompted_iou` of an existing checkpoint of `pc.model` (official-format ``.pth`` or
    ``.safetensors``, loaded strictly in fp32) on :func:`heldout_scenes` of `pc`, without training."""
    return evaluate_prompted_iou(load_sam_checkpoint(path, pc.model), heldout_scenes(pc), pc.eval_masks_per_scene)


def format_report(report: Mapping[str, Any]) -> str:
    """A small table of the held-out prompted-mask IoU: pretrained vs random init vs the box itself."""
    r = report["heldout_iou"]
    lines = [f"tiny SAM pretraining (recipe v{report['version']}, seed {report['seed']}): {report['steps']} steps "
             f"in {report['train_seconds']} s (total {report['total_seconds']} s, {report['torch_threads']} thread), "
             f"{report['n_train_scenes']} scenes at {report['input_hw'][0]}x{report['input_hw'][1]}",
             f"held-out prompted-mask IoU on {r['pretrained']['n_masks']} masks of {report['n_heldout_scenes']} "
             f"scenes:",
             f"  {'model':<12} {'box':>7} {'point':>7} {'point(best of 3)':>17}"]
    for name in ("pretrained", "random_init"):
        v = r[name]
        lines.append(f"  {name:<12} {v['box_iou']:7.3f} {v['point_iou']:7.3f} {v['point_iou_best_of_3']:17.3f}")
    lines.append(f"  {'box itself':<12} {r['pretrained']['box_fill_iou']:7.3f}")
    if "box_gain" in r["pretrained"]:
        lines.append(f"  box prompt - box itself: {r['pretrained']['box_gain']:+.3f} +- "
                     f"{r['pretrained']['box_gain_ci95']:.3f} (95 %, paired, over scenes)")
    return "\n".join(lines)
