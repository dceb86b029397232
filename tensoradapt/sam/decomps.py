"""The encoder adaptations mSAM offers: every task delta of `tensoradapt.deltas`, plus three baselines.

Written once here and imported by the config, the model, the CLIs and the tests:

- `DECOMPS`: every `decomp` `build_msam` takes, the registered deltas followed by the baselines without a
  delta, `NO_DELTA` = ("full", "frozen", "none");
- `TASK_AGNOSTIC`: those whose encoder is the same for every task (it runs once per batch, not T times): the
  baselines and every delta class with `task_shared = True`;
- `PAPER_RANKS` / `SMALL_RANKS` / `default_ranks`: the ranks used when a caller passes none (each delta class's
  `paper_ranks` / `narrow_ranks`).

`DECOMPS`, `TASK_AGNOSTIC`, `PAPER_RANKS` and `SMALL_RANKS` are read from the delta registry when accessed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import deltas
from ..deltas import DELTA_CLASSES, delta_class

if TYPE_CHECKING:  # only for the annotation: config.py imports this module
    from .config import SamConfig

__all__ = [
    "DECOMPS", "NO_DELTA", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "default_ranks", "msam_decomps",
    "is_task_agnostic",
]

#: the baselines without a task delta: "full" (encoder unfrozen), "frozen" (encoder frozen, LayerNorms
#: included), "none" (encoder frozen; its LayerNorms train if `train_norms`)
NO_DELTA: tuple[str, ...] = ("full", "frozen", "none")


def msam_decomps() -> tuple[str, ...]:
    """Every `decomp` build_msam takes: the registered task deltas, then the baselines without a delta."""
    return (*deltas.DECOMPS, *NO_DELTA)


def is_task_agnostic(decomp: str) -> bool:
    """True when the encoder is the same for every task (one delta shared by all tasks, e.g. shared-lora,
    or no delta): it then runs once per batch, not once per task."""
    return decomp in NO_DELTA or bool(getattr(DELTA_CLASSES.get(decomp), "task_shared", False))


def __getattr__(name: str) -> Any:
    # Read from the delta registry when asked for, so a decomposition registered later is offered too.
    if name == "DECOMPS":
        return msam_decomps()
    if name == "TASK_AGNOSTIC":
        return tuple(d for d in msam_decomps() if is_task_agnostic(d))
    if name == "PAPER_RANKS":  # the paper's ranks (tucker (4, 32, 32), rank 32 for the others): width >= 512
        return {d: cls.paper_ranks for d, cls in DELTA_CLASSES.items()}
    if name == "SMALL_RANKS":  # narrow encoders (the tiny config): a bottleneck of 8
        return {d: cls.narrow_ranks for d, cls in DELTA_CLASSES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_ranks(decomp: str, config: "SamConfig") -> Any:
    """The ranks `build_msam` uses when `ranks=None` (None for the decompositions without a delta)."""
    if decomp not in msam_decomps():
        raise ValueError(f"decomp must be one of {list(msam_decomps())}, got {decomp!r}")
    if decomp in NO_DELTA:
        return None
    return delta_class(decomp).default_ranks(config.encoder_embed_dim)
