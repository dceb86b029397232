"""Saving and loading a trained mSAM: its trained tensors (safetensors) and the JSON config that rebuilds it."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import MSamConfig
from .model import MultiTaskSAM
from .weights import SamWeightsSource

__all__ = ["save_msam", "load_msam", "MSAM_WEIGHTS", "MSAM_CONFIG"]

MSAM_WEIGHTS = "msam.safetensors"
MSAM_CONFIG = "msam_config.json"
_FORMAT = "tensoradapt.msam/1"

def _trainable_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _frozen_fingerprint(model: nn.Module) -> list[float]:
    """Cheap identity of the frozen weights: count, float64 sum and sum of squares over frozen tensors."""
    count, s1, s2 = 0, 0.0, 0.0
    with torch.no_grad():
        tensors = [p for p in model.parameters() if not p.requires_grad] + [
            b for n, b in model.named_buffers() if n.startswith("pe_layer.")
        ]
        for t in tensors:
            d = t.detach().double()
            count += t.numel()
            s1 += float(d.sum())
            s2 += float((d * d).sum())
    return [float(count), s1, s2]


def save_msam(model: MultiTaskSAM, directory: str | Path, include_frozen: bool = False) -> Path:
    """Write `msam.safetensors` (the trainable tensors) and `msam_config.json` into `directory`, atomically.

    The trainable state is the deltas, no-mask embeddings, trained decoder parts and (if trained) the
    encoder LayerNorms — "full" saves the whole encoder. The frozen weights come back from the base SAM
    checkpoint at `load_msam`; a fingerprint of them is stored and checked. `include_frozen=True` saves
    every tensor (self-contained, e.g. for a model built without a checkpoint).
    """
    from safetensors.torch import save_file

    from .._utils import atomic_path

    if not isinstance(model, MultiTaskSAM):
        raise TypeError(f"model must be a MultiTaskSAM, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if include_frozen:
        state = dict(model.state_dict())
    else:
        state = _trainable_state(model)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {
        "format": _FORMAT,
        "saved": "all" if include_frozen else "trainable",
        "trainable_keys": sorted(_trainable_state(model)),
        "frozen_fingerprint": _frozen_fingerprint(model),
        "msam_config": model.msam_config.to_dict(),
    }
    with atomic_path(directory / MSAM_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_path(directory / MSAM_CONFIG) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return directory


_USE_SAVED = object()


def load_msam(
    directory: str | Path,
    checkpoint: SamWeightsSource | None | object = _USE_SAVED,
    map_location: str | torch.device = "cpu",
) -> MultiTaskSAM:
    """Rebuild a model saved by `save_msam` and load its tensors (exactly; strict on keys and shapes).

    `checkpoint` is the base SAM checkpoint for the frozen weights: by default the path recorded at
    build time; pass another path (the same weights moved elsewhere) or a state dict. The rebuilt frozen
    weights must match the saved fingerprint, else a ValueError names the checkpoint.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / MSAM_CONFIG, directory / MSAM_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"mSAM directory {directory} lacks {p.name} (written by save_msam)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{cfg_path} is not an mSAM config (format {meta.get('format')!r}, expected {_FORMAT!r})")
    config = MSamConfig.from_dict(meta["msam_config"])
    saved_all = meta["saved"] == "all"
    if saved_all:
        base = None
    else:
        base = config.checkpoint if checkpoint is _USE_SAVED else checkpoint
        if isinstance(base, (str, Path)):
            if not Path(base).is_file():
                raise FileNotFoundError(
                    f"the base SAM checkpoint {base} of {directory} does not exist: "
                    "pass load_msam(..., checkpoint=PATH)"
                )
            config.checkpoint = str(Path(base).expanduser().resolve())
    model = MultiTaskSAM(config, base)
    state = load_file(str(w_path))
    own = model.state_dict() if saved_all else _trainable_state(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"{w_path} does not match the model rebuilt from {cfg_path}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}"
        )
    bad = [
        f"{k}: saved {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items() if state[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{w_path}: shape mismatches {bad[:8]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    if not saved_all:
        want, have = meta["frozen_fingerprint"], _frozen_fingerprint(model)
        same = want[0] == have[0] and all(
            math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-6) for a, b in zip(want[1:], have[1:])
        )
        if not same:
            origin = "<random init>" if base is None else ("<in-memory state dict>" if isinstance(base, Mapping) else base)
            raise ValueError(
                f"the frozen weights rebuilt from checkpoint {origin} differ "
                f"from those {directory} was trained with (fingerprint {have} vs saved {want}): pass the base "
                "checkpoint via load_msam(..., checkpoint=...), or save with save_msam(..., include_frozen=True)"
            )
    return model.to(map_location)
