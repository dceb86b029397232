"""The pretrained `tiny_p8` SAM that ships inside the package: the embedded benchmark's foundation model.

Pretraining it to the quality the benchmark needs (:data:`SHIPPED_CONFIG`, an hour on one core) costs
more than a first run can afford, so its weights ship as fp16 safetensors (``tensoradapt/assets/``, 2.2 MB) with
a provenance JSON beside them: the exact command, the config, the recipe version, the code revision, the device,
the held-out IoUs (of the fp32 weights and of the shipped fp16 ones) and the sha256 of the shipped file and of
the fp32 checkpoint it was made from.

    path = shipped_checkpoint()          # the bytes checked against the provenance first
    python experiments/pretrain_sam.py --model tiny_p8 --steps 16000 --n-scenes 1000 --masks objects --n-heldout 200 --ship

regenerates it (``--ship`` calls :func:`export_shipped` on the finished run).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..._utils import atomic_path, atomic_write_json
from .artifact import code_revision, file_sha256, read_report, sam_from_state
from .build import ensure_tiny_sam_checkpoint
from .config import PRETRAIN_VERSION, PretrainConfig
from .evaluate import evaluate_prompted_iou, heldout_scenes

__all__ = ["ASSETS", "SHIPPED_CONFIG", "ShippedCheckpointError", "shipped_paths", "shipped_checkpoint",
           "pretrained_checkpoint", "export_shipped"]

#: the package's data folder
ASSETS = Path(__file__).resolve().parents[2] / "assets"
#: the recipe of the shipped checkpoint: object masks only (SAM's data is object-centric, so the frozen encoder
#: is short on the room's geometry, as SAM's is on NYUv2), judged on 200 held-out scenes (~900 masks: on the
#: default 48 the interval of its gain over the box itself is twice as wide)
SHIPPED_CONFIG = PretrainConfig(model="tiny_p8", steps=16000, n_scenes=1000, masks="objects", n_heldout=200)


class ShippedCheckpointError(RuntimeError):
    """The shipped checkpoint is missing or does not match its provenance."""


def shipped_paths(model: str = SHIPPED_CONFIG.model, folder: str | os.PathLike = ASSETS) -> tuple[Path, Path]:
    """(weights, provenance) of the shipped checkpoint of `model`."""
    folder = Path(folder)
    return folder / f"{model}_sam.safetensors", folder / f"{model}_sam.provenance.json"


def shipped_checkpoint(model: str = SHIPPED_CONFIG.model, folder: str | os.PathLike = ASSETS) -> Path:
    """Path of the shipped checkpoint of `model`, after checking that its bytes match the sha256 of its
    provenance; raises :class:`ShippedCheckpointError` naming what is wrong (a half-copied or edited file is
    never loaded)."""
    weights, provenance = shipped_paths(model, folder)
    if not weights.is_file() or not provenance.is_file():
        raise ShippedCheckpointError(f"no shipped checkpoint for model {model!r} in {Path(folder)} "
                                     f"(expected {weights.name} and {provenance.name})")
    try:
        record = json.loads(provenance.read_text())
        want = record["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ShippedCheckpointError(f"{provenance} is not a provenance record ({e})") from None
    got = file_sha256(weights)
    if got != want:
        raise ShippedCheckpointError(f"{weights} does not match its provenance: sha256 {got}, recorded {want}")
    return weights


def pretrained_checkpoint(model: str = SHIPPED_CONFIG.model, progress: bool = True) -> Path:
    """The project's pretrained SAM of `model`: the shipped one (checked against its provenance) for
    ``SHIPPED_CONFIG.model``, the cached default-config build (made on first use) for "tiny"."""
    if model == SHIPPED_CONFIG.model:
        return shipped_checkpoint(model)
    if model == PretrainConfig().model:
        return ensure_tiny_sam_checkpoint(progress=progress)
    raise ValueError(f"no project-pretrained SAM for model {model!r} (there are {SHIPPED_CONFIG.model!r} and "
                     f"{PretrainConfig().model!r}); give a checkpoint")


def export_shipped(source: str | os.PathLike, command: str, folder: str | os.PathLike = ASSETS,
                   revision: str | None = None) -> dict[str, Any]:
    """Write the shipped pair (fp16 safetensors + provenance JSON) into `folder` from a finished pretraining
    run: `source` is its fp32 checkpoint, with its report beside it; `command` is the command that made it;
    `revision` the commit it ran (default: the report's, else this work tree's).
    The fp32 and the fp16 weights are evaluated on the held-out scenes again (the IoUs go into the provenance). Returns
    the provenance record."""
    from safetensors.torch import save_file

    source = Path(source)
    report = read_report(source)
    if report is None or "pretrain_config" not in report:
        raise ShippedCheckpointError(f"{source} has no pretraining report beside it")
    pc = PretrainConfig.from_dict(report["pretrain_config"])
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    weights, provenance = shipped_paths(pc.model, folder)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_file(half, str(tmp), metadata={"format": "official SAM state dict, fp16", "model": pc.model})
    heldout = heldout_scenes(pc)
    record = {
        "model": pc.model,
        "sha256": file_sha256(weights),
        "dtype": "float16",
        "command": command,
        "pretrain_config": pc.to_dict(),
        "recipe_version": report.get("version"),
        "steps": report.get("steps"),
        "seed": report.get("seed"),
        "code_revision": (revision or report.get("code_revision")
                          or code_revision()),
        "device": report.get("device", "cpu"),
        "torch_version": report.get("torch_version"),
        "train_seconds": report.get("train_seconds"),
        "source_sha256": report.get("sha256"),
        # both weights judged again by this code, on the same scenes (the run's own figures are in its report)
        "heldout_iou": {"fp32": evaluate_prompted_iou(sam_from_state(state, pc.model), heldout,
                                                      pc.eval_masks_per_scene),
                        "random_init": report["heldout_iou"]["random_init"],
                        "fp16_shipped": evaluate_prompted_iou(sam_from_state(half, pc.model), heldout,
                                                              pc.eval_masks_per_scene)},
        "final_loss": report.get("final_loss"),
    }
    atomic_write_json(provenance, record)
    return record


def shipped_matches_recipe(model: str = SHIPPED_CONFIG.model, folder: str | os.PathLike = ASSETS) -> str | None:
    """None when the shipped provenance names :data:`SHIPPED_CONFIG` and this code's recipe version; else why not
    (the recipe changed since the file was made: regenerate it)."""
    _, provenance = shipped_paths(model, folder)
    record = json.loads(provenance.read_text())
    if record.get("recipe_version") != PRETRAIN_VERSION:
        return f"made by recipe version {record.get('recipe_version')}, the code is at {PRETRAIN_VERSION}"
    try:
        made_with = PretrainConfig.from_dict(record.get("pretrain_config") or {})
    except (TypeError, ValueError) as e:
        return f"its provenance's config is unreadable ({e})"
    if made_with != SHIPPED_CONFIG:
        return "made with another config than SHIPPED_CONFIG"
    return None
