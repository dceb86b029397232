"""Small shared pieces, each written once: atomic files, state-dict subsets, fingerprints, the cache, the CPU's
subnormal flag, unit vectors."""
from .atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, file_lock
from .cache import cache_dir
from .config import dataclass_kwargs
from .denormal import denormals_flushed, flush_denormal
from .state import (
    StateMismatchError, fingerprint_mismatch, frozen_fingerprint, load_state_subset, trainable_state_dict,
)
from .vectors import unit

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "file_lock", "cache_dir",
    "dataclass_kwargs", "denormals_flushed", "flush_denormal", "StateMismatchError", "trainable_state_dict",
    "load_state_subset", "frozen_fingerprint", "fingerprint_mismatch", "unit",
]
