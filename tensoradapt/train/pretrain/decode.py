"""Prompted passes of the original SAM: its mask decoder on one image's embedding, logits back to the input.

`sam` is `segment_anything.modeling.Sam` (see :func:`tensoradapt.sam.build_sam`); an image's embedding is
(1, D, g, g). Output index 0 is SAM's single-mask output, 1-3 its three "multimask" outputs for ambiguous
prompts.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["decode_prompts", "to_input_frame"]


def decode_prompts(sam: nn.Module, embedding: Tensor, points: tuple[Tensor, Tensor] | None = None,
                   boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All four mask outputs for K prompts on one image.

    Args:
        embedding: (1, D, g, g) image embedding.
        points: ((K, P, 2) float x, y coordinates, (K, P) labels: 1 positive, 0 negative), or None.
        boxes: (K, 4) float x0, y0, x1, y1, or None.
    Returns:
        low-res mask logits (K, 4, 4g, 4g) and predicted IoUs (K, 4).
    """
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder.predict_masks(
        image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def to_input_frame(sam: nn.Module, low: Tensor, h: int, w: int) -> Tensor:
    """Low-res mask logits (..., 4g, 4g) -> logits on the unpadded input (..., h, w): bilinear up to the
    padded square input, then the top-left h x w crop."""
    S = sam.image_encoder.img_size
    shape = low.shape
    up = F.interpolate(low.reshape(-1, 1, *shape[-2:]), (S, S), mode="bilinear", align_corners=False)
    return up[..., :h, :w].reshape(*shape[:-2], h, w)
