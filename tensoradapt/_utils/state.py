"""The trainable state of a model, loading a subset of a state dict strictly, and frozen-weight fingerprints.

*Trainable state* (one definition for checkpoints, saved adapters and saved mSAMs): every parameter with
`requires_grad` plus every persistent buffer, keyed as in `state_dict()`. The frozen parameters are not in
it; they come back from the base model, and a *fingerprint* of them (float64 sum and sum of squares per
tensor) is stored beside the state so that loading onto other base weights is an error, not a silent mix.
"""
from __future__ import annotations

import math
from typing import Callable, Collection, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "StateMismatchError", "trainable_state_dict", "load_state_subset", "frozen_fingerprint",
    "fingerprint_mismatch",
]

_SHOW = 8


class StateMismatchError(KeyError):
    """A state dict does not have exactly the expected keys and shapes (the message names them)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def _listing(keys: list[str]) -> str:
    return f"{keys[:_SHOW]}{' ...' if len(keys) > _SHOW else ''} ({len(keys)})"


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Parameters with `requires_grad` and persistent buffers, detached (not copied), by state-dict key."""
    return {
        k: v.detach()
        for k, v in model.state_dict(keep_vars=True).items()
        if not (isinstance(v, nn.Parameter) and not v.requires_grad)
    }


def load_state_subset(
    model: nn.Module,
    state: Mapping[str, Tensor],
    keys: Collection[str] | None = None,
    source: str = "state dict",
    error: Callable[[str], Exception] = StateMismatchError,
) -> None:
    """Load `state` into `model`, which must hold exactly the keys `keys` (default: its trainable state).

    Missing keys, unexpected keys and shape mismatches raise `error(message)` naming `source` and the keys,
    before anything is copied; the copy itself is `load_state_dict(strict=False)`.
    """
    own = model.state_dict(keep_vars=True)
    expected = set(trainable_state_dict(model) if keys is None else keys)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise error(
            f"{source} does not match the model: missing keys {_listing(missing)}, "
            f"unexpected keys {_listing(unexpected)}"
        )
    absent = sorted(k for k in expected if k not in own)
    if absent:
        raise error(f"{source}: the model has no tensors {_listing(absent)}")
    bad = [
        f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(own[k].shape)} in the model"
        for k in sorted(expected) if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise error(f"{source}: shape mismatch for {bad[:_SHOW]}{' ...' if len(bad) > _SHOW else ''}")
    result = model.load_state_dict(dict(state), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above


def frozen_fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """{name: [float64 sum, float64 sum of squares]} of every parameter that does not require grad."""
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                d = p.detach().double()
                out[name] = [float(d.sum()), float((d * d).sum())]
    return out


def fingerprint_mismatch(
    saved: Mapping[str, list[float]], current: Mapping[str, list[float]], rel_tol: float = 1e-6
) -> str | None:
    """None when two fingerprints agree; otherwise a sentence naming the first tensors that differ."""
    if set(saved) != set(current):
        missing, extra = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
        return f"frozen tensors differ by name: saved only {_listing(missing)}, model only {_listing(extra)}"
    differ = [
        k for k in saved
        if not all(math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-6) for a, b in zip(saved[k], current[k]))
    ]
    if differ:
        return f"frozen weights differ in {_listing(differ)}"
    return None
