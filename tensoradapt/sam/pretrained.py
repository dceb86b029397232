"""A tiny SAM "foundation" checkpoint, pretrained on SAM's own promptable-mask objective.

The official SAM checkpoints are far too large to fine-tune on two CPU cores, and a random-init
tiny SAM would make the adaptation experiments meaningless (there is nothing to adapt). So we
pretrain the *original* SAM architecture at the tiny config (image encoder, prompt encoder, mask
decoder; :func:`tensoradapt.sam.config.build_sam`) the way SAM was trained, on class-agnostic
instance masks of synthetic indoor scenes (:mod:`tensoradapt.data.synthetic`, streams ``sam_train``
and ``sam_heldout``, never the dataset's train/val scenes):

* input: the scene rendered with its longest side at ``image_size`` (NYUv2's 3:4 aspect gives
  96 x 128 for the tiny config), normalised with SAM's pixel mean / std on the 0-255 scale and padded
  bottom-right to a square, exactly as :meth:`Sam.preprocess` does;
* prompts per mask: a jittered box (single-mask output, token 0), one positive point (the three
  multimask outputs, the loss back-propagated through the best one only, as SAM does for ambiguous
  prompts) or three points, positive and negative (single-mask output);
* masks: instances covering >= 0.4 % of the image (walls, floor and ceiling included: SAM is
  class-agnostic), drawn with probability ~ sqrt(area) so that the large, easy ones come often enough
  for the model to leave the all-background start quickly;
* loss: 20 x focal (alpha 0.5, gamma 2) + 1 x dice on the mask logits (upsampled to the input frame),
  plus the MSE between the IoU head's predictions and the IoU the masks actually reach;
* AdamW (lr 2e-3, weight decay 0.05 off norms / biases / position tables, gradient clipping at 1) with a
  short warm-up and a cosine decay driven by the elapsed share of the wall-clock budget, so the schedule
  completes whatever the machine's speed. The settings came from short (75-100 s) probes on 2 cores.

Results depend on the machine's speed: the budget is wall clock, so a busier machine runs fewer steps.

The checkpoint is ``torch.save`` of a plain state dict with the official key layout
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), written atomically, so it loads like
``sam_vit_b_01ec64.pth``: ``sam.load_state_dict(torch.load(path, weights_only=True))``. A JSON file
beside it records the config, budget, steps, losses and the held-out prompted-mask IoU of the
pretrained model against a random-init one.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import cache_dir
from .config import SamConfig, build_sam, get_sam_config

__all__ = [
    "PRETRAIN_VERSION",
    "DEFAULT_AUTO_BUDGET_S",
    "PretrainConfig",
    "PromptScenes",
    "default_tiny_sam_path",
    "pretrain_tiny_sam",
    "evaluate_prompted_iou",
    "save_state_dict_atomic",
    "load_sam_checkpoint",
    "ensure_tiny_sam_checkpoint",
    "focal_loss",
    "dice_loss",
]

#: Part of the cached file name: bump when the recipe changes so stale checkpoints are rebuilt.
PRETRAIN_VERSION = 2
#: Wall-clock budget (seconds, data + training + evaluation) of the automatic first-use build; the
#: experiment CLI must finish within 10 minutes on 2 cores including it.
DEFAULT_AUTO_BUDGET_S = 180.0


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain_tiny_sam` (validated; saved in the JSON beside the weights)."""

    model: str = "tiny"
    budget_s: float = DEFAULT_AUTO_BUDGET_S   # total wall clock: scenes + training + both evaluations
    max_steps: int | None = None              # stop earlier after this many steps (tests, benchmarks)
    min_steps: int = 400                      # train at least this long even past the budget (a busy
                                              # machine must not yield an untrained "pretrained" model)
    seed: int = 0
    batch_size: int = 4                       # images per step
    masks_per_image: int = 6                  # prompted masks per image and step
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    n_scenes: int | None = None               # training scenes; None: scales with the budget
    n_heldout: int = 48                       # held-out scenes for the IoU evaluation
    eval_masks_per_scene: int = 8
    min_area_frac: float = 0.004              # smallest mask used, as a share of the image area
    focal_weight: float = 20.0
    focal_alpha: float = 0.5
    area_power: float = 0.5                   # masks drawn with probability ~ area ** area_power
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {self.max_steps}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")
        for name in ("batch_size", "masks_per_image", "n_heldout", "eval_masks_per_scene"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_scenes is not None and self.n_scenes < 1:
            raise ValueError(f"n_scenes must be >= 1 or None, got {self.n_scenes}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must lie in (0, 1), got {self.lr}")
        get_sam_config(self.model)  # raises for an unknown model

    def scenes(self) -> int:
        if self.n_scenes is not None:
            return self.n_scenes
        # about 2 new scenes per second of budget, within [64, 2000]
        return int(min(2000, max(64, 2 * self.budget_s)))


def default_tiny_sam_path() -> Path:
    """``cache_dir("sam") / "tiny_sam_synthetic_v<version>.pth"`` (under ``$TENSORADAPT_CACHE``)."""
    return cache_dir("sam") / f"tiny_sam_synthetic_v{PRETRAIN_VERSION}.pth"


# ----------------------------------------------------------------------------------------------
# Data: rendered scenes, SAM-preprocessed, with their instance masks
# ----------------------------------------------------------------------------------------------
def input_size_for(cfg: SamConfig, aspect: tuple[int, int] = (288, 384)) -> tuple[int, int]:
    """(h, w) of an image of the given aspect with its longest side resized to the SAM input size."""
    H, W = aspect
    s = cfg.image_size / max(H, W)
    return int(round(H * s)), int(round(W * s))


class PromptScenes:
    """Scenes rendered at the SAM input resolution (longest side = image_size), ready for SAM.

    Attributes:
        inputs: (N, 3, S, S) float32, normalised (SAM pixel mean / std on 0-255) and zero-padded.
        instances: (N, h, w) int64 instance ids (h, w: the unpadded size).
        masks: per scene, a list of instance ids large enough to prompt (area >= min_area pixels).
    """

    def __init__(self, cfg: SamConfig, n: int, seed: int = 0, stream: str = "sam_train",
                 min_area_frac: float = 0.004, progress: bool = False):
        from ..data.synthetic import synthesize

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.cfg = cfg
        self.h, self.w = input_size_for(cfg)
        S = cfg.image_size
        mean = torch.tensor(cfg.pixel_mean).view(3, 1, 1)
        std = torch.tensor(cfg.pixel_std).view(3, 1, 1)
        self.inputs = torch.zeros(n, 3, S, S)
        self.instances = torch.zeros(n, self.h, self.w, dtype=torch.int64)
        self.masks: list[list[int]] = []
        self.areas: list[Tensor] = []
        min_area = max(4, int(min_area_frac * self.h * self.w))
        bar = _bar(n, progress, f"render {stream} scenes")
        for i in range(n):
            s = synthesize(i, seed=seed, stream=stream, height=self.h, width=self.w)
            img = torch.from_numpy(s["image"]).permute(2, 0, 1) * 255.0
            self.inputs[i, :, : self.h, : self.w] = (img - mean) / std
            inst = torch.from_numpy(s["instance"].astype(np.int64))
            self.instances[i] = inst
            ids, counts = torch.unique(inst, return_counts=True)
            keep = counts >= min_area
            self.masks.append(ids[keep].tolist())
            self.areas.append(counts[keep].double())
            bar.update(1)
        bar.close()

    def __len__(self) -> int:
        return self.inputs.shape[0]


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
def _boxes(masks: Tensor) -> Tensor:
    """(K, h, w) bool -> (K, 4) float boxes x0, y0, x1, y1 (inclusive pixel indices)."""
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


def _random_points(masks: Tensor, inside: bool, g: torch.Generator) -> Tensor:
    """(K, h, w) bool -> (K, 2) float (x, y): a uniformly drawn pixel inside (or outside) each mask."""
    sel = masks if inside else ~masks
    flat = sel.flatten(1).float()
    empty = flat.sum(1) == 0
    flat[empty] = 1.0  # degenerate (a mask covering everything): any pixel
    idx = torch.multinomial(flat, 1, generator=g)[:, 0]
    w = masks.shape[-1]
    return torch.stack([idx % w, idx // w], dim=1).float()


def _interior_points(masks: Tensor) -> Tensor:
    """(K, h, w) bool -> (K, 2) float (x, y): the pixel farthest inside each mask (deterministic,
    by repeated 3x3 erosion; ties broken towards the mask's centre of mass)."""
    m = masks.float()[:, None]
    depth = torch.zeros_like(m)
    cur = m
    for _ in range(max(masks.shape[-2:])):
        depth += cur
        if not bool(cur.any()):
            break
        cur = -F.max_pool2d(-cur, 3, stride=1, padding=1)  # erosion (the image border is outside)
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


# ----------------------------------------------------------------------------------------------
# Losses (as in the SAM paper)
# ----------------------------------------------------------------------------------------------
def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss per mask, averaged over pixels: (K, ..., h, w) -> (K,)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice per mask: (K, ..., h, w) -> (K, ...)."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def _mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of boolean masks over the last two dims."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


# ----------------------------------------------------------------------------------------------
# Model passes
# ----------------------------------------------------------------------------------------------
def _decode(sam: nn.Module, embedding: Tensor, points=None, boxes=None) -> tuple[Tensor, Tensor]:
    """All four mask outputs for K prompts on one image: low-res logits (K, 4, g4, g4), IoU (K, 4)."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder.predict_masks(
        image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def _to_input_frame(sam: nn.Module, low: Tensor, h: int, w: int) -> Tensor:
    """Low-res mask logits (..., g4, g4) -> logits on the unpadded input (..., h, w)."""
    S = sam.image_encoder.img_size
    shape = low.shape
    up = F.interpolate(low.reshape(-1, 1, *shape[-2:]), (S, S), mode="bilinear", align_corners=False)
    return up[..., :h, :w].reshape(*shape[:-2], h, w)


def _train_step(sam, data: PromptScenes, pc: PretrainConfig, g: torch.Generator) -> dict[str, float]:
    idx = torch.randint(len(data), (pc.batch_size,), generator=g)
    flip = torch.rand(pc.batch_size, generator=g) < 0.5
    x = data.inputs[idx]
    inst = data.instances[idx]
    h, w = data.h, data.w
    # horizontal flip: flip the unpadded region only so the padding stays bottom-right
    x[flip, :, :h, :w] = x[flip, :, :h, :w].flip(-1)
    inst[flip] = inst[flip].flip(-1)
    emb = sam.image_encoder(x)
    losses, focal_t, dice_t, iou_t = [], 0.0, 0.0, 0.0
    n_masks = 0
    for b in range(pc.batch_size):
        ids = data.masks[int(idx[b])]
        if not ids:
            continue
        weights = data.areas[int(idx[b])] ** pc.area_power
        pick = torch.multinomial(weights, min(pc.masks_per_image, len(ids)), replacement=False, generator=g)
        gt = torch.stack([inst[b] == ids[int(k)] for k in pick])         # (K, h, w) bool
        K = gt.shape[0]
        r = float(torch.rand((), generator=g))
        if r < 0.45:  # jittered box -> single-mask output
            box = _boxes(gt)
            side = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1).repeat(1, 2) + 1
            noise = (torch.randn(K, 4, generator=g) * 0.1 * side).clamp(-4.0, 4.0)
            box = (box + noise).clamp_min(0)
            low, iou_pred = _decode(sam, emb[b:b + 1], boxes=box)
            multi = False
        elif r < 0.8:  # one positive point -> ambiguous: three outputs, best one trained
            pts = _random_points(gt, True, g)[:, None]
            low, iou_pred = _decode(sam, emb[b:b + 1], points=(pts, torch.ones(K, 1)))
            multi = True
        else:  # two positive and one negative point -> single-mask output
            pts = torch.stack([_random_points(gt, True, g), _random_points(gt, True, g),
                               _random_points(gt, False, g)], 1)
            low, iou_pred = _decode(sam, emb[b:b + 1], points=(pts, torch.tensor([[1.0, 1.0, 0.0]]).expand(K, 3)))
            multi = False
        sl = slice(1, 4) if multi else slice(0, 1)
        logits = _to_input_frame(sam, low[:, sl], h, w)                   # (K, M, h, w)
        target = gt[:, None].float().expand_as(logits)
        fl = focal_loss(logits, target, alpha=pc.focal_alpha)             # (K, M)
        dl = dice_loss(logits, target)
        mask_loss = pc.focal_weight * fl + pc.dice_weight * dl
        with torch.no_grad():
            true_iou = _mask_iou(logits > 0, gt[:, None].expand_as(logits))
        iou_l = F.mse_loss(iou_pred[:, sl], true_iou, reduction="none")    # (K, M)
        best = mask_loss.argmin(dim=1) if multi else torch.zeros(K, dtype=torch.long)
        ar = torch.arange(K)
        loss = mask_loss[ar, best] + pc.iou_weight * iou_l.mean(1)
        losses.append(loss.sum())
        focal_t += float(fl.detach()[ar, best].sum())
        dice_t += float(dl.detach()[ar, best].sum())
        iou_t += float(true_iou[ar, best].sum())
        n_masks += K
    total = torch.stack(losses).sum() / max(n_masks, 1)
    return {"loss": total, "focal": focal_t / max(n_masks, 1), "dice": dice_t / max(n_masks, 1),
            "train_iou": iou_t / max(n_masks, 1)}


@torch.no_grad()
def evaluate_prompted_iou(sam: nn.Module, data: PromptScenes, masks_per_scene: int = 8,
                          batch_size: int = 16) -> dict[str, float]:
    """Mean IoU of SAM's masks on held-out scenes, per prompt type, with deterministic prompts.

    For each scene, the `masks_per_scene` largest instances are prompted with (a) their exact box
    (single-mask output) and (b) one positive point at the mask's most interior pixel (three outputs;
    the one with the highest predicted IoU is kept, as SAM's predictor does). IoU of the thresholded
    (logit > 0) mask at the input resolution. ``box_fill`` is the reference "predict the box itself".
    """
    was_training = sam.training
    sam.eval()
    box_ious, point_ious, point_oracle, fill_ious = [], [], [], []
    h, w = data.h, data.w
    for start in range(0, len(data), batch_size):
        sl = slice(start, min(start + batch_size, len(data)))
        emb = sam.image_encoder(data.inputs[sl])
        for j, i in enumerate(range(sl.start, sl.stop)):
            ids = data.masks[i]
            if not ids:
                continue
            inst = data.instances[i]
            gts = torch.stack([inst == k for k in ids])
            order = gts.flatten(1).sum(1).argsort(descending=True)[:masks_per_scene]
            gt = gts[order]
            K = gt.shape[0]
            box = _boxes(gt)
            low, _ = _decode(sam, emb[j:j + 1], boxes=box)
            pred = _to_input_frame(sam, low[:, 0], h, w) > 0
            box_ious.append(_mask_iou(pred, gt))
            pts = _interior_points(gt)[:, None]
            low, iou_pred = _decode(sam, emb[j:j + 1], points=(pts, torch.ones(K, 1)))
            preds = _to_input_frame(sam, low[:, 1:], h, w) > 0              # (K, 3, h, w)
            ious = _mask_iou(preds, gt[:, None].expand_as(preds))
            point_ious.append(ious[torch.arange(K), iou_pred[:, 1:].argmax(1)])
            point_oracle.append(ious.max(1).values)
            ys = torch.arange(h).view(1, h, 1)
            xs = torch.arange(w).view(1, 1, w)
            fill = (xs >= box[:, 0, None, None]) & (xs <= box[:, 2, None, None]) & \
                   (ys >= box[:, 1, None, None]) & (ys <= box[:, 3, None, None])
            fill_ious.append(_mask_iou(fill, gt))
    sam.train(was_training)

    def mean(v):
        return float(torch.cat(v).mean()) if v else float("nan")

    return {"box_iou": mean(box_ious), "point_iou": mean(point_ious), "point_iou_best_of_3": mean(point_oracle),
            "box_fill_iou": mean(fill_ious), "n_masks": int(sum(len(v) for v in box_ious))}


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def save_state_dict_atomic(state_dict: dict[str, Tensor], path: str | os.PathLike) -> Path:
    """``torch.save`` a plain {name: tensor} dict to `path` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(clean, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def load_sam_checkpoint(path: str | os.PathLike, model: str | SamConfig = "tiny") -> nn.Module:
    """Build the original SAM for `model` and load an official-format checkpoint into it (strict)."""
    sam = build_sam(model)
    state = torch.load(path, map_location="cpu", weights_only=True)
    sam.load_state_dict(state, strict=True)
    return sam


#: A cached checkpoint whose JSON report records fewer training steps than this is rebuilt.
MIN_REUSE_STEPS = 100


def _trained_enough(path: Path) -> bool:
    """False if the JSON report beside `path` says it was trained for fewer than MIN_REUSE_STEPS steps
    (a checkpoint without a report, e.g. one a user put there, is trusted)."""
    report = path.with_suffix(".json")
    if not report.is_file():
        return True
    try:
        steps = json.loads(report.read_text()).get("steps")
    except (OSError, ValueError):
        return True
    return not isinstance(steps, int) or steps >= MIN_REUSE_STEPS


def _checkpoint_matches(path: Path, model: str) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    ref = build_sam(model).state_dict()
    return isinstance(state, dict) and state.keys() == ref.keys() and all(
        tuple(state[k].shape) == tuple(v.shape) for k, v in ref.items())


# ----------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------
def pretrain_tiny_sam(out_path: str | os.PathLike, config: PretrainConfig | None = None, progress: bool = True,
                      **overrides) -> dict:
    """Pretrain SAM (config ``config.model``, default tiny) on prompted synthetic instance masks.

    Runs within ``config.budget_s`` seconds of wall clock in total: render the scenes, evaluate the
    random-init model on the held-out scenes, train until the time left is what the final evaluation
    needs (but at least ``config.min_steps`` steps, so a busy machine overruns the budget rather than
    return an untrained model; ``config.max_steps`` caps it), evaluate again, write the checkpoint
    (atomically) to `out_path` and a JSON report to ``out_path.with_suffix(".json")``. Returns that
    report. Torch's thread count is picked by timing (1 or the process's own; see `_ThreadTuner`) and
    restored afterwards.
    """
    pc = config if config is not None else PretrainConfig()
    if overrides:
        pc = PretrainConfig(**{**asdict(pc), **overrides})
    out_path = Path(out_path)
    t0 = time.perf_counter()
    cfg = get_sam_config(pc.model)
    torch.manual_seed(pc.seed)
    sam = build_sam(cfg)
    data = PromptScenes(cfg, pc.scenes(), seed=pc.seed, stream="sam_train", min_area_frac=pc.min_area_frac,
                        progress=progress)
    heldout = PromptScenes(cfg, pc.n_heldout, seed=pc.seed, stream="sam_heldout",
                           min_area_frac=pc.min_area_frac)
    tuner = _ThreadTuner()
    try:
        with torch.no_grad():  # pick the thread count for the evaluations with an encoder pass
            tuner.tune(lambda: sam.image_encoder(heldout.inputs[: min(8, len(heldout))]))
        t_eval = time.perf_counter()
        random_init = evaluate_prompted_iou(sam, heldout, pc.eval_masks_per_scene)
        eval_s = time.perf_counter() - t_eval
        deadline = t0 + pc.budget_s - 1.2 * eval_s - 1.0   # leave room for the final evaluation and saving

        sam.train()
        decay, no_decay = [], []
        for name, p in sam.named_parameters():
            (no_decay if p.dim() < 2 or "pos_embed" in name or "rel_pos" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": pc.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=pc.lr, betas=(0.9, 0.999))
        g = torch.Generator().manual_seed(pc.seed + 1)
        t_train = time.perf_counter()
        train_budget = max(deadline - t_train, 0.0)
        bar = _bar(None, progress, "pretrain tiny SAM", unit="step")
        state = {"step": 0, "ema": None}
        history: list[dict] = []

        def finished() -> bool:
            elapsed = time.perf_counter() - t_train
            if pc.max_steps is not None and state["step"] >= pc.max_steps:
                return True
            return elapsed >= train_budget and state["step"] >= pc.min_steps

        def train_one() -> None:
            step = state["step"]
            elapsed = time.perf_counter() - t_train
            # progress reaches 1 when both the time budget and min_steps are used up
            by_time = elapsed / train_budget if train_budget > 0 else float("inf")
            by_steps = step / pc.min_steps if pc.min_steps > 0 else float("inf")
            frac = min(by_time, by_steps, 1.0)
            warm = min(1.0, (step + 1) / max(pc.warmup_steps, 1))
            lr = pc.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            for group in opt.param_groups:
                group["lr"] = lr
            out = _train_step(sam, data, pc, g)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
            opt.step()
            step += 1
            state["step"] = step
            loss = float(out["loss"].detach())
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining loss became {loss} at step {step}")
            ema = state["ema"] = loss if state["ema"] is None else 0.98 * state["ema"] + 0.02 * loss
            if step % 25 == 0 or step == 1:
                history.append({"step": step, "t": round(time.perf_counter() - t0, 1), "loss": round(loss, 4),
                                "focal": round(out["focal"], 5), "dice": round(out["dice"], 4),
                                "train_iou": round(out["train_iou"], 4), "lr": lr,
                                "threads": torch.get_num_threads()})
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", iou=f"{out['train_iou']:.2f}",
                            left=f"{max(0.0, train_budget - elapsed):.0f}s", refresh=False)

        while not finished():
            # every 200 steps, re-pick the thread count with real (counted) training steps
            if state["step"] % 200 == 0 and not tuner.settled(pc.max_steps, state["step"]):
                tuner.tune(train_one, should_stop=finished)
            else:
                train_one()
        bar.close()
        step = state["step"]
        train_s = time.perf_counter() - t_train
        sam.eval()
        pretrained = evaluate_prompted_iou(sam, heldout, pc.eval_masks_per_scene)
        threads_used = sorted(tuner.history)
    finally:
        tuner.restore()
    save_state_dict_atomic(sam.state_dict(), out_path)
    report = {
        "checkpoint": str(out_path),
        "format": "official SAM state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*); "
                  "load with sam.load_state_dict(torch.load(path, weights_only=True))",
        "version": PRETRAIN_VERSION,
        "sam_config": cfg.to_dict(),
        "pretrain_config": asdict(pc),
        "input_hw": [data.h, data.w],
        "n_train_scenes": len(data),
        "n_heldout_scenes": len(heldout),
        "steps": step,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "seconds_per_step": round(train_s / step, 4) if step else None,
        "torch_threads": threads_used,
        "heldout_iou": {"pretrained": pretrained, "random_init": random_init},
        "history": history,
    }
    _write_json_atomic(report, out_path.with_suffix(".json"))
    return report


def format_report(report: dict) -> str:
    """A small table of the held-out prompted-mask IoU, pretrained vs random init."""
    r = report["heldout_iou"]
    lines = [f"tiny SAM pretraining: {report['steps']} steps in {report['train_seconds']} s "
             f"(total {report['total_seconds']} s), {report['n_train_scenes']} scenes at "
             f"{report['input_hw'][0]}x{report['input_hw'][1]}",
             f"held-out prompted-mask IoU on {r['pretrained']['n_masks']} masks of {report['n_heldout_scenes']} "
             f"scenes:",
             f"  {'model':<12} {'box':>7} {'point':>7} {'point(best of 3)':>17}"]
    for name in ("pretrained", "random_init"):
        v = r[name]
        lines.append(f"  {name:<12} {v['box_iou']:7.3f} {v['point_iou']:7.3f} {v['point_iou_best_of_3']:17.3f}")
    lines.append(f"  {'box itself':<12} {r['pretrained']['box_fill_iou']:7.3f}")
    return "\n".join(lines)


def ensure_tiny_sam_checkpoint(path: str | os.PathLike | None = None, budget_s: float = DEFAULT_AUTO_BUDGET_S,
                               seed: int = 0, progress: bool = True) -> Path:
    """Path of the pretrained tiny SAM checkpoint, pretraining it (about `budget_s` seconds) if absent.

    `path` defaults to :func:`default_tiny_sam_path`. An existing file is reused as is if it holds a
    tiny-SAM state dict with the official keys and shapes, whatever budget built it (running
    ``experiments/pretrain_sam.py`` with a longer budget replaces it with a better one), unless the
    JSON report beside it records fewer than MIN_REUSE_STEPS training steps; anything else there is
    rebuilt. On a busy machine the build can run past `budget_s`: it trains at least
    ``PretrainConfig.min_steps`` steps. A file lock makes concurrent callers (DDP ranks) wait for one build.
    """
    path = Path(path) if path is not None else default_tiny_sam_path()

    def usable() -> bool:
        return path.is_file() and _checkpoint_matches(path, "tiny") and _trained_enough(path)

    if usable():
        return path
    from ..data.synthetic import _file_lock

    with _file_lock(path.with_name(f".{path.name}.lock")):
        if usable():
            return path
        if progress:
            why = "not there" if not path.exists() else "unusable (wrong keys/shapes or under-trained)"
            print(f"building the pretrained tiny SAM checkpoint {path} ({why}; ~{budget_s:.0f} s, once)",
                  flush=True)
        report = pretrain_tiny_sam(path, PretrainConfig(budget_s=budget_s, seed=seed), progress=progress)
        if progress:
            print(format_report(report), flush=True)
    return path


class _ThreadTuner:
    """Picks torch's intra-op thread count (1 or the process's own) by timing real work.

    On a shared machine whose cores are busy, two OpenMP threads can be 5-10x slower than one (a
    thread waits at every barrier for a descheduled peer), while on an idle machine two are faster.
    ``tune(fn)`` times `fn` under each candidate and keeps the faster; ``restore()`` puts the
    process's setting back.
    """

    def __init__(self) -> None:
        self.original = torch.get_num_threads()
        self.candidates = sorted({1, self.original})
        self.history: set[int] = {self.original}

    def settled(self, max_steps: int | None, step: int) -> bool:
        return len(self.candidates) == 1 or (max_steps is not None and max_steps - step < 10)

    def tune(self, fn, repeats: int = 2, should_stop=lambda: False) -> int:
        if len(self.candidates) == 1:
            fn()
            return self.candidates[0]
        times = {}
        for n in self.candidates:
            torch.set_num_threads(n)
            done = 0
            for k in range(repeats + 1):  # call 0 is a warm-up at this setting
                if should_stop():
                    break
                if k == 1:
                    t = time.perf_counter()
                fn()
                done = k
            if done < repeats:
                break
            times[n] = time.perf_counter() - t
        best = min(times, key=times.get) if times else self.original
        torch.set_num_threads(best)
        self.history.add(best)
        return best

    def restore(self) -> None:
        torch.set_num_threads(self.original)


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _bar(total, enabled: bool, desc: str, unit: str = "it"):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
