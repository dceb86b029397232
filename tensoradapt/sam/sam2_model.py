"""mSAM-2: the paper's multi-task SAM on SAM 2's image path, built from transformers' `Sam2` modules.

    images (B, 3, H, W) in [0, 1]
      -> resize to S x S (SAM 2 does not keep the aspect ratio), ImageNet normalisation
      -> Hiera trunk with a task delta in every block's fused qkv (`targets`: also attn.proj and the MLP), run once for the requested tasks as one
         mixed-task batch of T'*B samples (task-major), then the FPN neck: levels s0 (S/4), s1 (S/8) and the
         image embedding (S/16, + SAM 2's no-memory embedding), each (T'*B, D, ., .)
      -> per task t: its decoder's conv_s0 / conv_s1 on s0 / s1 (the high-resolution features); each of
         its C_t no-mask embeddings as the dense prompt, SAM 2's "no prompt" (two padding-point tokens) as
         the sparse one -> task t's Sam2MaskDecoder on the B*C_t pairs -> mask token 0's mask (B, C_t, S/4, S/4)
      -> bilinear resize to H x W (SAM 2's post-processing) -> {task name: logits (B, C_t, H, W)}

Task routing through Hiera needs no help from the host: each block partitions its (B', h, w, C) input
into windows sample-major ((B'*k, ws, ws, C), k windows per image, k changing from stage to stage) *before*
the fused `qkv`, and pools the queries only *after* it, so `qkv` always sees B'*k rows in sample-major order,
which `tensoradapt`'s routing rule (each id repeated k times) covers; global blocks see B' rows.

What trains (`requires_grad`, set by the builder), as in mSAM:
- the task deltas of the trunk's qkv (and its other `targets`; every decomposition but "full" / "frozen" / "none");
- every task's no-mask embeddings and mask decoder, *except* the parts that never get a gradient when
  only mask token 0 is read: the IoU head, the object-score head and the hypernetwork MLPs of mask
  tokens 1-3 (so DDP needs no `find_unused_parameters`). The decoder's tokens, two-way transformer,
  upscaling and high-resolution projections (conv_s0 / conv_s1) train;
- with `train_norms=True` every LayerNorm of the trunk (the FPN neck has none), shared by the tasks;
- "full" unfreezes the whole image encoder (trunk + neck); "frozen" / "none" as in mSAM.
The no-memory embedding and the padding-point token are SAM 2's constant encodings of "no memory" / "no
prompt": frozen (each task's trainable no-mask embeddings and decoder tokens already cover what they add).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import MSamConfig
from .multitask import MultiTaskSAMBase, encode_task_batch, run_block
from .sam2_config import Sam2HieraConfig, set_sam2_attention
from .sam2_weights import (
    SAM2_NO_MASK_KEY, SAM2_NO_MEMORY_KEY, SAM2_NOT_A_POINT_KEY, SAM2_PE_KEY, fit_sam2_state_dict,
    read_sam2_checkpoint,
)
from .weights import SamWeightsSource

__all__ = ["MultiTaskSAM2", "run_sam2_encoder"]

#: the image encoder's output: FPN levels s0 (S/4), s1 (S/8), image embedding (S/16), each (N, D, ., .)
Sam2Features = tuple[Tensor, Tensor, Tensor]


def run_sam2_encoder(encoder: nn.Module, x: Tensor, repeats: int = 1, recompute: bool = False) -> Sam2Features:
    """transformers' `Sam2VisionModel` forward, step by step: x (B, 3, S, S) -> 3 FPN levels of repeats*B rows.

    The frozen patch embedding (+ Hiera's windowed position table, resized to the token grid) runs once
    on the B images and is repeated task-major for the task passes; only the blocks and the neck see
    repeats*B samples. With `recompute` each block is activation-checkpointed (routing kept).
    """
    trunk = encoder.backbone
    tokens = trunk.patch_embed(x)  # (B, S/4, S/4, C0)
    tokens = tokens + trunk._get_pos_embed(tokens.shape[1:3])
    if repeats > 1:
        tokens = tokens.repeat(repeats, 1, 1, 1)
    stages = []
    for i, block in enumerate(trunk.blocks):
        tokens = run_block(block, tokens, recompute)
        if i in trunk.stage_ends:
            stages.append(tokens)
    levels, _ = encoder.neck(stages)  # lowest resolution first; the neck's position encodings are unused
    s0, s1, emb = levels[-encoder.num_feature_levels:][::-1]  # as Sam2VisionModel: highest resolution first
    return s0, s1, emb


class MultiTaskSAM2(MultiTaskSAMBase):
    """SAM 2 without a prompt encoder: one (adapted) Hiera encoder, per-task no-mask embeddings and decoders.

    Build it with `build_msam("sam2_hiera_tiny" | ..., tasks)`; `MultiTaskSAM2(msam_config, checkpoint)`
    does the same from a config whose `sam` is a `Sam2HieraConfig`.

    Modules: `image_encoder` (transformers' Sam2VisionModel: `backbone` Hiera trunk, its blocks' `attn.qkv`
    (with `targets` also `attn.proj` / `mlp.proj_in` / `mlp.proj_out`) become `TaskLinear`s, and `neck` FPN), `pe_layer` (Sam2PositionalEmbedding), `decoders` (name ->
    Sam2MaskDecoder), `no_mask_embeds` (name -> Parameter (C_t, D)), `no_memory_embedding` (1, 1, D) and
    `not_a_point_embed` (1, D) (frozen). The forward is `MultiTaskSAMBase.forward`.
    """

    TARGET_LINEARS = {"qkv": ("attn.qkv",), "proj": ("attn.proj",), "mlp": ("mlp.proj_in", "mlp.proj_out")}

    def __init__(self, msam_config: MSamConfig, checkpoint: SamWeightsSource | None = None) -> None:
        super().__init__(msam_config, Sam2HieraConfig)
        cfg = self.config
        dim = cfg.prompt_embed_dim
        self.image_encoder = cfg.build_image_encoder()
        self.pe_layer = cfg.build_pe_layer()
        self._build_task_heads(cfg.build_mask_decoder, dim)
        for dec in self.decoders.values():
            dec.dynamic_multimask_via_stability = False  # mSAM-2 reads mask token 0, never another token's
        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, dim))  # Sam2Model's init
        self.not_a_point_embed = nn.Parameter(torch.randn(1, dim))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), persistent=False)

        if checkpoint is not None:
            self.load_sam_checkpoint(checkpoint)
        set_sam2_attention(self, msam_config.attention)
        self._adapt_encoder([f"backbone.blocks.{i}" for i in range(cfg.depth)])
        self.reset_trainable()

    # ----------------------------------------------------------------------------- weights
    @torch.no_grad()
    def load_sam_checkpoint(self, checkpoint: SamWeightsSource) -> None:
        """Load SAM 2 weights (a `Sam2Model.save_pretrained` folder or its state dict) into the plain modules.

        Must run before the deltas wrap `qkv` (the constructor does this). The vision encoder loads as it
        is; SAM 2's mask decoder is copied into every task's decoder, `no_mask_embed` into every task's C_t
        embeddings; the image PE matrix, the no-memory embedding and the padding-point token load too.
        Errors name the folder, the keys, the shapes or the config fields (`sam2_weights`).
        """
        self._refuse_if_adapted()
        state, source = read_sam2_checkpoint(checkpoint, self.config)
        state = fit_sam2_state_dict(state, self.config, source)
        self._load_plain_state(state, "vision_encoder.", state[SAM2_NO_MASK_KEY])
        self.pe_layer.positional_embedding.copy_(state[SAM2_PE_KEY])
        self.no_memory_embedding.copy_(state[SAM2_NO_MEMORY_KEY])
        self.not_a_point_embed.copy_(state[SAM2_NOT_A_POINT_KEY])

    def trained_decoder_parts(self, decoder: nn.Module) -> list[nn.Module]:
        """All but the IoU head, the object-score head and the hypernetwork MLPs of mask tokens 1-3."""
        d = decoder
        return [
            d.transformer, d.obj_score_token, d.iou_token, d.mask_tokens, d.upscale_conv1, d.upscale_layer_norm,
            d.upscale_conv2, d.conv_s0, d.conv_s1, d.output_hypernetworks_mlps[0],
        ]

    def encoder_norms(self) -> list[nn.Module]:
        """Every Hiera block's layer_norm1 / layer_norm2 (the FPN neck has no normalisation)."""
        return [m for m in self.image_encoder.modules() if isinstance(m, nn.LayerNorm)]

    # ----------------------------------------------------------------------------- forward pieces
    def preprocess(self, images: Tensor, normalize: bool = True) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> the encoder input (B, 3, S, S) float32 and (S, S) (nothing is padded).

        As SAM 2's image processor: resized to S x S (bilinear, antialiased), normalised with ImageNet's
        mean / std. With `normalize=False` the images are taken as already normalised.
        """
        self._check_images(images)
        S = self.config.image_size
        x = images.float()
        if tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        if normalize:
            x = (x - self.pixel_mean) / self.pixel_std
        return x, (S, S)

    def _encode(self, x: Tensor, task_indices: Sequence[int]) -> Sam2Features:
        """x (B, 3, S, S) -> (s0, s1, emb) of B rows (task-agnostic / one task) or T'*B rows, task-major.

        `emb` includes SAM 2's no-memory embedding, as `Sam2Model` feeds its decoder.
        """
        c = self.msam_config
        recompute = c.grad_checkpointing and self.training and torch.is_grad_enabled()

        def run(images: Tensor, repeats: int) -> Sam2Features:
            return run_sam2_encoder(self.image_encoder, images, repeats=repeats, recompute=recompute)

        s0, s1, emb = encode_task_batch(self.image_encoder, run, x, task_indices, c.has_delta, c.task_agnostic)
        return s0, s1, emb + self.no_memory_embedding.view(1, -1, 1, 1).to(emb.dtype)

    def image_pe(self, device: torch.device | None = None) -> Tensor:
        """The dense positional encoding of the S/16 grid, (1, D, g, g), float32 (outside autocast).

        `Sam2Model.get_image_wide_positional_embeddings`: cell centres in [0, 1]^2, (x, y), through the
        Gaussian random-feature encoding of `pe_layer`.
        """
        device = device or self.pe_layer.positional_embedding.device
        g = self.config.grid_size
        with torch.autocast(device_type=device.type, enabled=False):
            centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g
            grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # (g, g, 2): x, y
            return self.pe_layer(grid).permute(2, 0, 1).unsqueeze(0)

    def decode(self, task: str, features: Sam2Features, image_pe: Tensor | None = None) -> Tensor:
        """Task `task`'s decoder: FPN levels (s0, s1, emb) of B images -> low-resolution logits (B, C_t, 4g, 4g).

        The B*C_t (image, channel) pairs run through `Sam2MaskDecoder.forward` in one batch, sample-major:
        pair b*C_t + c is image b's embedding with channel c's no-mask embedding as the dense prompt, SAM 2's
        two padding-point tokens as the sparse prompt, and the task's own conv_s0 / conv_s1 projections of
        image b's high-resolution levels; channel c is mask token 0's mask (what SAM 2 returns for
        `multimask_output=False` without its stability fallback).
        """
        dec = self.decoders[task]
        no_mask = self.no_mask_embeds[task]  # (C, D)
        s0, s1, emb = features
        B, D = emb.shape[:2]
        C = no_mask.shape[0]
        pe = self.image_pe(emb.device) if image_pe is None else image_pe
        high = [dec.conv_s0(s0).repeat_interleave(C, dim=0), dec.conv_s1(s1).repeat_interleave(C, dim=0)]
        masks, _, _, _ = dec(
            image_embeddings=emb.repeat_interleave(C, dim=0),
            image_positional_embeddings=pe,  # (1, D, g, g) broadcasts over the B*C pairs
            sparse_prompt_embeddings=self.not_a_point_embed.view(1, 1, 1, D).expand(B * C, 1, 2, D),
            dense_prompt_embeddings=no_mask.repeat(B, 1)[:, :, None, None].to(emb.dtype),  # (B*C, D, 1, 1)
            multimask_output=False,
            high_resolution_features=high,
        )  # (B*C, 1, 1, 4g, 4g)
        return masks.reshape(B, C, *masks.shape[-2:])

    def postprocess(self, masks: Tensor, resized: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """SAM 2's mask post-processing: (B, C, 4g, 4g) -> bilinear resize to `size` (`resized` is S x S)."""
        return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
