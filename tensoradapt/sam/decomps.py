"""The encoder adaptations mSAM offers: every task delta of `tensoradapt.deltas`, plus three baselines.

Written once here and imported by the config, the model, the CLIs and the tests:

- `DECOMPS`: every `decomp` `build_msam` takes, the core library's deltas followed by the baselines
  without a delta, `NO_DELTA` = ("full", "frozen", "none");
- `TASK_AGNOSTIC`: those whose encoder is the same for every task (it runs once per batch, not T times);
- `PAPER_RANKS` / `SMALL_RANKS` / `default_ranks`: the ranks used when a caller passes none.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..deltas import DECOMPS as DELTA_DECOMPS

if TYPE_CHECKING:  # only for the annotation: config.py imports this module
    from .config import SamConfig

__all__ = ["DECOMPS", "NO_DELTA", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "default_ranks"]

#: the baselines without a task delta: "full" (encoder unfrozen), "frozen" (encoder frozen, LayerNorms
#: included), "none" (encoder frozen; its LayerNorms train if `train_norms`)
NO_DELTA: tuple[str, ...] = ("full", "frozen", "none")
#: every `decomp` build_msam takes: the core library's deltas, then the baselines without a delta
DECOMPS: tuple[str, ...] = (*DELTA_DECOMPS, *NO_DELTA)
#: decompositions whose encoder is the same for every task (one LoRA shared by all tasks, or no delta)
TASK_AGNOSTIC: tuple[str, ...] = ("shared-lora", *NO_DELTA)

#: Default ranks for the official sizes (encoder width >= 512): the paper's TA-LoRA ranks R1 = R2 = 32,
#: R3 = 4 (= (r_task, r_out, r_in) = (4, 32, 32)), LoRA rank 32, and the experiment CLI's CP / TT choices.
PAPER_RANKS: dict[str, Any] = {"tucker": (4, 32, 32), "cp": 32, "tt": (16, 16), "lora": 32, "shared-lora": 32}
#: Default ranks for narrow encoders (the tiny config, width 128): the paper's bottleneck is 1/32 of
#: ViT-L's width; 8 of 128 keeps the deltas a small fraction of the encoder (Tucker ~4.4k parameters per
#: block against ~197k frozen ones) while leaving every rank well inside its mode.
SMALL_RANKS: dict[str, Any] = {"tucker": (4, 8, 8), "cp": 8, "tt": (4, 8), "lora": 8, "shared-lora": 8}


def default_ranks(decomp: str, config: "SamConfig") -> Any:
    """The ranks `build_msam` uses when `ranks=None` (None for the decompositions without a delta)."""
    if decomp not in DECOMPS:
        raise ValueError(f"decomp must be one of {list(DECOMPS)}, got {decomp!r}")
    if decomp in NO_DELTA:
        return None
    # TODO(issue 11): delegate to the delta class once it owns its default ranks (refactor-deltas).
    table = PAPER_RANKS if config.encoder_embed_dim >= 512 else SMALL_RANKS
    return table[decomp]
