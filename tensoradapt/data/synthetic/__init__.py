"""Synthetic indoor scenes in the NYUv2 layout: a ray-cast room with furniture-like primitives.

Each scene is a room (floor, four walls, ceiling, windows on the walls) furnished with composite
objects built from boxes, vertical cylinders and spheres (beds, chairs, tables, sofas, cabinets,
bookshelves with books, TVs, pictures, lamps, vases, unlabelled clutter). A pinhole camera with
square pixels and its principal point at the image centre looks into the room; every pixel's ray is
intersected analytically with every primitive (vectorised numpy, restricted to the primitive's
projected bounding rectangle), which gives *exact*:

* ``image``    (H, W, 3) float32 in [0, 1]: albedo from per-class procedural textures, Lambertian
  shading from a ceiling light and a window light, emissive windows / screens, gamma, sensor noise;
* ``label``    (H, W) int16 over the 13 NYUv2 classes (:data:`CLASSES`), -1 = unlabelled clutter;
* ``depth``    (H, W, 1) float32, metric depth along the camera z axis (0 would mean invalid; every
  ray hits the closed room so all pixels are valid);
* ``normal``   (H, W, 3) float32, unit surface normals in the camera frame (x right, y down,
  z forward, OpenCV convention), oriented towards the camera;
* ``instance`` (H, W) int32, one id per object (each wall, floor, ceiling, window, piece of furniture;
  0 is never used).

Scenes are a deterministic function of ``(seed, stream, index)`` and do not depend on the rendered
resolution, so the same scene can be rendered at 288x384 for the dataset and at 96x128 for SAM
pretraining. :func:`generate_synthetic` writes the preprocessed-NYUv2 layout
(``train|val/{image,label,depth,normal,instance}/<i>.npy`` + ``meta.json``), :func:`ensure_synthetic`
reuses a complete copy in the cache directory or (re)builds it.

The package, one job per module: :mod:`.classes` (the 13 classes), :mod:`.camera` (intrinsics, rays),
:mod:`.materials` and :mod:`.textures` (surface appearance), :mod:`.scene` (the scene model and its
builder), :mod:`.furniture` (a builder per furniture kind), :mod:`.sampler` (:func:`sample_scene`),
:mod:`.raycast` (ray / primitive intersection), :mod:`.shading` (:func:`render_scene` and its
:data:`~.shading.OUTPUTS`), :mod:`.streams` (:func:`synthesize`), :mod:`.writer` (files and cache).

Run ``python -m tensoradapt.data.synthetic --help`` for a command line that also reports images/s.
"""
from .camera import NYUV2_HFOV, camera_intrinsics
from .classes import CLASSES, NUM_CLASSES
from .sampler import sample_scene
from .scene import Scene
from .shading import render_scene
from .streams import STREAMS, SYNTHETIC_VERSION, synthesize
from .writer import (
    DEFAULT_N_TRAIN,
    DEFAULT_N_VAL,
    default_synthetic_root,
    ensure_synthetic,
    generate_synthetic,
    synthetic_is_complete,
)

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "SYNTHETIC_VERSION",
    "STREAMS",
    "DEFAULT_N_TRAIN",
    "DEFAULT_N_VAL",
    "Scene",
    "sample_scene",
    "render_scene",
    "synthesize",
    "camera_intrinsics",
    "NYUV2_HFOV",
    "generate_synthetic",
    "ensure_synthetic",
    "synthetic_is_complete",
    "default_synthetic_root",
]
