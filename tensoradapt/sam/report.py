"""Where an mSAM's parameters are: counts by part (deltas, decoders, no-mask embeddings, encoder norms), and
the named parameter groups a trainer can give their own learning rates."""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..inject import task_deltas
from .multitask import MultiTaskSAMBase

__all__ = ["parameter_breakdown", "MSAM_PARAM_GROUPS", "msam_param_groups"]

#: the parameter groups `msam_param_groups` names (a parameter belongs to the first that holds it)
MSAM_PARAM_GROUPS = ("delta", "embed", "decoder", "encoder")

_PARTS = (
    "trainable", "total", "delta", "encoder_norms_trainable", "encoder_other_trainable", "decoders_trainable",
    "decoders_frozen", "no_mask_embeds", "encoder_frozen",
)


def parameter_breakdown(model: MultiTaskSAMBase) -> dict[str, int]:
    """Parameter counts by part: trainable / total, the deltas, decoders, embeddings, encoder norms.

    Works on the meta device (counts only). `trainable` is the sum of `delta`, `no_mask_embeds`,
    `decoders_trainable`, `encoder_norms_trainable` and `encoder_other_trainable` ("full", `train_modules`).
    """
    if not isinstance(model, MultiTaskSAMBase):
        raise TypeError(f"model must be an mSAM (MultiTaskSAM or MultiTaskSAM2), got {type(model).__name__}")
    deltas = {id(p) for _, d in task_deltas(model) for p in d.parameters()}
    embeds = {id(p) for p in model.no_mask_embeds.values()}
    norms = {id(p) for m in model.encoder_norms() for p in m.parameters()}
    out = dict.fromkeys(_PARTS, 0)
    for name, p in model.named_parameters():
        n = p.numel()
        out["total"] += n
        out["trainable"] += n if p.requires_grad else 0
        if id(p) in deltas:
            out["delta"] += n
        elif id(p) in embeds:
            out["no_mask_embeds"] += n
        elif name.startswith("decoders."):
            out["decoders_trainable" if p.requires_grad else "decoders_frozen"] += n
        elif not p.requires_grad:
            out["encoder_frozen"] += n
        elif id(p) in norms:
            out["encoder_norms_trainable"] += n
        else:
            out["encoder_other_trainable"] += n
    return out


def msam_param_groups(model: MultiTaskSAMBase) -> dict[str, Callable[[str, Tensor], bool]]:
    """Predicates `(name, param) -> bool` for `MSAM_PARAM_GROUPS`, with `model`'s parameter names: "delta" (the
    encoder's task deltas), "embed" (the no-mask embeddings), "decoder" (the mask decoders), "encoder" (the rest
    of the encoder: LayerNorms, `train_modules`, or everything with "full"). For `Trainer(param_groups_by=...)` and
    `TrainConfig.lr_scale`, e.g. {"delta": 0.33, "embed": 10}."""
    if not isinstance(model, MultiTaskSAMBase):
        raise TypeError(f"model must be an mSAM (MultiTaskSAM or MultiTaskSAM2), got {type(model).__name__}")
    deltas = {id(p) for _, d in task_deltas(model) for p in d.parameters()}
    return {
        "delta": lambda name, p: id(p) in deltas,
        "embed": lambda name, p: name.startswith("no_mask_embeds."),
        "decoder": lambda name, p: name.startswith("decoders."),
        "encoder": lambda name, p: name.startswith("image_encoder."),
    }
