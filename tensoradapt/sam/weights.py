"""Official SAM weights: read a `sam_vit_*.pth`-format state dict and fit it to an mSAM's configuration.

An official checkpoint (`sam_vit_b_01ec64.pth`, ... or `torch.save(build_sam(cfg).state_dict())`) is a
flat state dict with the keys of `segment_anything.modeling.Sam`: `image_encoder.*`, `prompt_encoder.*`
and `mask_decoder.*` (`pixel_mean` / `pixel_std` are non-persistent buffers and are not stored).

mSAM uses
- every `image_encoder.*` tensor (the plain encoder, loaded before any delta wraps `qkv`);
- every `mask_decoder.*` tensor (copied into each task's decoder);
- `prompt_encoder.no_mask_embed.weight` (1, D) (copied into each task's C_t no-mask embeddings);
- `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix` (2, D/2) (the image positional encoding:
  without it the decoder would see a silently random PE).
The prompt encoder's other tensors (point embeddings, mask down-scaling) are part of the official layout
and are accepted but not used; any other key is an error.

At an `image_size` other than the checkpoint's, the absolute position table `image_encoder.pos_embed`
(1, g, g, C) is resized bicubically to the new token grid, and every `rel_pos_h` / `rel_pos_w` table whose
length differs (the global blocks', and the windowed blocks' if the window shrank) is resized linearly,
the interpolation `segment_anything`'s `get_rel_pos` itself applies to a table of the wrong length.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from .config import SAM_CONFIGS, SamConfig, build_sam

__all__ = [
    "HUB_CONFIG", "HUB_WEIGHTS", "HUB_INDEX", "read_safetensors_folder",
    "SamCheckpointError", "SamWeightsSource", "PE_KEY", "NO_MASK_KEY", "POS_EMBED_KEY", "read_sam_checkpoint",
    "expected_sam_shapes", "fit_sam_state_dict", "describe_sam_state_dict",
]

#: the files of a Hugging Face `save_pretrained` folder (SAM and SAM 2 weights alike)
HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
HUB_INDEX = "model.safetensors.index.json"

PE_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
NO_MASK_KEY = "prompt_encoder.no_mask_embed.weight"
POS_EMBED_KEY = "image_encoder.pos_embed"
_REL_POS = re.compile(r"image_encoder\.blocks\.\d+\.attn\.rel_pos_[hw]")
_BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")
_SHOW = 8

#: where official SAM weights come from: a `torch.save`d state dict file, or the state dict itself
SamWeightsSource = str | Path | Mapping[str, Tensor]


class SamCheckpointError(ValueError):
    """A SAM checkpoint that does not fit the model (the message names the file, keys and shapes)."""


def _listing(items: list[str]) -> str:
    more = f" ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def read_sam_checkpoint(source: SamWeightsSource) -> tuple[dict[str, Tensor], str]:
    """Load a SAM state dict on the CPU; return it with a name for error messages.

    `source` is a path to a `torch.save`d state dict (read with `weights_only=True`) or a `.safetensors` file
    of one (the official key layout either way), a transformers-format
    folder (`config.json` + `model.safetensors`, as `SamModel.save_pretrained` writes and the Hub serves; its
    keys are mapped onto the official layout by `tensoradapt.interop.read_hub_sam`) or an in-memory mapping.
    A `{"model": state_dict}` / `{"state_dict": state_dict}` wrapper is unwrapped.
    """
    if isinstance(source, Mapping):
        state, name = dict(source), "<in-memory state dict>"
    else:
        path = Path(source)
        name = str(path)
        if path.is_dir():
            from ..interop.hub_sam import read_hub_sam

            return read_hub_sam(path)[0], name
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint {path} does not exist (checkpoint={str(source)!r})")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(path, device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / safetensors errors, truncated files, non-weights objects
            raise SamCheckpointError(f"cannot read SAM checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(state, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(state.get(wrapper), Mapping) and len(state) <= 3:
                state = state[wrapper]
                break
    if not isinstance(state, Mapping):
        raise SamCheckpointError(f"SAM checkpoint {name} holds a {type(state).__name__}, not a state dict")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor))
    if bad:
        raise SamCheckpointError(f"SAM checkpoint {name}: entries that are not tensors: {_listing(bad)}")
    return dict(state), name


@lru_cache(maxsize=16)
def expected_sam_shapes(config: SamConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official `Sam` state dict for `config` (built on the meta device: no memory)."""
    with torch.device("meta"):
        sam = build_sam(config)
    return {k: tuple(v.shape) for k, v in sam.state_dict().items()}


def describe_sam_state_dict(state: Mapping[str, Tensor]) -> str:
    """A one-line guess of what model a state dict belongs to (embed dim, depth, official name)."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "no image_encoder.patch_embed.proj.weight: not a SAM image encoder"
    dim = int(w.shape[0])
    depth = len({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    names = [n for n, c in SAM_CONFIGS.items() if c.encoder_embed_dim == dim and c.encoder_depth == depth]
    pos = state.get(POS_EMBED_KEY)
    grid = f", token grid {tuple(pos.shape[1:3])}" if pos is not None and pos.dim() == 4 else ""
    guess = f"a {names[0]} checkpoint" if names else "an unknown SAM size"
    return f"{guess} (encoder embed dim {dim}, depth {depth}{grid})"


def _resize_pos_embed(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1, g, g, C) -> (1, grid[0], grid[1], C), bicubic (computed in float32)."""
    x = pos.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype).contiguous()


def _resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """(L, head_dim) -> (length, head_dim), linear along L (what `get_rel_pos` does at run time)."""
    x = table.float().T.unsqueeze(0)  # (1, head_dim, L)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x[0].T.to(table.dtype).contiguous()


def fit_sam_state_dict(state: Mapping[str, Tensor], config: SamConfig, source: str = "checkpoint") -> dict[str, Tensor]:
    """Check an official-layout SAM state dict against `config`; return the tensors mSAM uses.

    Position tables are resized to `config.image_size` (see the module docstring); any other mismatch
    raises `SamCheckpointError` naming `source`, the missing / unexpected keys and the mis-shaped
    tensors (checkpoint vs model), with a guess of the checkpoint's model size.

    Returns the `image_encoder.*`, `mask_decoder.*`, `PE_KEY` and `NO_MASK_KEY` tensors, shapes fitted.
    """
    expected = expected_sam_shapes(config)
    used = {
        k for k in expected
        if k.startswith(("image_encoder.", "mask_decoder.")) or k in (PE_KEY, NO_MASK_KEY)
    }
    missing = sorted(used - set(state))
    unexpected = sorted(set(state) - set(expected))
    out: dict[str, Tensor] = {}
    bad: list[str] = []
    for key in sorted(used & set(state)):
        value, want = state[key], expected[key]
        have = tuple(value.shape)
        if have == want:
            out[key] = value
        elif key == POS_EMBED_KEY and len(have) == 4 and have[0] == 1 and have[3] == want[3]:
            out[key] = _resize_pos_embed(value, want[1:3])
        elif _REL_POS.fullmatch(key) and len(have) == 2 and have[1] == want[1]:
            out[key] = _resize_rel_pos(value, want[0])
        else:
            bad.append(f"{key}: checkpoint {have} vs model {want}")
    for key in sorted(set(state) & set(expected) - used):  # unused prompt-encoder tensors: shape only
        if tuple(state[key].shape) != expected[key]:
            bad.append(f"{key}: checkpoint {tuple(state[key].shape)} vs model {expected[key]}")
    if missing or unexpected or bad:
        raise mismatch_error(
            f"SAM checkpoint {source} does not fit model_type {config.name!r} "
            f"(encoder embed dim {config.encoder_embed_dim}, depth {config.encoder_depth}, "
            f"prompt dim {config.prompt_embed_dim}); it looks like {describe_sam_state_dict(state)}.",
            missing, unexpected, bad,
        )
    return out


def mismatch_error(header: str, missing: list[str], unexpected: list[str], bad: list[str]) -> SamCheckpointError:
    """One error listing a checkpoint's missing keys, unexpected keys and shape mismatches under `header`."""
    parts = [header]
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", bad)):
        if items:
            parts.append(f"{what} ({len(items)}): {_listing(items)}")
    return SamCheckpointError("\n  ".join(parts))


def read_safetensors_folder(folder: Path, what: str = "SAM") -> dict[str, Tensor]:
    """The tensors of a `save_pretrained` folder: `model.safetensors`, or every shard its index names.

    Errors name the folder and the file (`FileNotFoundError` with neither file; `SamCheckpointError` for an
    unreadable one). `what` names the model in messages.
    """
    from safetensors.torch import load_file

    if (folder / HUB_WEIGHTS).is_file():
        files = [folder / HUB_WEIGHTS]
    elif (folder / HUB_INDEX).is_file():
        index = json.loads((folder / HUB_INDEX).read_text())
        files = [folder / name for name in sorted(set(index.get("weight_map", {}).values()))]
    else:
        raise FileNotFoundError(f"{what} checkpoint folder {folder} has neither {HUB_WEIGHTS} nor {HUB_INDEX}")
    state: dict[str, Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as e:  # safetensors' own errors: missing shard, truncated file, unreadable header
            raise SamCheckpointError(f"cannot read {what} weights {file}: {type(e).__name__}: {e}") from e
    return state
