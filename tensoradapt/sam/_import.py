"""Import the `segment-anything` modelling code without requiring torchvision.

`segment_anything/__init__.py` imports the predictor and the automatic mask generator, which import
torchvision. torchvision is not a declared dependency of the package and cannot be installed beside a
CPU-only torch wheel, yet the model code (`segment_anything.modeling`) only needs torch. When
torchvision is importable we take the normal import path; otherwise we register a bare namespace
module for `segment_anything` so that `segment_anything.modeling` (and `build_sam`) import without
running the package `__init__`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

__all__ = ["import_segment_anything", "sam_modeling", "sam_build_module"]


def _torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a broken build ("operator torchvision::nms does not exist")
        return False
    return True


def import_segment_anything() -> ModuleType:
    """Return the `segment_anything` package; its `modeling` and `build_sam` submodules are importable."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "tensoradapt.sam needs the 'segment-anything' package: pip install 'tensoradapt[sam]'"
        )
    if _torchvision_available():
        return importlib.import_module("segment_anything")
    pkg = types.ModuleType("segment_anything")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = spec.origin
    pkg.__package__ = "segment_anything"
    pkg.__spec__ = spec
    sys.modules["segment_anything"] = pkg
    return pkg


def sam_modeling() -> ModuleType:
    """`segment_anything.modeling` (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer)."""
    import_segment_anything()
    return importlib.import_module("segment_anything.modeling")


def sam_build_module() -> ModuleType:
    """`segment_anything.build_sam` (the official builders and `sam_model_registry`)."""
    import_segment_anything()
    return importlib.import_module("segment_anything.build_sam")
