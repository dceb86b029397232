"""Saving and loading a trained mSAM: a folder with its trained tensors and the config that rebuilds it.

    run/msam.safetensors    the trainable state (`_utils.trainable_state_dict`: requires_grad parameters
                            + persistent buffers), or every tensor with `include_frozen=True`
    run/msam_config.json    {"format", "saved": "trainable" | "all", "msam_config", "weights_sha256",
                             "frozen_fingerprint": {frozen parameter name: [sum, sum of squares]}}

The frozen weights are not saved (by default): `load_msam` rebuilds them from the base SAM checkpoint and
compares them with the saved fingerprint (`_utils.frozen_fingerprint`, the format the training engine
uses too), so other base weights are an error naming the tensors that differ, never a silent mix. The
sha256 of the weights file is recorded, so a truncated file, or one from another save, is refused.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._utils import (
    atomic_path, atomic_write_json, fingerprint_mismatch, frozen_fingerprint, load_state_subset,
    trainable_state_dict,
)
from ..inject import task_linears
from .config import MSamConfig
from .model import msam_from_config
from .multitask import MultiTaskSAMBase
from .weights import SamWeightsSource

__all__ = ["save_msam", "load_msam", "MSAM_WEIGHTS", "MSAM_CONFIG", "MSAM_FORMAT"]

MSAM_WEIGHTS = "msam.safetensors"
MSAM_CONFIG = "msam_config.json"
#: version 2: `_utils` trainable state (the PE buffer included), per-tensor fingerprint, weights sha256
MSAM_FORMAT = "tensoradapt.msam/2"
_OLD_FORMATS = ("tensoradapt.msam/1",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_msam(model: MultiTaskSAMBase, directory: str | Path, include_frozen: bool = False) -> Path:
    """Write `msam.safetensors` and `msam_config.json` into `directory`, each atomically; return it.

    The trainable state is the deltas, no-mask embeddings, trained decoder parts, (if trained) the
    encoder LayerNorms and the image-PE buffer; "full" saves the whole encoder. `include_frozen=True`
    saves every tensor (self-contained, e.g. for a model built without a checkpoint).
    """
    from safetensors.torch import save_file

    if not isinstance(model, MultiTaskSAMBase):
        raise TypeError(f"model must be an mSAM (MultiTaskSAM or MultiTaskSAM2), got {type(model).__name__}")
    merged = sorted({layer.merged_task for _, layer in task_linears(model)} - {None})
    if merged:  # the frozen qkv weights hold a folded delta: the fingerprint would not match on load
        raise RuntimeError(f"the encoder is merged for task {merged}: call tensoradapt.unmerge_adapters(model) first")
    directory = Path(directory)
    state = model.state_dict() if include_frozen else trainable_state_dict(model)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    weights = directory / MSAM_WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
        sha = _sha256(tmp)
    atomic_write_json(directory / MSAM_CONFIG, {
        "format": MSAM_FORMAT,
        "saved": "all" if include_frozen else "trainable",
        "msam_config": model.msam_config.to_dict(),
        "weights_sha256": sha,
        "frozen_fingerprint": frozen_fingerprint(model),
    })
    return directory


_USE_SAVED: Any = object()


def _read_meta(directory: Path) -> dict[str, Any]:
    cfg_path = directory / MSAM_CONFIG
    for p in (cfg_path, directory / MSAM_WEIGHTS):
        if not p.is_file():
            raise FileNotFoundError(f"mSAM directory {directory} lacks {p.name} (written by save_msam)")
    try:
        meta = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}): the folder was not written by save_msam") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in _OLD_FORMATS:
        raise ValueError(
            f"{directory} was saved in the older mSAM format {fmt!r}; this version reads {MSAM_FORMAT!r} "
            "(another trainable-state and fingerprint layout). Load it with the tensoradapt version that "
            "wrote it and save it again, or retrain."
        )
    if fmt != MSAM_FORMAT:
        raise ValueError(f"{cfg_path} is not an mSAM config (format {fmt!r}, expected {MSAM_FORMAT!r})")
    missing = sorted({"saved", "msam_config", "weights_sha256", "frozen_fingerprint"} - set(meta))
    if missing or meta["saved"] not in ("trainable", "all"):
        raise ValueError(f"{cfg_path} is incomplete or damaged: missing {missing}, saved={meta.get('saved')!r}")
    return meta


def _read_weights(path: Path, sha256: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if _sha256(path) != sha256:
        raise ValueError(
            f"{path} is not the file {path.parent / MSAM_CONFIG} was saved with (sha256 differs): it is "
            "truncated or damaged, or it comes from another save"
        )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' own errors: unreadable header, bad offsets
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def load_msam(
    directory: str | Path,
    checkpoint: SamWeightsSource | None = _USE_SAVED,
    map_location: str | torch.device = "cpu",
) -> MultiTaskSAMBase:
    """Rebuild a model saved by `save_msam` and load its tensors (bit-exact; strict on keys and shapes).

    `checkpoint` is the base SAM checkpoint for the frozen weights (for SAM 2 a save_pretrained folder):
    by default the path recorded at build time; pass another path (the same weights moved elsewhere) or a state dict. The rebuilt frozen
    weights must match the saved fingerprint, else a ValueError names the checkpoint and the tensors.
    Keys or shapes that do not fit the rebuilt model raise `StateMismatchError` naming them.
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    config = MSamConfig.from_dict(meta["msam_config"])
    saved_all = meta["saved"] == "all"
    base = None if saved_all else (config.checkpoint if checkpoint is _USE_SAVED else checkpoint)
    if isinstance(base, (str, Path)):
        if not Path(base).expanduser().exists():
            raise FileNotFoundError(
                f"the base SAM checkpoint {base} of {directory} does not exist: pass load_msam(..., checkpoint=PATH)"
            )
        config.checkpoint = str(Path(base).expanduser().resolve())
    w_path = directory / MSAM_WEIGHTS
    state = _read_weights(w_path, meta["weights_sha256"])
    model = msam_from_config(config, base)
    keys = model.state_dict().keys() if saved_all else None  # None: the model's trainable state
    load_state_subset(model, state, keys, source=str(w_path))
    if not saved_all:
        differ = fingerprint_mismatch(meta["frozen_fingerprint"], frozen_fingerprint(model))
        if differ:
            origin = "<random init>" if base is None else (
                "<in-memory state dict>" if isinstance(base, Mapping) else str(base))
            raise ValueError(
                f"the frozen weights rebuilt from checkpoint {origin} are not those {directory} was trained "
                f"with ({differ}): pass the base checkpoint via load_msam(..., checkpoint=...), or save with "
                "save_msam(..., include_frozen=True)"
            )
    return model.to(map_location)
