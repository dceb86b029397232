"""SAM 2 weights in transformers' format: read a `Sam2Model.save_pretrained` folder (or a state dict) and fit it.

A folder holds `config.json` and `model.safetensors` (or shards listed in `model.safetensors.index.json`),
keyed as transformers' `Sam2Model`: `vision_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`,
`shared_image_embedding.positional_embedding`, `no_memory_embedding`. A SAM 2 *video* checkpoint's extra
tensors (memory attention, memory encoder, object pointers: the patterns `Sam2Model` itself ignores) are
accepted and ignored.

mSAM-2 uses
- every `vision_encoder.*` tensor (the plain Hiera trunk and FPN neck, loaded before any delta wraps `qkv`);
- every `mask_decoder.*` tensor (copied into each task's decoder);
- `prompt_encoder.no_mask_embed.weight` (1, D) (copied into each task's C_t no-mask embeddings);
- `prompt_encoder.not_a_point_embed.weight` (1, D) (SAM 2 encodes "no prompt" as two padding points);
- `shared_image_embedding.positional_embedding` (2, D/2) (the image positional encoding's Gaussian matrix);
- `no_memory_embedding` (1, 1, D) (added to the S/16 level, as SAM 2 does for an image without memory).
The prompt encoder's other tensors are accepted but not used; any other key is an error. The folder's
`config.json` must describe the same architecture as the model (the fields of `_ARCH_FIELDS`): other heads,
windows or global blocks load without a shape error yet compute something else, so they are refused too.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .sam2_config import Sam2HieraConfig, build_sam2
from .weights import (
    HUB_CONFIG, HUB_WEIGHTS, SamCheckpointError, SamWeightsSource, _listing, mismatch_error, read_safetensors_folder,
)

__all__ = [
    "SAM2_PE_KEY", "SAM2_NO_MASK_KEY", "SAM2_NOT_A_POINT_KEY", "SAM2_NO_MEMORY_KEY", "read_sam2_checkpoint",
    "check_sam2_config_json", "expected_sam2_shapes", "fit_sam2_state_dict",
]

SAM2_PE_KEY = "shared_image_embedding.positional_embedding"
SAM2_NO_MASK_KEY = "prompt_encoder.no_mask_embed.weight"
SAM2_NOT_A_POINT_KEY = "prompt_encoder.not_a_point_embed.weight"
SAM2_NO_MEMORY_KEY = "no_memory_embedding"

#: config.json fields (sub-config path -> names) that fix what the weights compute; image sizes may differ
_ARCH_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("vision_config", "backbone_config"): (
        "hidden_size", "embed_dim_per_stage", "num_attention_heads_per_stage", "blocks_per_stage",
        "global_attention_blocks", "window_size_per_stage", "window_positional_embedding_background_size",
        "query_stride", "num_query_pool_stages", "patch_kernel_size", "patch_stride", "patch_padding", "mlp_ratio",
        "hidden_act", "layer_norm_eps",
    ),
    ("vision_config",): (
        "backbone_channel_list", "fpn_hidden_size", "fpn_kernel_size", "fpn_stride", "fpn_padding",
        "fpn_top_down_levels", "num_feature_levels",
    ),
    ("mask_decoder_config",): (
        "hidden_size", "mlp_dim", "num_hidden_layers", "num_attention_heads", "attention_downsample_rate",
        "num_multimask_outputs", "iou_head_depth", "iou_head_hidden_dim", "hidden_act",
    ),
    ("prompt_encoder_config",): ("hidden_size",),
}


def _plain(value: Any) -> Any:
    """JSON-comparable: tuples become lists, recursively."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section(config: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for key in path:
        config = config.get(key) or {}
    return config


def check_sam2_config_json(saved: Mapping[str, Any], config: Sam2HieraConfig, source: str) -> None:
    """Refuse a `config.json` whose architecture differs from `config` (naming each differing field)."""
    want = config.hf_config().to_dict()
    differ = []
    for path, names in _ARCH_FIELDS.items():
        have_section, want_section = _section(saved, path), _section(want, path)
        for name in names:
            if name in have_section and _plain(have_section[name]) != _plain(want_section.get(name)):
                differ.append(f"{'.'.join((*path, name))}: {have_section[name]!r} vs {want_section.get(name)!r}")
    if differ:
        raise SamCheckpointError(
            f"SAM 2 checkpoint {source} is another architecture than model_type {config.name!r} "
            f"(config.json vs model): {_listing(differ)}"
        )


def read_sam2_checkpoint(source: SamWeightsSource, config: Sam2HieraConfig) -> tuple[dict[str, Tensor], str]:
    """Load SAM 2 weights on the CPU; return the state dict with a name for error messages.

    `source` is a `Sam2Model.save_pretrained` folder (its `config.json` is checked against `config`) or an
    in-memory state dict with `Sam2Model`'s keys (shapes are checked by `fit_sam2_state_dict`).
    """
    if isinstance(source, Mapping):
        state = dict(source)
        bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor))
        if bad:
            raise SamCheckpointError(f"SAM 2 state dict: entries that are not tensors: {_listing(bad)}")
        return state, "<in-memory state dict>"
    folder = Path(source).expanduser()
    if not folder.is_dir():
        what = "is a file, not" if folder.is_file() else "does not exist; expected"
        raise FileNotFoundError(
            f"SAM 2 checkpoint {folder} {what} a folder with {HUB_CONFIG} + {HUB_WEIGHTS} "
            f"(as Sam2Model.save_pretrained writes) (checkpoint={str(source)!r})"
        )
    if not (folder / HUB_CONFIG).is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint folder {folder} lacks {HUB_CONFIG} (written by save_pretrained)")
    try:
        saved = json.loads((folder / HUB_CONFIG).read_text())
    except ValueError as e:
        raise SamCheckpointError(f"{folder / HUB_CONFIG} is not valid JSON ({e})") from None
    check_sam2_config_json(saved, config, str(folder))
    return read_safetensors_folder(folder, "SAM 2"), str(folder)


@lru_cache(maxsize=8)
def expected_sam2_shapes(config: Sam2HieraConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of transformers' `Sam2Model` state dict for `config` (built on the meta device)."""
    with torch.device("meta"):
        model = build_sam2(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=1)
def _video_only() -> re.Pattern[str]:
    """The keys of a SAM 2 video checkpoint that the image model ignores (transformers' own list)."""
    from transformers import Sam2Model

    return re.compile("|".join(f"(?:{p})" for p in Sam2Model._keys_to_ignore_on_load_unexpected))


def fit_sam2_state_dict(state: Mapping[str, Tensor], config: Sam2HieraConfig, source: str = "checkpoint") -> dict[str, Tensor]:
    """Check a `Sam2Model` state dict against `config`; return the tensors mSAM-2 uses (module docstring).

    Missing keys, unknown keys and mis-shaped tensors raise `SamCheckpointError` naming `source` and them.
    """
    expected = expected_sam2_shapes(config)
    singles = (SAM2_PE_KEY, SAM2_NO_MASK_KEY, SAM2_NOT_A_POINT_KEY, SAM2_NO_MEMORY_KEY)
    used = {k for k in expected if k.startswith(("vision_encoder.", "mask_decoder.")) or k in singles}
    ignored = _video_only()
    missing = sorted(used - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not ignored.search(k))
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or bad:
        raise mismatch_error(
            f"SAM 2 checkpoint {source} does not fit model_type {config.name!r} (stage widths "
            f"{config.embed_dim_per_stage}, blocks {config.blocks_per_stage}, decoder width {config.prompt_embed_dim}).",
            missing, unexpected, bad,
        )
    return {k: state[k] for k in used}
