"""NYUv2 in the widely used preprocessed layout (MTAN / LibMTL), and its usual augmentation.

Layout (the synthetic generator writes the same one)::

    root/train/{image,label,depth,normal}/<i>.npy     # real NYUv2: 795 train
    root/val/{image,label,depth,normal}/<i>.npy       #             654 val

with, per sample (height x width first, 288 x 384 for real NYUv2): image (H, W, 3) float in [0, 1],
label (H, W) over 13 classes with -1 = ignore, depth (H, W, 1) or (H, W) in metres with 0 = invalid,
normal (H, W, 3) unit vectors with all-zero = invalid. An optional ``instance/`` folder (the synthetic
data has one) is read when ``with_instance=True``.

Samples come back channels-first as torch tensors: ``image`` (3, H, W) float32, ``semantic`` (H, W)
int64, ``depth`` (1, H, W) float32, ``normal`` (3, H, W) float32, ``index`` int (the file number),
and ``instance`` (H, W) int64 when asked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._utils.vectors import unit
from .synthetic.classes import CLASSES

__all__ = ["NYUv2", "crop_resize", "scale_crop", "hflip", "random_scale_crop_flip", "resize_sample", "NYUV2_SCALES"]

#: Scales of the random scale-crop (MTAN's RandomScaleCrop).
NYUV2_SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)
_FOLDERS = ("image", "label", "depth", "normal")

_HOW_TO = (
    "Expected the preprocessed NYUv2 layout <root>/{train,val}/{image,label,depth,normal}/<i>.npy "
    "(image (H, W, 3) float32 in [0, 1], label (H, W) with -1 = ignore, depth (H, W, 1), normal (H, W, 3); "
    "288 x 384 for real NYUv2, 795 train / 654 val). To produce the synthetic stand-in run "
    "`python -m tensoradapt.data.synthetic --root <root>` (or call tensoradapt.data.ensure_synthetic(root)); "
    "for the real data, download the preprocessed NYUv2 used by MTAN / LibMTL and point root at the folder "
    "that contains train/ and val/."
)


def _file_indices(folder: Path) -> list[int]:
    out = []
    for f in folder.iterdir():
        if f.suffix == ".npy":
            if not f.stem.isdigit():
                raise ValueError(f"malformed NYUv2 folder {folder}: file {f.name!r} is not named <int>.npy. {_HOW_TO}")
            out.append(int(f.stem))
    return sorted(out)


def _valid_normal_mask(normal: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) -> (…, 1, H, W) bool: the vector is not all zero."""
    return normal.abs().sum(dim=-3, keepdim=True) > 0


def crop_resize(sample: dict, top: int, left: int, height: int, width: int, size: tuple[int, int],
                depth_scale: float = 1.0) -> dict:
    """Crop the window [top:top+height, left:left+width] and resample it to `size` = (h, w), in one step.

    Image bilinear (antialiased when shrinking), clamped to [0, 1]; label / instance nearest; depth
    bilinear over valid pixels only (a pixel stays valid where at least half of its interpolation
    weight fell on valid depth), then divided by `depth_scale`; normal likewise over valid pixels,
    then re-normalised (invalid stays all-zero). Returns a new dict (other keys are kept).
    """
    H, W = sample["image"].shape[-2:]
    if not (0 <= top and top + height <= H and 0 <= left and left + width <= W and height > 0 and width > 0):
        raise ValueError(f"window ({top}, {left}) of size {height}x{width} does not fit in {H}x{W}")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    sl = (..., slice(top, top + height), slice(left, left + width))
    out = dict(sample)
    if (h, w) == (height, width):  # a pure crop
        for key in ("image", "semantic", "instance", "depth", "normal"):
            if key in sample:
                out[key] = sample[key][sl].contiguous()
        if depth_scale != 1.0:
            out["depth"] = out["depth"] / depth_scale
        return out
    aa = h < height or w < width

    def bilinear(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=aa)[0]

    def nearest(x: torch.Tensor) -> torch.Tensor:
        # nearest neighbour by index gathering (exact for integer maps, no float round trip)
        rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * (height / h)).long().clamp_(max=height - 1) + top
        cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * (width / w)).long().clamp_(max=width - 1) + left
        return x[..., rows[:, None], cols[None, :]]

    def masked(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = bilinear(torch.cat([x * valid, valid], dim=0))
        num, den = both[:-1], both[-1:]
        ok = den > 0.5
        return num / den.clamp_min(1e-6) * ok, ok

    out["image"] = bilinear(sample["image"][sl]).clamp_(0.0, 1.0)
    out["semantic"] = nearest(sample["semantic"])
    if "instance" in sample:
        out["instance"] = nearest(sample["instance"])
    depth = sample["depth"][sl]
    d, _ = masked(depth, (depth > 0).to(depth.dtype))
    out["depth"] = d / depth_scale if depth_scale != 1.0 else d
    normal = sample["normal"][sl]
    n, ok = masked(normal, _valid_normal_mask(normal).to(normal.dtype))
    out["normal"] = unit(n, dim=0) * ok
    return out


def scale_crop(sample: dict, scale: float, top: int, left: int, size: tuple[int, int] | None = None) -> dict:
    """MTAN's random scale-crop for a given draw: crop an (int(H / scale), int(W / scale)) window at
    (top, left) and resample it to `size` (default: the input's (H, W)); depth is divided by `scale`
    (zooming in brings the scene `scale` times closer). Resampling as in :func:`crop_resize`."""
    if scale < 1.0:
        raise ValueError(f"scale must be >= 1, got {scale}")
    H, W = sample["image"].shape[-2:]
    ch, cw = int(H / scale), int(W / scale)
    if not (0 <= top <= H - ch and 0 <= left <= W - cw):
        raise ValueError(f"crop ({top}, {left}) of size {ch}x{cw} does not fit in {H}x{W}")
    return crop_resize(sample, top, left, ch, cw, size or (H, W), depth_scale=scale)


def hflip(sample: dict) -> dict:
    """Mirror left-right; the normal's x component (camera x points right) changes sign."""
    out = dict(sample)
    for key in ("image", "semantic", "depth", "normal", "instance"):
        if key in sample:
            out[key] = torch.flip(sample[key], dims=[-1])
    out["normal"] = out["normal"] * torch.tensor([-1.0, 1.0, 1.0], dtype=out["normal"].dtype).view(3, 1, 1)
    return out


def random_scale_crop_flip(sample: dict, scales: Sequence[float] = NYUV2_SCALES, flip_prob: float = 0.5,
                           size: tuple[int, int] | None = None,
                           generator: torch.Generator | None = None) -> dict:
    """The usual NYUv2 augmentation: a scale drawn from `scales`, a random crop (:func:`scale_crop`),
    a horizontal flip with probability `flip_prob` (:func:`hflip`); the crop is resampled straight to
    `size` (default: the input size). Uses torch's RNG (`generator` or the global one, which DataLoader
    seeds per worker)."""
    H, W = sample["image"].shape[-2:]
    scale = float(scales[int(torch.randint(len(scales), (1,), generator=generator))])
    ch, cw = int(H / scale), int(W / scale)
    top = int(torch.randint(H - ch + 1, (1,), generator=generator))
    left = int(torch.randint(W - cw + 1, (1,), generator=generator))
    flip = float(torch.rand((), generator=generator)) < flip_prob
    sample = crop_resize(sample, top, left, ch, cw, size or (H, W), depth_scale=scale)
    return hflip(sample) if flip else sample


def resize_sample(sample: dict, size: tuple[int, int]) -> dict:
    """Resize every map to `size` = (h, w) (see :func:`crop_resize` for the resampling of each map)."""
    H, W = sample["image"].shape[-2:]
    return crop_resize(sample, 0, 0, H, W, size)


class NYUv2(Dataset):
    """NYUv2 (or the synthetic stand-in) from the preprocessed .npy layout; see the module doc.

    Args:
        root: folder containing ``train/`` and ``val/``.
        split: "train" or "val".
        augment: random scale-crop (scales 1.0 / 1.2 / 1.5, depth divided by the scale) and horizontal
            flip (normal x negated), as MTAN / LibMTL train on NYUv2.
        size: (h, w) to resize every sample to after augmentation (see :func:`crop_resize`; with
            `augment` the crop is resampled straight to `size`), e.g. to train tiny CPU models fast;
            None keeps the stored resolution.
        with_instance: also return ``instance`` (H, W) int64 (needs an ``instance/`` folder).
        derived: names of targets derived from the sample's maps after augmentation
            (`tensoradapt.data.derived.DERIVED`: boundary, occlusion, contour, offset, nonplanar; contour and
            offset need the instance ids, so they turn `with_instance` on).

    ``__getitem__`` returns ``{"image": (3, H, W) float32 in [0, 1], "semantic": (H, W) int64 (-1 =
    ignore), "depth": (1, H, W) float32 (0 = invalid), "normal": (3, H, W) float32 (0 = invalid),
    "index": int}``.
    """

    classes: tuple[str, ...] = CLASSES
    num_classes: int = len(CLASSES)

    def __init__(self, root: str | os.PathLike, split: str = "train", augment: bool = False,
                 size: tuple[int, int] | None = None, with_instance: bool = False,
                 scales: Sequence[float] = NYUV2_SCALES, flip_prob: float = 0.5,
                 derived: Sequence[str] = ()) -> None:
        from .derived import DERIVED, needs

        unknown = [d for d in derived if d not in DERIVED]
        if unknown:
            raise ValueError(f"derived names unknown target(s) {unknown}; available: {list(DERIVED)}")
        self.derived = tuple(derived)
        with_instance = with_instance or "instance" in needs(self.derived)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if size is not None:
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
                raise ValueError(f"size must be None or a pair of positive ints (h, w), got {size!r}")
            size = (int(size[0]), int(size[1]))
        if not scales or any(s < 1.0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of values >= 1, got {scales!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.root = Path(root)
        self.split = split
        self.augment = bool(augment)
        self.size = size
        self.scales = tuple(float(s) for s in scales)
        self.flip_prob = float(flip_prob)
        self.with_instance = bool(with_instance)
        if not self.root.is_dir():
            raise FileNotFoundError(f"NYUv2 root {str(self.root)!r} does not exist or is not a folder. {_HOW_TO}")
        base = self.root / split
        folders = _FOLDERS + (("instance",) if with_instance else ())
        missing = [f for f in folders if not (base / f).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"NYUv2 root {str(self.root)!r} is malformed: missing folder(s) "
                f"{', '.join(f'{split}/{m}/' for m in missing)}. {_HOW_TO}")
        indices = {f: _file_indices(base / f) for f in folders}
        ref = indices["image"]
        if not ref:
            raise FileNotFoundError(f"NYUv2 root {str(self.root)!r} is malformed: {split}/image/ holds no .npy "
                                    f"files. {_HOW_TO}")
        for f in folders[1:]:
            if indices[f] != ref:
                only = sorted(set(ref) ^ set(indices[f]))[:5]
                raise ValueError(
                    f"NYUv2 root {str(self.root)!r} is malformed: {split}/{f}/ and {split}/image/ hold different "
                    f"sample numbers (e.g. {only}); an interrupted generation leaves this state. {_HOW_TO}")
        self.indices: list[int] = ref
        self.height, self.width = self._check_shapes(base, ref[0])
        meta_path = self.root / "meta.json"
        self.meta: dict | None = json.loads(meta_path.read_text()) if meta_path.is_file() else None

    def _check_shapes(self, base: Path, i: int) -> tuple[int, int]:
        shapes = {f: np.load(base / f / f"{i}.npy", mmap_mode="r").shape for f in _FOLDERS}
        img = shapes["image"]
        if len(img) != 3 or img[2] != 3:
            raise ValueError(f"malformed NYUv2 sample {base}/image/{i}.npy: shape {img}, expected (H, W, 3). "
                             f"{_HOW_TO}")
        H, W = img[:2]
        expected = {"label": [(H, W)], "depth": [(H, W, 1), (H, W)], "normal": [(H, W, 3)]}
        for f, ok in expected.items():
            if shapes[f] not in ok:
                raise ValueError(f"malformed NYUv2 sample {base}/{f}/{i}.npy: shape {shapes[f]}, expected "
                                 f"{' or '.join(map(str, ok))} to match image {img}. {_HOW_TO}")
        return H, W

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> dict:
        """Sample i as stored (no augmentation, no resizing), channels-first torch tensors."""
        idx = self.indices[i]
        base = self.root / self.split

        def arr(f):
            return np.load(base / f / f"{idx}.npy")

        image = torch.from_numpy(np.ascontiguousarray(arr("image"), dtype=np.float32)).permute(2, 0, 1)
        label = arr("label")
        if label.dtype.kind == "f":
            label = np.rint(label)
        semantic = torch.from_numpy(label.astype(np.int64))
        depth = torch.from_numpy(np.ascontiguousarray(arr("depth"), dtype=np.float32))
        depth = depth.permute(2, 0, 1) if depth.ndim == 3 else depth[None]
        normal = torch.from_numpy(np.ascontiguousarray(arr("normal"), dtype=np.float32)).permute(2, 0, 1)
        sample = {"image": image.contiguous(), "semantic": semantic, "depth": depth.contiguous(),
                  "normal": normal.contiguous()}
        if self.with_instance:
            sample["instance"] = torch.from_numpy(arr("instance").astype(np.int64))
        return sample

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for NYUv2 {self.split} of length {len(self)}")
        i = i % len(self)
        sample = self.load(i)
        if self.augment:  # crop and resize in one resampling
            sample = random_scale_crop_flip(sample, self.scales, self.flip_prob, size=self.size)
        elif self.size is not None:
            sample = resize_sample(sample, self.size)
        if self.derived:
            from .derived import add_derived

            add_derived(sample, self.derived)
        sample["index"] = self.indices[i]
        return sample

    def __repr__(self) -> str:
        return (f"NYUv2(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"stored={self.height}x{self.width}, augment={self.augment}, size={self.size})")
