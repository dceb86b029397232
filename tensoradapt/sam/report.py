"""Where an mSAM's parameters are: counts by part (deltas, decoders, no-mask embeddings, encoder norms)."""
from __future__ import annotations

from ..inject import task_deltas
from .multitask import MultiTaskSAMBase

__all__ = ["parameter_breakdown"]

_PARTS = (
    "trainable", "total", "delta", "encoder_norms_trainable", "encoder_other_trainable", "decoders_trainable",
    "decoders_frozen", "no_mask_embeds", "encoder_frozen",
)


def parameter_breakdown(model: MultiTaskSAMBase) -> dict[str, int]:
    """Parameter counts by part: trainable / total, the deltas, decoders, embeddings, encoder norms.

    Works on the meta device (counts only). `trainable` is the sum of `delta`, `no_mask_embeds`,
    `decoders_trainable`, `encoder_norms_trainable` and `encoder_other_trainable` ("full" only).
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
