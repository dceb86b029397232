"""The cached pretrained checkpoint: where it lives, whether it is the one a config builds, building it once.

The default config's checkpoint is ``cache_dir("sam") / "tiny_sam_synthetic_v<PRETRAIN_VERSION>.pth"``
(under ``$TENSORADAPT_CACHE``); any other config gets its own file (a digest of its fields in the name), so a
longer run never replaces the default one that the experiments use. A file is reused only when the report
beside it names the same recipe version and the same config and its sha256 matches the bytes; anything else
(absent, corrupt, half-written, another config or version, a file without a report) is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..._utils import cache_dir, file_lock
from .artifact import file_sha256, read_report
from .config import LATER_FIELDS, PRETRAIN_VERSION, PretrainConfig
from .evaluate import format_report
from .loop import pretrain_tiny_sam

__all__ = ["config_digest", "default_tiny_sam_path", "checkpoint_mismatch", "ensure_tiny_sam_checkpoint"]


def config_digest(config: PretrainConfig) -> str:
    """10 hex digits identifying the config's field values (and the recipe version)."""
    fields = {k: v for k, v in config.to_dict().items() if LATER_FIELDS.get(k, object()) != v}
    text = json.dumps({"version": PRETRAIN_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_tiny_sam_path(config: PretrainConfig | None = None) -> Path:
    """``<cache>/sam/<model>_sam_synthetic_v<version>.pth`` for the default config (``config=None``);
    ``..._v<version>_<digest>.pth`` for any other."""
    pc = config if config is not None else PretrainConfig()
    suffix = "" if pc == PretrainConfig() else f"_{config_digest(pc)}"
    return cache_dir("sam") / f"{pc.model}_sam_synthetic_v{PRETRAIN_VERSION}{suffix}.pth"


def checkpoint_mismatch(path: str | os.PathLike, config: PretrainConfig) -> str | None:
    """None when `path` holds the checkpoint `config` builds (by the report beside it); else why not."""
    path = Path(path)
    if not path.is_file():
        return "not there"
    report = read_report(path)
    if report is None:
        return "no readable report beside it"
    if report.get("version") != PRETRAIN_VERSION:
        return f"built by recipe version {report.get('version')}, not {PRETRAIN_VERSION}"
    saved, wanted = report.get("pretrain_config"), config.to_dict()
    if not isinstance(saved, dict):
        return "its report has no pretrain_config"
    saved = {**LATER_FIELDS, **saved}
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        return "built with another config (" + ", ".join(
            f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in differ) + ")"
    if report.get("sha256") != file_sha256(path):
        return "its bytes do not match the sha256 in its report"
    return None


def ensure_tiny_sam_checkpoint(path: str | os.PathLike | None = None, config: PretrainConfig | None = None,
                               progress: bool = True) -> Path:
    """Path of the pretrained checkpoint `config` (default :class:`PretrainConfig`) builds, building it
    first (about 3 minutes on one core for the default) unless `path` already holds it.

    `path` defaults to :func:`default_tiny_sam_path` of the config. What is at `path` is rebuilt unless the
    report beside it shows the same recipe version and config and the bytes match its sha256. A file lock
    makes concurrent callers (DDP ranks) wait for one build.
    """
    pc = config if config is not None else PretrainConfig()
    path = Path(path) if path is not None else default_tiny_sam_path(pc)
    if checkpoint_mismatch(path, pc) is None:
        return path
    with file_lock(path.with_name(f".{path.name}.lock")):
        why = checkpoint_mismatch(path, pc)
        if why is None:
            return path
        if progress:
            print(f"building the pretrained {pc.model} SAM checkpoint {path} ({why}; {pc.steps} steps, once)",
                  flush=True)
        report = pretrain_tiny_sam(path, pc, progress=progress)
        if progress:
            print(format_report(report), flush=True)
    return path
