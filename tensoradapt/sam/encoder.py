"""Running an adapted encoder's blocks: segment-anything's `ImageEncoderViT` step by step, and one block with
activation checkpointing that keeps the task routing (shared with mSAM-2's Hiera blocks).

With a task delta in every block, each task sees different image embeddings, so the encoder runs once per
task, as one mixed-task batch of T'*B samples (`multitask.encode_task_batch` routes it); the frozen patch
embedding is the same for every task and runs once on the B images.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from ..deltas import TaskIndex
from ..inject import task_linears
from ._import import sam_modeling

__all__ = ["encoder_norms", "run_encoder", "run_block"]


def encoder_norms(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's LayerNorms: every block's norm1 / norm2 and the neck's two LayerNorm2d."""
    norm2d = sam_modeling().common.LayerNorm2d
    return [m for m in encoder.modules() if isinstance(m, (nn.LayerNorm, norm2d))]


def run_block(block: nn.Module, tokens: Tensor, recompute: bool = False) -> Tensor:
    """`block(tokens)`; with `recompute`, activation-checkpointed with the forward's task routing kept."""
    if not recompute:
        return block(tokens)
    task = next((layer.task for _, layer in task_linears(block)), None)
    return recompute_in_backward(_routed_block, block, tokens, task, use_reentrant=False)


def run_encoder(encoder: nn.Module, x: Tensor, repeats: int = 1, recompute: bool = False,
                shared_blocks: int = 0) -> Tensor:
    """The ImageEncoderViT forward, step by step: x (B, 3, S, S) -> (repeats*B, D, g, g), task-major.

    The frozen patch embedding (+ absolute positions) and the first `shared_blocks` blocks (the task-shared
    trunk) run once on the B images and their output is repeated for the task passes; only the later
    blocks see B*repeats samples. With `recompute` each block's activations are recomputed in backward
    instead of stored (for vit_l / vit_h memory).
    """
    tokens = encoder.patch_embed(x)  # (B, g, g, C)
    if encoder.pos_embed is not None:
        tokens = tokens + encoder.pos_embed
    for block in encoder.blocks[:shared_blocks]:
        tokens = run_block(block, tokens, recompute)
    if repeats > 1:
        tokens = tokens.repeat(repeats, 1, 1, 1)
    for block in encoder.blocks[shared_blocks:]:
        tokens = run_block(block, tokens, recompute)
    return encoder.neck(tokens.permute(0, 3, 1, 2))


def _routed_block(block: nn.Module, tokens: Tensor, task: TaskIndex | None) -> Tensor:
    """Run `block` with `task` routed to its adapted layers.

    Activation checkpointing recomputes a block during backward, after the forward's `task_scope` has
    ended, so the routing is captured at forward time and re-applied around the recomputation.
    """
    layers = [layer for _, layer in task_linears(block)]
    saved = [layer.task for layer in layers]
    for layer in layers:
        layer.task = task
    try:
        return block(tokens)
    finally:
        for layer, old in zip(layers, saved):
            layer.task = old
