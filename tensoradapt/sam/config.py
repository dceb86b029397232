"""SAM architecture configs: the three official sizes and a tiny one that trains on a CPU."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from ._import import sam_modeling

__all__ = ["SamConfig", "SAM_CONFIGS", "get_sam_config", "build_sam"]


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a SAM model (image encoder, prompt encoder, mask decoder)."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_depth: int = 2
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"encoder_global_attn_indexes {bad} outside [0, encoder_depth={self.encoder_depth})"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_num_heads")
        if self.window_size > self.grid_size:
            raise ValueError(
                f"window_size={self.window_size} exceeds the token grid {self.grid_size} "
                f"(image_size {self.image_size} / patch_size {self.patch_size})"
            )

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid, image_size // patch_size."""
        return self.image_size // self.patch_size

    def replace(self, **changes) -> "SamConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def build_image_encoder(self) -> nn.Module:
        m = sam_modeling()
        return m.ImageEncoderViT(
            depth=self.encoder_depth,
            embed_dim=self.encoder_embed_dim,
            img_size=self.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=self.encoder_num_heads,
            patch_size=self.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=self.encoder_global_attn_indexes,
            window_size=self.window_size,
            out_chans=self.prompt_embed_dim,
        )

    def build_mask_decoder(self) -> nn.Module:
        m = sam_modeling()
        return m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(
                depth=self.decoder_depth,
                embedding_dim=self.prompt_embed_dim,
                mlp_dim=self.decoder_mlp_dim,
                num_heads=self.decoder_num_heads,
            ),
            transformer_dim=self.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=self.iou_head_hidden_dim,
        )

    def build_prompt_encoder(self) -> nn.Module:
        m = sam_modeling()
        g = self.grid_size
        return m.PromptEncoder(
            embed_dim=self.prompt_embed_dim,
            image_embedding_size=(g, g),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=self.mask_in_chans,
        )


SAM_CONFIGS: dict[str, SamConfig] = {
    # The official sizes, as segment_anything.build_sam builds them.
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # Small enough that a multi-task training step at batch 4 runs well under a second on 2 CPU cores;
    # same block structure as the official ones (windowed blocks + global blocks, rel-pos, neck).
    "tiny": SamConfig(
        "tiny",
        encoder_embed_dim=128,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        image_size=128,
        patch_size=16,
        window_size=4,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}


def get_sam_config(model_type: str | SamConfig, image_size: int | None = None) -> SamConfig:
    """Look up a config by name (`vit_b`, `vit_l`, `vit_h`, `tiny`), optionally at another image size."""
    if isinstance(model_type, SamConfig):
        cfg = model_type
    else:
        if model_type not in SAM_CONFIGS:
            raise ValueError(
                f"model_type must be one of {sorted(SAM_CONFIGS)}, got {model_type!r}"
            )
        cfg = SAM_CONFIGS[model_type]
    if image_size is not None and image_size != cfg.image_size:
        cfg = cfg.replace(image_size=image_size, window_size=min(cfg.window_size, image_size // cfg.patch_size))
    return cfg


def build_sam(config: str | SamConfig) -> nn.Module:
    """The original promptable `segment_anything.modeling.Sam` for a config (random init, eval mode).

    Its `state_dict()` has exactly the key layout of the official `sam_vit_*.pth` checkpoints.
    """
    cfg = get_sam_config(config)
    m = sam_modeling()
    sam = m.Sam(
        image_encoder=cfg.build_image_encoder(),
        prompt_encoder=cfg.build_prompt_encoder(),
        mask_decoder=cfg.build_mask_decoder(),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    )
    return sam.eval()
