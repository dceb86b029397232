"""Checkpoints that are never half-written nor half-loaded.

File format (one file, so a rename makes it appear atomically)::

    b"TADAPT-CKPT\\n"  magic
    b"<64 hex chars>\\n"  sha256 of the payload
    b"<decimal length>\\n"  payload length in bytes
    payload             torch.save bytes of a dict of tensors / plain Python data

`save_checkpoint` writes to a temporary file in the same directory, fsyncs it and `os.replace`s it
onto the target. `load_checkpoint` checks magic, length and hash before unpickling anything and raises
`CheckpointError` naming the file otherwise; the payload is read with `weights_only=True`.

The model part of a checkpoint is `tensoradapt._utils`' trainable state (parameters with `requires_grad`
and persistent buffers); `trainable_state_dict` / `load_trainable_state_dict` below are that definition
with a checkpoint's conventions (a CPU snapshot; mismatches raise `CheckpointError`). The RNG helpers
capture and restore every generator a resumed run must continue.
"""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import atomic_write_bytes, load_state_subset
from .._utils import trainable_state_dict as _trainable_state

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "trainable_state_dict", "load_trainable_state_dict",
    "seed_everything", "capture_rng_state", "restore_rng_state",
]

MAGIC = b"TADAPT-CKPT\n"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a tensoradapt checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + str(len(data)).encode() + b"\n" + data)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not raw.startswith(MAGIC):
        raise CheckpointError(
            f"checkpoint {path} is not a tensoradapt training checkpoint (bad header; {len(raw)} bytes)"
        )
    rest = raw[len(MAGIC):]
    try:
        digest, length, data = rest.split(b"\n", 2)
        length = int(length)
        digest = digest.decode("ascii")
    except ValueError:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (unreadable header)") from None
    if len(data) != length:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: payload has {len(data)} bytes, header says {length}"
        )
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 of the payload does not match its header")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # hash matched, so this is a version/format problem, not a damaged file
        raise CheckpointError(f"checkpoint {path} could not be unpickled: {e}") from e


# ---- model state -------------------------------------------------------------------------------------
def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A CPU snapshot (copies) of the model's trainable state, keyed as in `state_dict()`."""
    return {k: v.cpu().clone() for k, v in _trainable_state(model).items()}


def load_trainable_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load a trainable state back; keys and shapes must match the model's exactly (else `CheckpointError`,
    raised before anything is copied)."""
    load_state_subset(model, state, source=source,
                      error=lambda msg: CheckpointError(f"{msg} (another decomposition, ranks or model?)"))


# ---- RNG state --------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + every CUDA device) RNG states as weights_only-loadable data."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
