"""The pretrained checkpoint on disk: an official-format SAM state dict, byte-reproducible, and its report.

The weights are ``torch.save`` of a plain state dict with the official key layout (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``), so they load like ``sam_vit_b_01ec64.pth``:
``sam.load_state_dict(torch.load(path, weights_only=True))``. They are serialised in memory (the archive's
inner name is then fixed, not the temporary file's) and written atomically, so equal weights give equal
bytes; the report beside them (``<name>.json``) records their sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..._utils import atomic_write_bytes
from ...sam import SamConfig, build_sam
from ...sam.weights import read_sam_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "write_checkpoint", "file_sha256", "report_path", "read_report",
           "load_sam_checkpoint", "sam_from_state", "code_revision"]

CHECKPOINT_FORMAT = ("official SAM state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*); "
                     "load with sam.load_state_dict(torch.load(path, weights_only=True))")


def write_checkpoint(state_dict: Mapping[str, Tensor], path: str | os.PathLike) -> str:
    """Atomically ``torch.save`` a {name: tensor} dict (detached, on the CPU, contiguous) to `path`;
    returns the sha256 of the bytes written (the same for the same tensors, whatever the path)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    buf = io.BytesIO()
    torch.save(clean, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def report_path(path: str | os.PathLike) -> Path:
    """The JSON report beside a checkpoint: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def read_report(path: str | os.PathLike) -> dict[str, Any] | None:
    """The report beside the checkpoint `path`, or None if it is absent or not a JSON object."""
    try:
        report = json.loads(report_path(path).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def sam_from_state(state: Mapping[str, Tensor], model: str | SamConfig = "tiny") -> nn.Module:
    """The original SAM for `model` with an official-layout state dict loaded strictly (fp16 weights cast to fp32)."""
    sam = build_sam(model)
    sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return sam


def load_sam_checkpoint(path: str | os.PathLike, model: str | SamConfig = "tiny") -> nn.Module:
    """:func:`sam_from_state` of an official-format checkpoint file (``.pth`` or ``.safetensors``)."""
    return sam_from_state(read_sam_checkpoint(path)[0], model)


def code_revision() -> str:
    """The git commit of this code (with "+dirty" when its work tree has changes), or "unknown" (not a
    git checkout: an installed wheel)."""
    repo = Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
