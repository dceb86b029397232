"""Config dataclasses read from JSON: unknown keys are refused, never silently dropped."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["dataclass_kwargs"]


def dataclass_kwargs(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` as keyword arguments for the dataclass `cls`, refusing keys it has no field for (a config
    JSON from another version or a typo must not be half-read)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(data)
