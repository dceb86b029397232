"""The decompositions by name: every `TaskDelta` subclass with a `decomp` name registers itself here.

`DELTA_CLASSES` is the one list of decompositions: `make_delta`, `parse_ranks`, `adapt(decomp=...)`,
`AdapterConfig` and `load_adapter` read it, so a new decomposition is one new class and no other edit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .base import TaskDelta

__all__ = ["DELTA_CLASSES", "register_delta", "unregister_delta", "delta_class", "make_delta", "parse_ranks"]

#: decomp name -> class, in registration order (the order of `DECOMPS`)
DELTA_CLASSES: dict[str, type["TaskDelta"]] = {}


def register_delta(cls: type["TaskDelta"]) -> type["TaskDelta"]:
    """Add `cls` under `cls.decomp` (called by `TaskDelta.__init_subclass__`).

    Redefining the same class (same module and qualified name, e.g. a re-run notebook cell) replaces it;
    another class under a taken name is an error.
    """
    name = cls.decomp
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__}.decomp must be a non-empty str, got {name!r}")
    if not cls.rank_names or not all(isinstance(n, str) and n for n in cls.rank_names):
        raise ValueError(f"{cls.__qualname__}.rank_names must name each rank, got {cls.rank_names!r}")
    old = DELTA_CLASSES.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"decomp {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__module__}.{cls.__qualname__} another decomp name"
        )
    DELTA_CLASSES[name] = cls
    return cls


def unregister_delta(decomp: str) -> type["TaskDelta"]:
    """Remove and return the class registered as `decomp` (e.g. a test's toy decomposition)."""
    return DELTA_CLASSES.pop(delta_class(decomp).decomp)


def delta_class(decomp: str) -> type["TaskDelta"]:
    """The class registered as `decomp`; a clear error for an unknown name."""
    cls = DELTA_CLASSES.get(decomp) if isinstance(decomp, str) else None
    if cls is None:
        raise ValueError(f"decomp must be one of {sorted(DELTA_CLASSES)}, got {decomp!r}")
    return cls


def make_delta(decomp: str, shape: Sequence[int], ranks, init: str = "paper") -> "TaskDelta":
    """Build a delta by name: `make_delta("tucker", (T, d_out, d_in), (4, 32, 32))`."""
    return delta_class(decomp)(shape=shape, ranks=ranks, init=init)


def parse_ranks(decomp: str, ranks: str | int | Sequence[int]) -> int | tuple[int, ...]:
    """Normalise ranks for `decomp` from a CLI string ("4,32,32"), an int or a sequence; check the arity.

    Returns an int for one-rank decompositions (cp, lora, shared-lora) and a tuple otherwise
    (`TaskDelta.normalize_ranks` of the class registered as `decomp`).
    """
    return delta_class(decomp).normalize_ranks(ranks)
