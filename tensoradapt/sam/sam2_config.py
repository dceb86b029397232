"""SAM 2's architecture for mSAM-2: the official Hiera sizes, a tiny one that trains on a CPU, and transformers' modules.

`Sam2HieraConfig` holds the knobs that tell SAM 2's image path apart (Hiera trunk, FPN neck, mask decoder);
`hf_config()` turns it into transformers' own `Sam2Config`, from which the modules are built. transformers
is imported only when a module or a transformers config is built (its SAM 2 modelling takes seconds to import).

Shapes at input side S (a multiple of 32): the patch embedding (7x7, stride 4) gives an (S/4)^2 token grid;
stages 2-4 each start with a block that max-pools its queries 2x2, so the four stages run at S/4, S/8, S/16
and S/32; the FPN neck maps the stage outputs to `prompt_embed_dim` channels and the mask decoder reads the
S/4, S/8 (high-resolution features) and S/16 (image embedding, g = S/16) levels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from .._utils import dataclass_kwargs

if TYPE_CHECKING:  # transformers is imported lazily
    from transformers import Sam2Config

__all__ = [
    "Sam2HieraConfig", "SAM2_CONFIGS", "SAM2_MODEL_TYPES", "get_sam2_config", "build_sam2", "set_sam2_attention",
]

#: MSamConfig.attention -> transformers' attention implementation ("sam": the host's own reference kernel;
#: Hiera has no decomposed relative positions, so "auto" is plain sdpa and "chunked" does not apply)
_HF_ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "sam": "eager"}
_STAGES = 4


@dataclass(frozen=True)
class Sam2HieraConfig:
    """Hyper-parameters of SAM 2's image path (per-stage tuples run from the highest resolution down).

    Attributes:
        name: the model name (`SAM2_CONFIGS` key).
        embed_dim_per_stage, num_heads_per_stage, blocks_per_stage, window_size_per_stage: the Hiera trunk's
            four stages (window 0 never occurs: `global_attention_blocks` lists the global blocks).
        global_attention_blocks: indices (over all blocks) of the blocks that attend over the whole image.
        window_pos_embed_size: side of the background position table, resized to the token grid at run time.
        image_size: the encoder's input side S (a multiple of 32).
        prompt_embed_dim: the FPN / mask-decoder width D.
        decoder_mlp_dim, decoder_num_heads, iou_head_hidden_dim: the mask decoder's.
        pixel_mean, pixel_std: ImageNet statistics on the [0, 1] scale (SAM 2's image processor).
    """

    name: str
    embed_dim_per_stage: tuple[int, ...]
    num_heads_per_stage: tuple[int, ...]
    blocks_per_stage: tuple[int, ...]
    global_attention_blocks: tuple[int, ...]
    window_size_per_stage: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_size: tuple[int, int] = (7, 7)
    image_size: int = 1024
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for field in ("embed_dim_per_stage", "num_heads_per_stage", "blocks_per_stage", "window_size_per_stage"):
            value = getattr(self, field)
            if len(value) != _STAGES or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
                raise ValueError(f"{field} must be {_STAGES} positive ints (one per Hiera stage), got {value!r}")
        bad = [(d, h) for d, h in zip(self.embed_dim_per_stage, self.num_heads_per_stage) if d % h]
        if bad:
            raise ValueError(f"embed_dim_per_stage must be divisible by num_heads_per_stage, got (dim, heads) {bad}")
        outside = [i for i in self.global_attention_blocks if not 0 <= i < self.depth]
        if outside:
            raise ValueError(f"global_attention_blocks {outside} outside [0, depth={self.depth})")
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the S/32 stage), got {self.image_size}")
        if (self.image_size // 4) % self.window_size_per_stage[0]:
            raise ValueError(
                f"image_size={self.image_size}: its token grid {self.image_size // 4} must be a multiple of "
                f"window_size_per_stage[0]={self.window_size_per_stage[0]} (the window position table is tiled)"
            )
        if self.prompt_embed_dim % 8 or (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise ValueError(
                f"prompt_embed_dim={self.prompt_embed_dim} must be a multiple of 8 with prompt_embed_dim/2 "
                f"divisible by decoder_num_heads={self.decoder_num_heads}"
            )

    # ----------------------------------------------------------------------------- derived
    @property
    def depth(self) -> int:
        """Number of Hiera blocks (each one's `attn.qkv`, and its other `targets`, get a task delta)."""
        return sum(self.blocks_per_stage)

    @property
    def grid_size(self) -> int:
        """Side g of the image embedding the mask decoder reads, S / 16."""
        return self.image_size // 16

    @property
    def encoder_embed_dim(self) -> int:
        """The trunk's widest (last-stage) width: what `default_ranks` compares with 512."""
        return self.embed_dim_per_stage[-1]

    def replace(self, **changes: Any) -> "Sam2HieraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sam2HieraConfig":
        """Inverse of `to_dict` (JSON lists become tuples); unknown keys are refused."""
        data = dataclass_kwargs(cls, data)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    # ----------------------------------------------------------------------------- transformers
    def hf_config(self, attention: str = "sdpa") -> "Sam2Config":
        """transformers' `Sam2Config` for this architecture (a fresh object on every call)."""
        from transformers import (
            Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig,
        )

        dims, S = list(self.embed_dim_per_stage), self.image_size
        trunk = Sam2HieraDetConfig(
            hidden_size=dims[0], num_attention_heads=self.num_heads_per_stage[0], image_size=[S, S],
            embed_dim_per_stage=dims, num_attention_heads_per_stage=list(self.num_heads_per_stage),
            blocks_per_stage=list(self.blocks_per_stage), global_attention_blocks=list(self.global_attention_blocks),
            window_size_per_stage=list(self.window_size_per_stage),
            window_positional_embedding_background_size=list(self.window_pos_embed_size),
        )
        vision = Sam2VisionConfig(
            backbone_config=trunk, backbone_channel_list=dims[::-1], fpn_hidden_size=self.prompt_embed_dim,
            backbone_feature_sizes=[[S // 4, S // 4], [S // 8, S // 8], [S // 16, S // 16]],
        )
        config = Sam2Config(
            vision_config=vision,
            prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=self.prompt_embed_dim, image_size=S, patch_size=16),
            mask_decoder_config=Sam2MaskDecoderConfig(
                hidden_size=self.prompt_embed_dim, mlp_dim=self.decoder_mlp_dim,
                num_attention_heads=self.decoder_num_heads, iou_head_hidden_dim=self.iou_head_hidden_dim,
            ),
        )
        config._attn_implementation = _HF_ATTENTION[attention]
        config.mask_decoder_config._attn_implementation = _HF_ATTENTION[attention]  # as Sam2Model does
        return config

    def build_image_encoder(self) -> nn.Module:
        """transformers' `Sam2VisionModel` (Hiera trunk `backbone` + FPN `neck`), randomly initialised, "sdpa"."""
        from transformers import Sam2VisionModel

        return Sam2VisionModel(self.hf_config().vision_config)

    def build_mask_decoder(self) -> nn.Module:
        """transformers' `Sam2MaskDecoder` (with its own config object), randomly initialised, "sdpa"."""
        from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder

        return Sam2MaskDecoder(self.hf_config().mask_decoder_config)

    def build_pe_layer(self) -> nn.Module:
        """transformers' `Sam2PositionalEmbedding`: the Gaussian matrix (2, D/2) of the image positional encoding."""
        from transformers.models.sam2.modeling_sam2 import Sam2PositionalEmbedding

        return Sam2PositionalEmbedding(self.hf_config().prompt_encoder_config)


SAM2_CONFIGS: dict[str, Sam2HieraConfig] = {
    # The official sizes, as transformers' SAM 2 / 2.1 conversion builds them (SAM 2.1 shares the image path).
    "sam2_hiera_tiny": Sam2HieraConfig("sam2_hiera_tiny", (96, 192, 384, 768), (1, 2, 4, 8), (1, 2, 7, 2), (5, 7, 9)),
    "sam2_hiera_small": Sam2HieraConfig(
        "sam2_hiera_small", (96, 192, 384, 768), (1, 2, 4, 8), (1, 2, 11, 2), (7, 10, 13)),
    "sam2_hiera_base_plus": Sam2HieraConfig(
        "sam2_hiera_base_plus", (112, 224, 448, 896), (2, 4, 8, 16), (2, 3, 16, 3), (12, 16, 20),
        window_pos_embed_size=(14, 14)),
    "sam2_hiera_large": Sam2HieraConfig(
        "sam2_hiera_large", (144, 288, 576, 1152), (2, 4, 8, 16), (2, 6, 36, 4), (23, 33, 43),
        window_size_per_stage=(8, 4, 16, 8)),
    # Trains on a CPU: the same structure (four stages, query pooling, windowed + global blocks, FPN with a
    # top-down level, the decoder's high-resolution features) at a 128 px input, 5 blocks, widths 16-128.
    "sam2_cpu": Sam2HieraConfig(
        "sam2_cpu", (16, 32, 64, 128), (1, 1, 2, 4), (1, 1, 2, 1), (3,), window_size_per_stage=(8, 4, 4, 2),
        window_pos_embed_size=(4, 4), image_size=128, prompt_embed_dim=64, decoder_mlp_dim=256,
        decoder_num_heads=4, iou_head_hidden_dim=64),
}
#: the SAM 2 model names `get_sam2_config` / `build_msam` take
SAM2_MODEL_TYPES: tuple[str, ...] = tuple(SAM2_CONFIGS)


def get_sam2_config(model_type: str | Sam2HieraConfig, image_size: int | None = None) -> Sam2HieraConfig:
    """Look up a SAM 2 config by name (`SAM2_MODEL_TYPES`), optionally at another input side S.

    No weight changes with S: the trunk resizes its position table to the token grid at run time.
    """
    if isinstance(model_type, Sam2HieraConfig):
        cfg = model_type
    elif model_type in SAM2_CONFIGS:
        cfg = SAM2_CONFIGS[model_type]
    else:
        raise ValueError(f"model_type must be one of {sorted(SAM2_CONFIGS)}, got {model_type!r}")
    if image_size is not None and image_size != cfg.image_size:
        cfg = cfg.replace(image_size=image_size)
    return cfg


def build_sam2(config: str | Sam2HieraConfig, attention: str = "sdpa") -> nn.Module:
    """transformers' promptable `Sam2Model` for a config (random init, eval mode).

    Its `save_pretrained` folder is what `build_msam(..., checkpoint=folder)` reads.
    """
    from transformers import Sam2Model

    return Sam2Model(get_sam2_config(config).hf_config(attention)).eval()


def set_sam2_attention(module: nn.Module, kind: str) -> int:
    """Use attention `kind` ("auto" / "sdpa", or "sam" = transformers' eager reference kernel) in every transformers
    submodule of `module`; return the number of distinct configs switched."""
    from transformers import PreTrainedConfig

    if kind not in _HF_ATTENTION:
        raise ValueError(f"attention must be one of {tuple(_HF_ATTENTION)}, got {kind!r}")
    configs = {id(c): c for m in module.modules() if isinstance(c := getattr(m, "config", None), PreTrainedConfig)}
    for c in configs.values():
        c._attn_implementation = _HF_ATTENTION[kind]
    return len(configs)
