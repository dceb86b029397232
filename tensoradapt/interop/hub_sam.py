"""SAM weights in transformers' Hub format -> the official `segment-anything` layout.

A folder written by `SamModel.save_pretrained` (or downloaded from the Hub, e.g. `facebook/sam-vit-base`)
holds `config.json` and `model.safetensors` (or shards listed in `model.safetensors.index.json`). Its keys
follow transformers' module names; `read_hub_sam(folder)` renames them to the keys of
`segment_anything.modeling.Sam` (the reverse of transformers' own conversion script) and derives the
matching `tensoradapt.sam.SamConfig`, so everything that reads `sam_vit_*.pth` reads the Hub format too:

    state, config = read_hub_sam("sam-vit-base/")
    model = build_msam(config, {"semantic": 13, "depth": 1}, checkpoint=state)

The renaming is a pure key map: every tensor is passed through unchanged (the encoder computes exactly
what the official code computes on them). transformers' mask decoder uses LayerNorm eps 1e-6 where the
official one uses torch's default 1e-5, so the two decoders agree only to float tolerance.
transformers is not needed to read a folder.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ..sam.weights import HUB_CONFIG, HUB_INDEX, HUB_WEIGHTS, SamCheckpointError, read_safetensors_folder
from ..sam.config import SAM_CONFIGS, SamConfig

__all__ = [
    "HUB_CONFIG", "HUB_WEIGHTS", "HUB_INDEX", "is_hub_sam_folder", "read_safetensors_folder", "sam_config_from_hub",
    "official_sam_state_dict", "read_hub_sam",
]


# transformers' SamConfig defaults, for a config.json that leaves a field out.
_VISION_DEFAULTS = {
    "hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 1024, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True, "use_rel_pos": True, "window_size": 14,
    "global_attn_indexes": [2, 5, 8, 11], "num_pos_feats": 128, "mlp_dim": None,
}
_PROMPT_DEFAULTS = {"hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16,
                    "num_point_embeddings": 4}
_DECODER_DEFAULTS = {
    "hidden_size": 256, "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
    "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
}

_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.(\d+)|proj_out)\.(.+)$"
)


def _mlp_key(match: re.Match, depth: int) -> str:
    """transformers' SamFeedForward (proj_in, layers.i, proj_out) -> the official MLP (layers.0..depth-1)."""
    prefix, part, inner, rest = match.groups()
    index = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(inner) + 1
    return f"{prefix}.layers.{index}.{rest}"


# transformers names the children of the official nn.Sequentials (the activations hold the skipped indices)
_SEQUENTIALS: dict[str, tuple[str, dict[str, int]]] = {
    "vision_encoder.neck": ("image_encoder.neck", {"conv1": 0, "layer_norm1": 1, "conv2": 2, "layer_norm2": 3}),
    "prompt_encoder.mask_embed": (
        "prompt_encoder.mask_downscaling", {"conv1": 0, "layer_norm1": 1, "conv2": 3, "layer_norm2": 4, "conv3": 6},
    ),
    "mask_decoder": (
        "mask_decoder.output_upscaling", {"upscale_conv1": 0, "upscale_layer_norm": 1, "upscale_conv2": 3},
    ),
}
# (transformers pattern, official replacement); the first match wins. Keys already equal in both
# layouts (the encoder's attention and MLP, the decoder's attention and tokens) map to themselves.
_RENAMES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.(\d+)\.(attn|mlp)\.", r"image_encoder.blocks.\1.\2."),
    (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.point_embed\.(\d+)\.", r"prompt_encoder.point_embeddings.\1."),
    (r"^prompt_encoder\.(no_mask_embed|not_a_point_embed)\.", r"prompt_encoder.\1."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.transformer\.", "mask_decoder.transformer."),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.", r"mask_decoder.\1."),
]] + [
    (re.compile(rf"^{re.escape(parent)}\.{child}\."), f"{official}.{index}.")
    for parent, (official, children) in _SEQUENTIALS.items() for child, index in children.items()
]
#: transformers ties this copy of the Gaussian PE matrix to `shared_image_embedding.positional_embedding`
_TIED_PE = "prompt_encoder.shared_embedding.positional_embedding"
_PE = "shared_image_embedding.positional_embedding"
_SHOW = 8


def _official_key(key: str, iou_head_depth: int) -> str | None:
    if m := _MLP.match(key):
        depth = iou_head_depth if ".iou_prediction_head." in key else 3  # the hypernetwork MLPs have 3 layers
        return _mlp_key(m, depth)
    for pattern, repl in _RENAMES:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return None


def official_sam_state_dict(hub_state: Mapping[str, Tensor], iou_head_depth: int = 3) -> dict[str, Tensor]:
    """Rename a transformers `SamModel` state dict to the official `segment_anything` keys.

    The tensors are the same objects (no copy). The tied copy of the PE matrix is dropped (it must equal
    the kept one). A key with no official counterpart raises `SamCheckpointError` naming it.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in hub_state.items():
        if key == _TIED_PE:
            kept = hub_state.get(_PE)
            if kept is not None and (kept.shape != value.shape or not bool((kept == value).all())):
                raise SamCheckpointError(f"{_TIED_PE} differs from {_PE}; transformers ties the two")
            if kept is not None:
                continue
            key = _PE
        new = _official_key(key, iou_head_depth)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        more = f" ... (+{len(unknown) - _SHOW} more)" if len(unknown) > _SHOW else ""
        raise SamCheckpointError(
            f"keys with no official SAM counterpart (is this a transformers SamModel?): "
            f"{', '.join(sorted(unknown)[:_SHOW])}{more}"
        )
    return out


def _section(config: Mapping, name: str, defaults: dict) -> dict:
    given = config.get(name) or {}
    if not isinstance(given, Mapping):
        raise SamCheckpointError(f"config.json: {name} must be an object, got {type(given).__name__}")
    return {**defaults, **{k: given[k] for k in defaults if k in given}}


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise SamCheckpointError(f"config.json describes a SAM the official modules cannot build: {what}")


def sam_config_from_hub(config: Mapping | str | Path) -> SamConfig:
    """The `SamConfig` of a transformers SAM `config.json` (a path, a folder, or the parsed dict).

    Named after the official size it equals (`vit_b`, `vit_l`, `vit_h`, `tiny`), else `"hub"`. Settings the
    official modules cannot express (no qkv bias, another MLP ratio, ...) raise `SamCheckpointError`
    naming the field.
    """
    if not isinstance(config, Mapping):
        path = Path(config)
        path = path / HUB_CONFIG if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no transformers config at {path} (config={str(config)!r})")
        config = json.loads(path.read_text())
    if config.get("model_type") != "sam":
        raise SamCheckpointError(
            f"config.json has model_type {config.get('model_type')!r}; only transformers' 'sam' (SamModel) "
            "maps onto the official segment-anything modules"
        )
    v = _section(config, "vision_config", _VISION_DEFAULTS)
    p = _section(config, "prompt_encoder_config", _PROMPT_DEFAULTS)
    d = _section(config, "mask_decoder_config", _DECODER_DEFAULTS)
    dim = v["hidden_size"]
    mlp_dim = v["mlp_dim"] if v["mlp_dim"] is not None else int(dim * v["mlp_ratio"])
    _require(mlp_dim == 4 * dim, f"vision_config.mlp_dim={mlp_dim} (official: 4 * hidden_size = {4 * dim})")
    for flag in ("qkv_bias", "use_abs_pos", "use_rel_pos"):
        _require(v[flag] is True, f"vision_config.{flag}={v[flag]!r} (official: true)")
    _require(v["hidden_act"] == "gelu", f"vision_config.hidden_act={v['hidden_act']!r} (official: 'gelu')")
    _require(v["num_channels"] == 3, f"vision_config.num_channels={v['num_channels']} (official: 3)")
    prompt = p["hidden_size"]
    _require(v["output_channels"] == prompt == d["hidden_size"],
             f"vision_config.output_channels={v['output_channels']}, prompt_encoder_config.hidden_size={prompt} "
             f"and mask_decoder_config.hidden_size={d['hidden_size']} must be equal")
    _require(2 * v["num_pos_feats"] == prompt,
             f"vision_config.num_pos_feats={v['num_pos_feats']} (official: prompt hidden_size / 2 = {prompt // 2})")
    _require((p["image_size"], p["patch_size"]) == (v["image_size"], v["patch_size"]),
             "prompt_encoder_config.image_size / patch_size differ from vision_config's")
    for key, want in (("num_multimask_outputs", 3), ("iou_head_depth", 3), ("attention_downsample_rate", 2),
                      ("hidden_act", "relu")):
        _require(d[key] == want, f"mask_decoder_config.{key}={d[key]!r} (official: {want!r})")
    _require(p["num_point_embeddings"] == 4,
             f"prompt_encoder_config.num_point_embeddings={p['num_point_embeddings']} (official: 4)")
    fields = dict(
        encoder_embed_dim=dim, encoder_depth=v["num_hidden_layers"], encoder_num_heads=v["num_attention_heads"],
        encoder_global_attn_indexes=tuple(int(i) for i in v["global_attn_indexes"]), image_size=v["image_size"],
        patch_size=v["patch_size"], window_size=v["window_size"], prompt_embed_dim=prompt,
        decoder_mlp_dim=d["mlp_dim"], decoder_num_heads=d["num_attention_heads"],
        decoder_depth=d["num_hidden_layers"], iou_head_hidden_dim=d["iou_head_hidden_dim"],
        mask_in_chans=p["mask_input_channels"],
    )
    name = next((n for n, c in SAM_CONFIGS.items() if c == SamConfig(n, **fields)), "hub")
    return SamConfig(name, **fields)


def is_hub_sam_folder(path: str | Path) -> bool:
    """True for a folder with transformers' `config.json` and safetensors weights (single or sharded)."""
    path = Path(path)
    return path.is_dir() and (path / HUB_CONFIG).is_file() and (
        (path / HUB_WEIGHTS).is_file() or (path / HUB_INDEX).is_file()
    )


def read_hub_sam(folder: str | Path) -> tuple[dict[str, Tensor], SamConfig]:
    """Read a transformers SAM folder into an official-layout state dict (on the CPU) and its `SamConfig`.

    The state dict is what `torch.save(build_sam(config).state_dict())` would hold for the same weights,
    so `build_sam(config).load_state_dict(state)` and `build_msam(config, tasks, checkpoint=state)` take it.
    """
    path = Path(folder).expanduser()
    if not is_hub_sam_folder(path):
        raise FileNotFoundError(
            f"{path} is not a transformers SAM folder: it needs {HUB_CONFIG} and {HUB_WEIGHTS} "
            f"(or {HUB_INDEX}) as SamModel.save_pretrained writes them (folder={str(folder)!r})"
        )
    config = sam_config_from_hub(path / HUB_CONFIG)
    return official_sam_state_dict(read_safetensors_folder(path)), config
