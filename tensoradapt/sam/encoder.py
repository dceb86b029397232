"""Running segment-anything's `ImageEncoderViT` with task deltas: all requested tasks in one batch.

With a task delta in every block, each task sees different image embeddings, so the encoder runs once
per task; `encode_tasks` does that as one mixed-task batch of T'*B samples, *task-major* (rows
[k*B, (k+1)*B) are the k-th requested task), routing per-sample task ids to the adapted layers. The
frozen patch embedding is the same for every task and runs once on the B images.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from ..deltas import TaskIndex
from ..inject import task_linears, task_scope
from ._import import sam_modeling

__all__ = ["encoder_norms", "encode_tasks", "run_encoder"]


def encoder_norms(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's LayerNorms: every block's norm1 / norm2 and the neck's two LayerNorm2d."""
    norm2d = sam_modeling().common.LayerNorm2d
    return [m for m in encoder.modules() if isinstance(m, (nn.LayerNorm, norm2d))]


def encode_tasks(
    encoder: nn.Module,
    x: Tensor,
    task_indices: Sequence[int],
    has_delta: bool,
    task_agnostic: bool,
    recompute: bool = False,
) -> Tensor:
    """x (B, 3, S, S) -> (B, D, g, g) if task-agnostic or one task, else task-major (T'*B, D, g, g).

    `task_indices` are the requested tasks' ids (T' of them); `recompute` turns on activation
    checkpointing of the blocks. A multi-task batch on a merged encoder is refused (a merged layer would
    silently apply its one task's weights to every sample).
    """
    if not has_delta:
        return run_encoder(encoder, x, recompute=recompute)
    if task_agnostic or len(task_indices) == 1:
        with task_scope(encoder, 0 if task_agnostic else int(task_indices[0])):
            return run_encoder(encoder, x, recompute=recompute)
    merged = {layer.merged_task for _, layer in task_linears(encoder)} - {None}
    if merged:
        raise RuntimeError(
            f"the encoder is merged for task {sorted(merged)}: call tensoradapt.unmerge_adapters(model) "
            "before a multi-task forward (or request that task only)"
        )
    B = x.shape[0]
    ids = torch.tensor(list(task_indices), dtype=torch.long, device=x.device).repeat_interleave(B)
    with task_scope(encoder, ids):
        return run_encoder(encoder, x, repeats=len(task_indices), recompute=recompute)


def run_encoder(encoder: nn.Module, x: Tensor, repeats: int = 1, recompute: bool = False) -> Tensor:
    """The ImageEncoderViT forward, step by step: x (B, 3, S, S) -> (repeats*B, D, g, g), task-major.

    The frozen patch embedding (+ absolute positions) runs once on the B images and its output is
    repeated for the task passes; only the blocks see B*repeats samples. With `recompute` each block's
    activations are recomputed in backward instead of stored (for vit_l / vit_h memory).
    """
    tokens = encoder.patch_embed(x)  # (B, g, g, C)
    if encoder.pos_embed is not None:
        tokens = tokens + encoder.pos_embed
    if repeats > 1:
        tokens = tokens.repeat(repeats, 1, 1, 1)
    for block in encoder.blocks:
        if recompute:
            task = next((layer.task for _, layer in task_linears(block)), None)
            tokens = recompute_in_backward(_routed_block, block, tokens, task, use_reentrant=False)
        else:
            tokens = block(tokens)
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
