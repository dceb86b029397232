"""Data: NYUv2 in its preprocessed .npy layout and the synthetic scene generator that writes the same layout."""
from .nyuv2 import NYUV2_SCALES, NYUv2, crop_resize, hflip, random_scale_crop_flip, resize_sample, scale_crop
from .synthetic import (
    CLASSES,
    DEFAULT_N_TRAIN,
    DEFAULT_N_VAL,
    NUM_CLASSES,
    NYUV2_HFOV,
    camera_intrinsics,
    default_synthetic_root,
    ensure_synthetic,
    generate_synthetic,
    synthesize,
    synthetic_is_complete,
)

__all__ = [
    "NYUv2", "NYUV2_SCALES", "crop_resize", "scale_crop", "hflip", "random_scale_crop_flip", "resize_sample",
    "CLASSES", "NUM_CLASSES", "NYUV2_HFOV", "DEFAULT_N_TRAIN", "DEFAULT_N_VAL", "camera_intrinsics",
    "synthesize", "generate_synthetic", "ensure_synthetic", "synthetic_is_complete", "default_synthetic_root",
]
