"""mSAM, the model: the paper's multi-task SAM, built from the `segment-anything` package's own modules.

    images (B, 3, H, W) in [0, 1]
      -> resize the longest side to S = config.image_size, SAM pixel normalisation, pad to S x S
      -> ImageEncoderViT with a task delta in every block's fused qkv (`targets`: also its attention output
         and MLP linears), run once for the requested tasks as
         one mixed-task batch of T*B samples (task-major: rows [k*B, (k+1)*B) are task k)
      -> per task t: image embedding (B, D, g, g) + each of its C_t learned no-mask embeddings
         -> task t's MaskDecoder on the B*C_t pairs (no prompts) -> first mask token's mask (B, C_t, 4g, 4g)
      -> SAM's post-processing (upsample to S x S, crop the padding, resize to H x W)
      -> {task name: logits (B, C_t, H, W)}

No prompt encoder: the image positional encoding comes from a `PositionEmbeddingRandom` whose Gaussian
matrix is loaded from the checkpoint's prompt encoder. With a task-agnostic encoder ("shared-lora",
"full", "frozen", "none") the encoder runs once on the B images and every task's decoder reads the same
embedding.

What trains (`requires_grad`, set by the builder):
- the task deltas of the encoder (every decomposition but "full" / "frozen" / "none");
- every task's no-mask embeddings and mask decoder, *except* the decoder's IoU head and the hypernetwork
  MLPs of mask tokens 1-3: mSAM reads mask token 0 only, so they would never receive a gradient. Keeping
  them frozen means every trainable parameter gets a gradient in each step (all tasks requested), so DDP
  needs no `find_unused_parameters=True`;
- with `train_norms=True` (the paper's setting) every LayerNorm of the encoder (the blocks' norm1/norm2
  and the neck's two LayerNorm2d), shared by the tasks;
- "full" unfreezes the whole encoder (no deltas); "frozen" adds no delta and freezes the whole encoder,
  LayerNorms included (`train_norms` does not apply); "none" adds no delta but honours `train_norms`
  (LayerNorm-only encoder tuning);
- `train_modules` (e.g. ("patch_embed", "neck", "pos_embed")) trains those encoder submodules or parameters in
  full beside the deltas.

The task bookkeeping, the trainable set and the forward above are `multitask.MultiTaskSAMBase`'s (shared with
mSAM-2); this module supplies segment-anything's modules, weights, pre- / post-processing and decoder call.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._import import sam_modeling
from .attention import set_attention
from .config import MSamConfig, SamConfig, get_model_config
from .encoder import encoder_norms, run_encoder
from .multitask import MultiTaskSAMBase, encode_task_batch
from .sam2_config import Sam2HieraConfig
from .sam2_model import MultiTaskSAM2
from .weights import NO_MASK_KEY, PE_KEY, SamWeightsSource, fit_sam_state_dict, read_sam_checkpoint

__all__ = ["MultiTaskSAM", "build_msam", "msam_from_config"]


class MultiTaskSAM(MultiTaskSAMBase):
    """SAM without a prompt encoder: one (adapted) image encoder, per-task no-mask embeddings and decoders.

    Build it with `build_msam`; `MultiTaskSAM(msam_config, checkpoint)` does the same from a config.

    Modules: `image_encoder` (segment_anything's ImageEncoderViT; its blocks' `attn.qkv`, and with
    `targets` also `attn.proj` / `mlp.lin1` / `mlp.lin2`, become `TaskLinear`s), `pe_layer` (PositionEmbeddingRandom), `decoders` (name -> MaskDecoder),
    `no_mask_embeds` (name -> Parameter (C_t, D)). The forward is `MultiTaskSAMBase.forward`.
    """

    TARGET_LINEARS = {"qkv": ("attn.qkv",), "proj": ("attn.proj",), "mlp": ("mlp.lin1", "mlp.lin2")}

    def __init__(self, msam_config: MSamConfig, checkpoint: SamWeightsSource | None = None) -> None:
        super().__init__(msam_config, SamConfig)
        cfg = self.config
        m = sam_modeling()
        self.image_encoder = cfg.build_image_encoder()
        self.pe_layer = m.prompt_encoder.PositionEmbeddingRandom(cfg.prompt_embed_dim // 2)
        self._build_task_heads(cfg.build_mask_decoder, cfg.prompt_embed_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), persistent=False)

        if checkpoint is not None:
            self.load_sam_checkpoint(checkpoint)
        set_attention(self.image_encoder, msam_config.attention)
        self._adapt_encoder([f"blocks.{i}" for i in range(msam_config.shared_blocks, cfg.encoder_depth)])
        self.reset_trainable()

    # ----------------------------------------------------------------------------- weights
    @torch.no_grad()
    def load_sam_checkpoint(self, checkpoint: SamWeightsSource) -> None:
        """Load an official-format SAM state dict (path or mapping) into the *plain* modules.

        Must run before the deltas wrap `qkv` (the constructor does this). Encoder tensors load as they
        are (position tables resized to `config.image_size`); SAM's mask decoder is copied into every
        task's decoder, its `no_mask_embed` into every task's C_t embeddings, and the prompt encoder's
        Gaussian PE matrix into `pe_layer`. Errors name the file, the keys and the shapes.
        """
        self._refuse_if_adapted()
        state, source = read_sam_checkpoint(checkpoint)
        state = fit_sam_state_dict(state, self.config, source)
        self._load_plain_state(state, "image_encoder.", state[NO_MASK_KEY])
        self.pe_layer.positional_encoding_gaussian_matrix.copy_(state[PE_KEY])

    def trained_decoder_parts(self, decoder: nn.Module) -> list[nn.Module]:
        """All but the IoU head and the hypernetwork MLPs of mask tokens 1-3 (mSAM reads mask token 0)."""
        d = decoder
        return [d.transformer, d.iou_token, d.mask_tokens, d.output_upscaling, d.output_hypernetworks_mlps[0]]

    def encoder_norms(self) -> list[nn.Module]:
        """Every block's norm1 / norm2 and the neck's two LayerNorm2d."""
        return encoder_norms(self.image_encoder)

    # ----------------------------------------------------------------------------- forward pieces
    def preprocess(self, images: Tensor, normalize: bool = True) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> the encoder input (B, 3, S, S) float32 and the resized size (h, w).

        As SAM: the longest side is resized to S (bilinear, antialiased), pixels are normalised with SAM's
        mean / std (0-255 scale; the [0, 1] images are scaled by 255 first) and the image is zero-padded
        at the bottom / right. With `normalize=False` the images are taken as already normalised.
        """
        self._check_images(images)
        H, W = images.shape[-2:]
        S = self.config.image_size
        factor = S / max(H, W)
        h, w = int(H * factor + 0.5), int(W * factor + 0.5)
        x = images.float()
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if normalize:
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        if (h, w) != (S, S):
            x = F.pad(x, (0, S - w, 0, S - h))
        return x, (h, w)

    def _encode(self, x: Tensor, task_indices: Sequence[int]) -> Tensor:
        """x (B, 3, S, S) -> (B, D, g, g) if task-agnostic or one task, else task-major (T'*B, D, g, g)."""
        c = self.msam_config
        recompute = c.grad_checkpointing and self.training and torch.is_grad_enabled()

        def run(images: Tensor, repeats: int) -> Tensor:
            return run_encoder(self.image_encoder, images, repeats=repeats, recompute=recompute,
                               shared_blocks=c.shared_blocks)

        return encode_task_batch(self.image_encoder, run, x, task_indices, c.has_delta, c.task_agnostic)

    def image_pe(self, device: torch.device | None = None) -> Tensor:
        """The dense positional encoding of the embedding grid, (1, D, g, g), float32 (outside autocast)."""
        device = device or self.pe_layer.positional_encoding_gaussian_matrix.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def decode(self, task: str, embeddings: Tensor, image_pe: Tensor | None = None) -> Tensor:
        """Task `task`'s decoder: (B, D, g, g) -> low-resolution logits (B, C_t, 4g, 4g).

        Each of the task's C_t no-mask embeddings is added to each image's embedding and the B*C_t pairs
        run through the decoder in one batch (no sparse prompts, so the tokens are SAM's IoU token and
        4 mask tokens); channel c is mask token 0's mask. This is `MaskDecoder.predict_masks(...)[0][:, 0]`
        per image, batched over images (predict_masks repeat-interleaves one image by its prompt count,
        so it cannot take B images at once), computing only the hypernetwork MLP of mask token 0.
        """
        dec = self.decoders[task]
        emb = self.no_mask_embeds[task]  # (C, D)
        B, D, h, w = embeddings.shape
        C = emb.shape[0]
        pe = self.image_pe(embeddings.device) if image_pe is None else image_pe
        src = (embeddings.unsqueeze(1) + emb[None, :, :, None, None].to(embeddings.dtype)).reshape(B * C, D, h, w)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(B * C, -1, -1)
        hs, keys = dec.transformer(src, pe, tokens)  # pe (1, D, g, g) broadcasts over the B*C pairs
        upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(B * C, D, h, w))  # (BC, D/8, 4h, 4w)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])  # mask token 0 -> (BC, D/8)
        masks = torch.bmm(hyper.unsqueeze(1), upscaled.flatten(2))  # (BC, 1, 16hw)
        return masks.reshape(B, C, *upscaled.shape[-2:])

    def postprocess(self, masks: Tensor, resized: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """SAM's mask post-processing: (B, C, 4g, 4g) -> upsample to (S, S), crop to `resized`, resize to `size`."""
        S = self.config.image_size
        masks = F.interpolate(masks, size=(S, S), mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        if tuple(resized) != tuple(size):
            masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        return masks


# --------------------------------------------------------------------------------------------- builder
def msam_from_config(msam_config: MSamConfig, checkpoint: SamWeightsSource | None = None) -> MultiTaskSAMBase:
    """The mSAM a config describes: `MultiTaskSAM2` for a SAM 2 architecture, else `MultiTaskSAM`."""
    cls = MultiTaskSAM2 if isinstance(msam_config.sam, Sam2HieraConfig) else MultiTaskSAM
    return cls(msam_config, checkpoint)


def build_msam(
    model_type: str | SamConfig | Sam2HieraConfig,
    tasks: Mapping[str, int],
    checkpoint: SamWeightsSource | None = None,
    decomp: str = "tucker",
    ranks: int | str | Sequence[int] | None = None,
    qkv: str = "qkv",
    targets: str | Sequence[str] = ("qkv",),
    scale: float = 0.5,
    dropout: float = 0.1,
    train_norms: bool = True,
    image_size: int | None = None,
    init: str = "paper",
    grad_checkpointing: bool = False,
    attention: str = "auto",
    shared_blocks: int = 0,
    train_modules: str | Sequence[str] = (),
) -> MultiTaskSAMBase:
    """Build an mSAM (see the module docstring for what it computes and what trains).

    Args:
        model_type: "vit_b", "vit_l", "vit_h" (official dimensions), "tiny", or a `SamConfig`: an mSAM on
            segment-anything (`MultiTaskSAM`); "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus",
            "sam2_hiera_large", "sam2_cpu" or a `Sam2HieraConfig`: an mSAM-2 on transformers' SAM 2
            (`MultiTaskSAM2`, see `tensoradapt.sam.sam2_model`).
        tasks: ordered task name -> output channels, e.g. {"semantic": 13, "depth": 1, "normal": 3}.
        checkpoint: an official-format SAM state dict (a `torch.save`d file, read with weights_only=True,
            or a mapping); for SAM 2 a `Sam2Model.save_pretrained` folder or its state dict. None keeps the
            random init (one random SAM decoder copied into every task).
        decomp: "cp", "tucker" (TA-LoRA), "tt", "lora" (LoRA-STL), "shared-lora" (LoRA-HPS), "full"
            (encoder unfrozen, no delta), "frozen" (no delta, encoder frozen), "none" (no delta; LayerNorms
            train if train_norms).
        ranks: the delta's ranks; None = `default_ranks(decomp, config)`: the paper's for the official
            sizes (`PAPER_RANKS`: tucker (4, 32, 32), cp 32, tt (16, 16), lora / shared-lora 32), `SMALL_RANKS`
            for the tiny config (tucker (4, 8, 8), cp 8, tt (4, 8), lora / shared-lora 8). Never clipped:
            an invalid rank raises, naming it. Must be None for full / frozen / none.
        qkv: which of the fused q, k, v rows the deltas adapt (any non-empty subset, e.g. "qv").
        targets: which linears of each adapted block get a delta: any of "qkv" (the fused attention input, the
            paper's, the default), "proj" (attention output), "mlp" (both MLP linears), e.g. ("qkv", "mlp") or
            "qkv,proj,mlp" (`ENCODER_TARGETS`).
        scale: delta multiplier (the paper: 0.5). dropout: on the delta's input.
        train_norms: also train the encoder's LayerNorms (the paper does).
        image_size: encoder input side S (default the config's); a checkpoint of another size has its
            position tables interpolated (SAM 2: S a multiple of 32; Hiera resizes its own at run time).
        init: "paper" (zero core, N(0, 1) factors) or "orthonormal"; both start at a zero delta.
        grad_checkpointing: recompute encoder-block activations in backward (vit_l / vit_h memory).
        attention: "auto" (default: "chunked" on CPUs, dense below one chunk, "sdpa" elsewhere), "sdpa" (fused
            attention, relative positions folded into q / k), "chunked" (exact, in blocks of query rows) or
            "sam" (segment-anything's forward, stores N x N; for SAM 2 transformers' "eager" kernel).
            `tensoradapt.sam.attention`.
        shared_blocks: k, a task-shared trunk: the first k encoder blocks get no delta and run once for the
            B images, the rest run per task (0: every block adapted, the paper's model; SAM encoders only).
        train_modules: encoder submodules or parameters trained in full beside the deltas, shared by the
            tasks, e.g. ("patch_embed", "neck") or "neck,pos_embed" (PEFT's `modules_to_save`); none may hold
            a delta.

    Build on the meta device (`with torch.device("meta"): build_msam("vit_h", ...)`) to count parameters
    without allocating weights.
    """
    sam = get_model_config(model_type, image_size)
    source = None
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        source = str(Path(checkpoint).expanduser().resolve())
    config = MSamConfig(
        sam=sam, tasks=dict(tasks) if isinstance(tasks, Mapping) else tasks, decomp=decomp, ranks=ranks,
        qkv=qkv, targets=targets, scale=scale, dropout=dropout, train_norms=train_norms, init=init, checkpoint=source,
        grad_checkpointing=grad_checkpointing, attention=attention, shared_blocks=shared_blocks,
        train_modules=train_modules,
    )
    return msam_from_config(config, checkpoint)
