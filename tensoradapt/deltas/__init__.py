"""Factorised task deltas: one `(T, d_out, d_in)` update tensor per adapted linear layer."""
from __future__ import annotations

from typing import Sequence

from .base import INITS, TaskDelta, TaskIndex, check_task_index
from .cp import CPDelta
from .lora import LoRADelta, SharedLoRADelta
from .tt import TTDelta
from .tucker import TuckerDelta

__all__ = [
    "TaskDelta", "TaskIndex", "CPDelta", "TuckerDelta", "TTDelta", "LoRADelta", "SharedLoRADelta",
    "DELTA_CLASSES", "DECOMPS", "INITS", "make_delta", "parse_ranks", "check_task_index",
]

DELTA_CLASSES: dict[str, type[TaskDelta]] = {
    cls.decomp: cls for cls in (CPDelta, TuckerDelta, TTDelta, LoRADelta, SharedLoRADelta)
}
DECOMPS: tuple[str, ...] = tuple(DELTA_CLASSES)

#: how many ranks each decomposition takes, and their names (for messages and CLI parsing)
RANK_ARITY: dict[str, tuple[int, str]] = {
    "cp": (1, "R"),
    "tucker": (3, "r_task,r_out,r_in"),
    "tt": (2, "r1,r2"),
    "lora": (1, "r"),
    "shared-lora": (1, "r"),
}


def parse_ranks(decomp: str, ranks: str | int | Sequence[int]):
    """Normalise ranks for `decomp` from a CLI string ("4,32,32") or a sequence; check the arity.

    Returns an int for cp / lora / shared-lora and a tuple for tucker / tt.
    """
    if decomp not in RANK_ARITY:
        raise ValueError(f"decomp must be one of {sorted(RANK_ARITY)}, got {decomp!r}")
    arity, names = RANK_ARITY[decomp]
    if isinstance(ranks, str):
        try:
            values = tuple(int(v) for v in ranks.replace(" ", "").split(",") if v != "")
        except ValueError:
            raise ValueError(
                f"ranks for {decomp} must be {arity} comma-separated ints ({names}), got {ranks!r}"
            ) from None
    elif isinstance(ranks, int) and not isinstance(ranks, bool):
        values = (ranks,)
    else:
        values = tuple(ranks)
    if len(values) != arity:
        raise ValueError(f"ranks for {decomp} must be {arity} value(s) ({names}), got {values}")
    if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
        raise ValueError(f"ranks for {decomp} must be positive ints ({names}), got {values}")
    return values[0] if arity == 1 else values


def make_delta(decomp: str, shape: Sequence[int], ranks, init: str = "paper") -> TaskDelta:
    """Build a delta by name: `make_delta("tucker", (T, d_out, d_in), (4, 32, 32))`."""
    if decomp not in DELTA_CLASSES:
        raise ValueError(f"decomp must be one of {sorted(DELTA_CLASSES)}, got {decomp!r}")
    return DELTA_CLASSES[decomp](shape=shape, ranks=ranks, init=init)
