"""Writing synthetic datasets in the preprocessed-NYUv2 layout, checking them, and caching them.

Layout: ``root/{train,val}/<output>/<i>.npy`` for every renderer output (:data:`~.shading.OUTPUTS`:
image, label, depth, normal, instance) and ``root/meta.json`` (classes, camera, generation parameters,
measured images/s), written last: its presence marks a complete dataset.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..._utils import atomic_write_json, cache_dir, file_lock
from .camera import NYUV2_HFOV, camera_intrinsics
from .classes import CLASSES
from .shading import OUTPUTS
from .streams import SYNTHETIC_VERSION, synthesize

__all__ = [
    "DEFAULT_N_TRAIN", "DEFAULT_N_VAL", "META_FILE", "SPLIT_FOLDERS", "generate_synthetic", "synthetic_is_complete",
    "default_synthetic_root", "ensure_synthetic",
]

#: One folder per renderer output in each split.
SPLIT_FOLDERS: tuple[str, ...] = tuple(OUTPUTS)
#: Defaults of :func:`ensure_synthetic` (see its docstring for why these sizes).
DEFAULT_N_TRAIN = 600
DEFAULT_N_VAL = 200
META_FILE = "meta.json"
_SPLITS = ("train", "val")


def _write_one(args: tuple[str, str, int, int, int, int]) -> None:
    root, split, index, seed, height, width = args
    sample = synthesize(index, seed=seed, stream=split, height=height, width=width)
    base = Path(root) / split
    for key in SPLIT_FOLDERS:
        np.save(base / key / f"{index}.npy", sample[key])


def _params(n_train: int, n_val: int, seed: int, height: int, width: int) -> dict:
    return {"version": SYNTHETIC_VERSION, "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed),
            "height": int(height), "width": int(width)}


def _check_counts(n_train: int, n_val: int, height: int, width: int) -> None:
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or v < 8:
            raise ValueError(f"{name} must be an int >= 8, got {v!r}")


def _render_all(jobs: list[tuple[str, str, int, int, int, int]], workers: int, progress: bool) -> None:
    """Run `_write_one` on every job, in `workers` forked processes when more than one."""
    with tqdm(total=len(jobs), desc="synthetic scenes", unit="img", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                _write_one(job)
                bar.update(1)
            return
        import multiprocessing as mp

        # fork is much cheaper than spawn (no re-import of torch); the workers only use numpy
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=4):
                bar.update(1)


def generate_synthetic(root: str | os.PathLike, n_train: int, n_val: int, seed: int = 0, height: int = 288,
                       width: int = 384, workers: int | None = None, progress: bool = False) -> Path:
    """Render `n_train` + `n_val` scenes into `root` in the preprocessed-NYUv2 layout; return `root`.

    Layout: ``root/{train,val}/{image,label,depth,normal,instance}/<i>.npy`` with image (H, W, 3)
    float32 in [0, 1], label (H, W) int16 in [-1, 13), depth (H, W, 1) float32 (metres along the
    camera z axis), normal (H, W, 3) float32 (camera frame, unit), instance (H, W) int32; and
    ``root/meta.json`` (classes, camera model, generation parameters, measured images/s), written
    last: its presence marks a complete dataset. Existing files are overwritten.

    Scenes are rendered in `workers` processes (default: the CPU count, at most 8); the output does
    not depend on the number of workers.
    """
    _check_counts(n_train, n_val, height, width)
    root = Path(root)
    meta_path = root / META_FILE
    if meta_path.exists():
        meta_path.unlink()  # the dataset is incomplete until meta.json is written again
    for split in _SPLITS:
        for key in SPLIT_FOLDERS:
            (root / split / key).mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val}
    jobs = [(str(root), split, i, seed, height, width) for split in _SPLITS for i in range(counts[split])]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(int(workers), len(jobs) // 8 or 1))
    t0 = time.perf_counter()
    _render_all(jobs, workers, progress)
    elapsed = time.perf_counter() - t0
    for split in _SPLITS:  # files left over from a larger earlier run
        for key in SPLIT_FOLDERS:
            for f in (root / split / key).glob("*.npy"):
                if not f.stem.isdigit() or int(f.stem) >= counts[split]:
                    f.unlink()
    meta = {
        "format": "tensoradapt synthetic NYUv2 layout",
        "classes": list(CLASSES),
        "ignore_label": -1,
        "arrays": dict(OUTPUTS),
        "camera": "pinhole, square pixels, principal point at the image centre (pixel (i, j) centre at "
                  "u = j + 0.5, v = i + 0.5); K below (same for every image)",
        "hfov_deg": math.degrees(NYUV2_HFOV),
        "K": camera_intrinsics(height, width, NYUV2_HFOV).tolist(),
        "params": _params(n_train, n_val, seed, height, width),
        "workers": workers,
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(jobs) / elapsed, 2) if elapsed > 0 else None,
    }
    atomic_write_json(meta_path, meta)
    return root


def synthetic_is_complete(root: str | os.PathLike, n_train: int | None = None, n_val: int | None = None,
                          seed: int | None = None, height: int | None = None, width: int | None = None) -> bool:
    """True if `root` holds a finished :func:`generate_synthetic` output with the given parameters."""
    root = Path(root)
    try:
        meta = json.loads((root / META_FILE).read_text())
        params = meta["params"]
    except (OSError, ValueError, KeyError):
        return False
    want = {"n_train": n_train, "n_val": n_val, "seed": seed, "height": height, "width": width}
    if params.get("version") != SYNTHETIC_VERSION:
        return False
    if any(v is not None and params.get(k) != v for k, v in want.items()):
        return False
    for split, n in (("train", params["n_train"]), ("val", params["n_val"])):
        for key in SPLIT_FOLDERS:
            folder = root / split / key
            if not folder.is_dir() or sum(1 for f in folder.iterdir() if f.suffix == ".npy") != n:
                return False
    return True


def default_synthetic_root(n_train: int = DEFAULT_N_TRAIN, n_val: int = DEFAULT_N_VAL, seed: int = 0,
                           height: int = 288, width: int = 384) -> Path:
    """The cache folder of a synthetic dataset: ``cache_dir("synthetic", "v<version>-<params>")``."""
    name = f"v{SYNTHETIC_VERSION}-train{n_train}-val{n_val}-seed{seed}-{height}x{width}"
    return cache_dir("synthetic", name)


def ensure_synthetic(root: str | os.PathLike | None = None, n_train: int = DEFAULT_N_TRAIN,
                     n_val: int = DEFAULT_N_VAL, seed: int = 0, height: int = 288, width: int = 384,
                     workers: int | None = None, progress: bool = True) -> Path:
    """Return a complete synthetic dataset folder, generating it when missing or incomplete.

    `root` defaults to :func:`default_synthetic_root` (under ``$TENSORADAPT_CACHE``). A folder that
    holds a finished dataset with these parameters (``meta.json`` present, every file there) is reused
    as is; anything else in it is deleted and regenerated. A file lock makes concurrent callers wait
    for one build.

    The default size, 600 train / 200 val scenes at 288x384, renders in about half a minute on 2 CPU
    cores (~2.8 GB of .npy), which keeps the first run of the experiment CLI inside its 10-minute budget,
    while giving as many distinct training scenes as a CPU run can use (a few epochs at the tiny SAM's
    resolution) and a validation set large enough for stable metrics.
    """
    _check_counts(n_train, n_val, height, width)
    root = Path(root) if root is not None else default_synthetic_root(n_train, n_val, seed, height, width)
    root.mkdir(parents=True, exist_ok=True)
    if synthetic_is_complete(root, n_train, n_val, seed, height, width):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):
        if synthetic_is_complete(root, n_train, n_val, seed, height, width):
            return root
        for split in _SPLITS:
            if (root / split).exists():
                shutil.rmtree(root / split)
        (root / META_FILE).unlink(missing_ok=True)
        return generate_synthetic(root, n_train, n_val, seed=seed, height=height, width=width,
                                  workers=workers, progress=progress)
