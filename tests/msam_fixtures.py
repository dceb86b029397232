"""Shared pieces of the mSAM tests: a random tiny SAM, its checkpoint file, task tables, delta noise.

Import the fixtures into a test module (`from msam_fixtures import ckpt, sam`); pytest finds them there.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tensoradapt import merge_adapters, task_deltas, unmerge_adapters
from tensoradapt.sam import build_sam

TASKS = {"semantic": 13, "depth": 1, "normal": 3}
SMALL = {"a": 3, "b": 1, "c": 2}


@pytest.fixture(scope="module")
def sam() -> nn.Module:
    """A random tiny SAM with non-zero position tables (SAM zero-inits rel_pos), in eval mode."""
    torch.manual_seed(0)
    model = build_sam("tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def ckpt(sam: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam`'s state dict saved as an official-format checkpoint file."""
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def mixed_batch_equals_folded(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Assert that the encoder's mixed-task batch (all tasks, task-major) equals, task by task, the encoder
    with that task's deltas merged into its weights; return the mixed batch's levels (one for SAM, 3 for SAM 2)."""
    B = x.shape[0]
    as_levels = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    with torch.no_grad():
        mixed = as_levels(model._encode(model.preprocess(x)[0], list(range(len(model.task_names)))))
        for k, name in enumerate(model.task_names):
            merge_adapters(model, k)
            folded = as_levels(model.encode(x, name))
            unmerge_adapters(model)
            for level, alone in zip(mixed, folded, strict=True):
                torch.testing.assert_close(level[k * B:(k + 1) * B], alone, atol=1e-4, rtol=1e-4)
    return mixed


def randomise_deltas(model: nn.Module, std: float = 0.3) -> None:
    """Non-zero deltas (N(0, std) factors) and perturbed no-mask embeddings, so that tasks differ."""
    with torch.no_grad():
        for _, d in task_deltas(model):
            for p in d.parameters():
                p.normal_(0.0, std)
        for p in model.no_mask_embeds.values():
            p.add_(torch.randn_like(p))
