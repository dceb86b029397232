"""mSAM: the paper's multi-task SAM, built from the `segment-anything` package's own modules.

    images (B, 3, H, W) in [0, 1]
      -> resize the longest side to S = config.image_size, SAM pixel normalisation, pad to S x S
      -> ImageEncoderViT with a task delta in every block's fused qkv, run once for the requested tasks as
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
  (LayerNorm-only encoder tuning).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..deltas import DECOMPS as DELTA_DECOMPS
from ..deltas import INITS, parse_ranks
from ..inject import adapt, mark_trainable, task_deltas, task_linears, task_scope
from .._utils import dataclass_kwargs
from ..layers import qkv_rows
from ._import import sam_modeling
from .weights import NO_MASK_KEY, PE_KEY, fit_sam_state_dict, read_sam_checkpoint
from .config import SamConfig, get_sam_config

__all__ = [
    "DECOMPS", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "default_ranks", "MSamConfig", "MultiTaskSAM",
    "build_msam", "save_msam", "load_msam", "parameter_breakdown", "MSAM_WEIGHTS", "MSAM_CONFIG",
]

#: every `decomp` build_msam takes: the core library's deltas, plus the three baselines without a delta
DECOMPS: tuple[str, ...] = (*DELTA_DECOMPS, "full", "frozen", "none")
#: decompositions whose encoder is the same for every task (it runs once per batch, not T times)
TASK_AGNOSTIC: tuple[str, ...] = ("shared-lora", "full", "frozen", "none")
_NO_DELTA = ("full", "frozen", "none")

#: Default ranks for the official sizes (encoder width >= 512): the paper's TA-LoRA ranks R1 = R2 = 32,
#: R3 = 4 (= (r_task, r_out, r_in) = (4, 32, 32)), LoRA rank 32, and the experiment CLI's CP / TT choices.
PAPER_RANKS: dict[str, Any] = {"tucker": (4, 32, 32), "cp": 32, "tt": (16, 16), "lora": 32, "shared-lora": 32}
#: Default ranks for narrow encoders (the tiny config, width 128): the paper's bottleneck is 1/32 of
#: ViT-L's width; 8 of 128 keeps the deltas a small fraction of the encoder (Tucker ~4.4k parameters per
#: block against ~197k frozen ones) while leaving every rank well inside its mode.
SMALL_RANKS: dict[str, Any] = {"tucker": (4, 8, 8), "cp": 8, "tt": (4, 8), "lora": 8, "shared-lora": 8}

MSAM_WEIGHTS = "msam.safetensors"
MSAM_CONFIG = "msam_config.json"
_FORMAT = "tensoradapt.msam/1"


def default_ranks(decomp: str, config: SamConfig):
    """The ranks `build_msam` uses when `ranks=None` (None for the decompositions without a delta)."""
    if decomp in _NO_DELTA:
        return None
    table = PAPER_RANKS if config.encoder_embed_dim >= 512 else SMALL_RANKS
    return table[decomp]


def _sam_config_from_dict(data: Mapping[str, Any]) -> SamConfig:
    data = dataclass_kwargs(SamConfig, data)
    return SamConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# --------------------------------------------------------------------------------------------- config
@dataclass
class MSamConfig:
    """Everything needed to rebuild an mSAM (saved as JSON next to its weights by `save_msam`).

    Attributes:
        sam: the SAM architecture (`SamConfig`; `image_size` is the encoder's input side S).
        tasks: ordered task name -> output channels C_t.
        decomp: one of `DECOMPS`.
        ranks: the delta's ranks, resolved (None for "full" / "frozen" / "none").
        qkv: which of q, k, v the deltas adapt (non-empty subset of "qkv").
        scale, dropout, init: passed to `tensoradapt.adapt`.
        train_norms: train the encoder's LayerNorms (ignored by "full", which trains everything, and
            "frozen", which trains none).
        checkpoint: absolute path of the SAM checkpoint the frozen weights came from (None: random or
            an in-memory state dict).
        grad_checkpointing: recompute each encoder block's activations in backward instead of storing
            them (activation checkpointing; trades ~1 extra encoder forward for memory).
    """

    sam: SamConfig
    tasks: dict[str, int]
    decomp: str = "tucker"
    ranks: int | tuple[int, ...] | None = None
    qkv: str = "qkv"
    scale: float = 0.5
    dropout: float = 0.1
    train_norms: bool = True
    init: str = "paper"
    checkpoint: str | None = None
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sam, Mapping):
            self.sam = _sam_config_from_dict(self.sam)
        if not isinstance(self.sam, SamConfig):
            raise TypeError(f"sam must be a SamConfig, got {type(self.sam).__name__}")
        self.tasks = _check_tasks(self.tasks)
        if self.decomp not in DECOMPS:
            raise ValueError(f"decomp must be one of {list(DECOMPS)}, got {self.decomp!r}")
        if self.decomp in _NO_DELTA:
            if self.ranks is not None:
                raise ValueError(
                    f"ranks does not apply to decomp={self.decomp!r} (it has no task delta); pass ranks=None"
                )
        else:
            if self.ranks is None:
                self.ranks = default_ranks(self.decomp, self.sam)
            self.ranks = parse_ranks(self.decomp, self.ranks)
        if not isinstance(self.qkv, str):
            raise TypeError(f"qkv must be a string like 'qkv' or 'qv', got {self.qkv!r}")
        qkv_rows(3, self.qkv)  # raises ValueError naming qkv
        if not _is_number(self.scale) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        self.scale = float(self.scale)
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if not isinstance(self.train_norms, bool):
            raise TypeError(f"train_norms must be a bool, got {self.train_norms!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not isinstance(self.grad_checkpointing, bool):
            raise TypeError(f"grad_checkpointing must be a bool, got {self.grad_checkpointing!r}")

    @property
    def task_agnostic(self) -> bool:
        return self.decomp in TASK_AGNOSTIC

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sam"] = self.sam.to_dict()
        d["tasks"] = dict(self.tasks)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MSamConfig":
        data = dataclass_kwargs(cls, data)
        if isinstance(data.get("ranks"), list):
            data["ranks"] = tuple(data["ranks"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "MSamConfig":
        return cls.from_dict(json.loads(text))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_tasks(tasks) -> dict[str, int]:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must be a non-empty mapping name -> output channels, got {tasks!r}")
    out: dict[str, int] = {}
    for name, channels in tasks.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task names must be non-empty strings without '.', got {name!r} in tasks")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"tasks[{name!r}] must be a positive int number of output channels, got {channels!r}")
        out[name] = int(channels)
    return out


# --------------------------------------------------------------------------------------------- model
class MultiTaskSAM(nn.Module):
    """SAM without a prompt encoder: one (adapted) image encoder, per-task no-mask embeddings and decoders.

    Build it with `build_msam`; `MultiTaskSAM(msam_config, checkpoint)` does the same from a config.

    Modules: `image_encoder` (segment_anything's ImageEncoderViT; its blocks' `attn.qkv` become
    `TaskLinear`s), `pe_layer` (PositionEmbeddingRandom), `decoders` (name -> MaskDecoder),
    `no_mask_embeds` (name -> Parameter (C_t, D)).
    """

    def __init__(
        self, msam_config: MSamConfig, checkpoint: str | Path | Mapping[str, Tensor] | None = None
    ) -> None:
        super().__init__()
        if not isinstance(msam_config, MSamConfig):
            raise TypeError(f"msam_config must be an MSamConfig, got {type(msam_config).__name__}")
        self.msam_config = msam_config
        cfg = self.config = msam_config.sam
        m = sam_modeling()
        dim = cfg.prompt_embed_dim
        self.image_encoder = cfg.build_image_encoder()
        self.pe_layer = m.prompt_encoder.PositionEmbeddingRandom(dim // 2)
        self.decoders = nn.ModuleDict({name: cfg.build_mask_decoder() for name in msam_config.tasks})
        no_mask = torch.randn(1, dim)  # SAM's nn.Embedding init, shared by every channel as a checkpoint's is
        self.no_mask_embeds = nn.ParameterDict({
            name: nn.Parameter(no_mask.expand(c, dim).clone()) for name, c in msam_config.tasks.items()
        })
        first = next(iter(self.decoders.values()))
        for dec in self.decoders.values():  # one SAM decoder copied into every task, as from a checkpoint
            if dec is not first:
                dec.load_state_dict(first.state_dict())
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), persistent=False)
        self._task_index = {name: i for i, name in enumerate(msam_config.tasks)}

        if checkpoint is not None:
            self.load_sam_checkpoint(checkpoint)
        if msam_config.decomp not in _NO_DELTA:
            c = msam_config
            adapt(
                self.image_encoder, targets=[f"blocks.{i}.attn.qkv" for i in range(cfg.encoder_depth)],
                decomp=c.decomp, num_tasks=len(c.tasks), ranks=c.ranks, scale=c.scale, dropout=c.dropout,
                init=c.init, qkv=c.qkv,
            )
        self.reset_trainable()

    # ----------------------------------------------------------------------------- properties
    @property
    def task_names(self) -> list[str]:
        return list(self.msam_config.tasks)

    @property
    def task_channels(self) -> dict[str, int]:
        return dict(self.msam_config.tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.msam_config.tasks)

    @property
    def task_agnostic(self) -> bool:
        """True when the encoder is the same for every task (it then runs once per batch)."""
        return self.msam_config.task_agnostic

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        g = self.config.grid_size
        return (g, g)

    # ----------------------------------------------------------------------------- weights
    @torch.no_grad()
    def load_sam_checkpoint(self, checkpoint: str | Path | Mapping[str, Tensor]) -> None:
        """Load an official-format SAM state dict (path or mapping) into the *plain* modules.

        Must run before the deltas wrap `qkv` (the constructor does this). Encoder tensors load as they
        are (position tables resized to `config.image_size`); SAM's mask decoder is copied into every
        task's decoder, its `no_mask_embed` into every task's C_t embeddings, and the prompt encoder's
        Gaussian PE matrix into `pe_layer`. Errors name the file, the keys and the shapes.
        """
        if any(True for _ in task_deltas(self)):
            raise RuntimeError("load_sam_checkpoint must run before the encoder is adapted (qkv wrapped)")
        state, source = read_sam_checkpoint(checkpoint)
        state = fit_sam_state_dict(state, self.config, source)
        enc = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
        dec = {k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")}
        self.image_encoder.load_state_dict(enc, strict=True)
        for decoder in self.decoders.values():
            decoder.load_state_dict(dec, strict=True)
        self.pe_layer.positional_encoding_gaussian_matrix.copy_(state[PE_KEY])
        for emb in self.no_mask_embeds.values():
            emb.copy_(state[NO_MASK_KEY].expand_as(emb))

    def trainable_modules(self) -> list[nn.Module]:
        """The modules (besides the deltas) whose parameters train, following the module docstring."""
        c = self.msam_config
        mods: list[nn.Module] = []
        for dec in self.decoders.values():
            mods += [dec.transformer, dec.iou_token, dec.mask_tokens, dec.output_upscaling]
            mods.append(dec.output_hypernetworks_mlps[0])  # mask token 0's; the IoU head and 1-3 stay frozen
        if c.decomp == "full":
            mods.append(self.image_encoder)
        elif c.train_norms and c.decomp != "frozen":
            norm2d = sam_modeling().common.LayerNorm2d
            mods += [mod for mod in self.image_encoder.modules() if isinstance(mod, (nn.LayerNorm, norm2d))]
        return mods

    def reset_trainable(self) -> int:
        """Set `requires_grad` as the builder does (see the module docstring); return #trainable."""
        ids = {id(p) for mod in self.trainable_modules() for p in mod.parameters()}
        ids |= {id(p) for p in self.no_mask_embeds.values()}
        return mark_trainable(self, extra=lambda _n, p: id(p) in ids)

    # ----------------------------------------------------------------------------- forward pieces
    def _task_ids(self, tasks: Sequence[str] | str | None) -> list[str]:
        if tasks is None:
            return self.task_names
        if isinstance(tasks, str):
            tasks = [tasks]
        names = list(tasks)
        unknown = [t for t in names if t not in self._task_index]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown} in tasks; the model has {self.task_names}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks lists a task twice: {names}")
        if not names:
            raise ValueError("tasks must name at least one task (or be None for all)")
        return names

    def preprocess(self, images: Tensor, normalize: bool = True) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> the encoder input (B, 3, S, S) float32 and the resized size (h, w).

        As SAM: the longest side is resized to S (bilinear, antialiased), pixels are normalised with SAM's
        mean / std (0-255 scale; the [0, 1] images are scaled by 255 first) and the image is zero-padded
        at the bottom / right. With `normalize=False` the images are taken as already normalised.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
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
        enc = self.image_encoder
        decomp = self.msam_config.decomp
        if decomp in _NO_DELTA:
            return self._run_encoder(x)
        if self.task_agnostic or len(task_indices) == 1:
            with task_scope(enc, 0 if self.task_agnostic else int(task_indices[0])):
                return self._run_encoder(x)
        merged = {layer.merged_task for _, layer in task_linears(enc)} - {None}
        if merged:  # a merged layer would silently apply its one task's weights to every sample
            raise RuntimeError(
                f"the encoder is merged for task {sorted(merged)}: call tensoradapt.unmerge_adapters(model) "
                "before a multi-task forward (or request that task only)"
            )
        B = x.shape[0]
        ids = torch.tensor(list(task_indices), dtype=torch.long, device=x.device).repeat_interleave(B)
        with task_scope(enc, ids):
            return self._run_encoder(x, repeats=len(task_indices))

    def _run_encoder(self, x: Tensor, repeats: int = 1) -> Tensor:
        """The ImageEncoderViT forward, step by step: x (B, 3, S, S) -> (repeats*B, D, g, g), task-major.

        The frozen patch embedding (+ absolute positions) is the same for every task, so it runs once
        on the B images and its output is repeated for the task passes; only the blocks see B*repeats
        samples. With `grad_checkpointing` each block's activations are recomputed in backward
        instead of stored (for vit_l / vit_h memory).
        """
        enc = self.image_encoder
        tokens = enc.patch_embed(x)  # (B, g, g, C)
        if enc.pos_embed is not None:
            tokens = tokens + enc.pos_embed
        if repeats > 1:
            tokens = tokens.repeat(repeats, 1, 1, 1)
        recompute = self.msam_config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in enc.blocks:
            if recompute:
                task = next((layer.task for _, layer in task_linears(block)), None)
                tokens = checkpoint(_routed_block, block, tokens, task, use_reentrant=False)
            else:
                tokens = block(tokens)
        return enc.neck(tokens.permute(0, 3, 1, 2))

    def encode(self, images: Tensor, task: str, normalize: bool = True) -> Tensor:
        """Image embeddings of `task`: (B, 3, H, W) in [0, 1] -> (B, D, g, g) (D = prompt_embed_dim)."""
        (name,) = self._task_ids([task])
        x, _ = self.preprocess(images, normalize)
        return self._encode(x, [self._task_index[name]])

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

    def forward(
        self, images: Tensor, tasks: Sequence[str] | None = None, normalize: bool = True
    ) -> dict[str, Tensor]:
        """(B, 3, H, W) images in [0, 1] -> {task: logits (B, C_t, H, W)} for `tasks` (default all).

        The encoder runs once on a mixed-task batch of T'*B samples (T' requested tasks), or once on B
        samples when it is task-agnostic; each task's decoder then runs once on B*C_t pairs.
        """
        names = self._task_ids(tasks)
        size = tuple(images.shape[-2:])
        x, resized = self.preprocess(images, normalize)
        B = x.shape[0]
        emb = self._encode(x, [self._task_index[n] for n in names])
        pe = self.image_pe(x.device)
        low = []
        for k, name in enumerate(names):
            e = emb if emb.shape[0] == B else emb[k * B:(k + 1) * B]
            low.append(self.decode(name, e, pe))
        full = self.postprocess(torch.cat(low, dim=1), resized, size)  # one resize for all tasks' channels
        return dict(zip(names, full.split([m.shape[1] for m in low], dim=1)))

    def extra_repr(self) -> str:
        c = self.msam_config
        return f"model_type={self.config.name!r}, tasks={c.tasks}, decomp={c.decomp!r}, ranks={c.ranks}"


def _routed_block(block: nn.Module, tokens: Tensor, task) -> Tensor:
    """Run `block` with `task` routed to its adapted layers.

    Activation checkpointing recomputes a block during backward, after the forward's `task_scope` has
    ended, so the routing is captured at forward time and re-applied around the recomputation.
    """
    layers = [layer for _, layer in task_linears(block)]
    saved = [layer.task for layer in layers]
    for layer in layers:
        layer.task = task
    try:
        return block(tokens)
    finally:
        for layer, old in zip(layers, saved):
            layer.task = old


# --------------------------------------------------------------------------------------------- builder
def build_msam(
    model_type: str | SamConfig,
    tasks: Mapping[str, int],
    checkpoint: str | Path | Mapping[str, Tensor] | None = None,
    decomp: str = "tucker",
    ranks=None,
    qkv: str = "qkv",
    scale: float = 0.5,
    dropout: float = 0.1,
    train_norms: bool = True,
    image_size: int | None = None,
    init: str = "paper",
    grad_checkpointing: bool = False,
) -> MultiTaskSAM:
    """Build an mSAM (see the module docstring for what it computes and what trains).

    Args:
        model_type: "vit_b", "vit_l", "vit_h" (official dimensions), "tiny", or a `SamConfig`.
        tasks: ordered task name -> output channels, e.g. {"semantic": 13, "depth": 1, "normal": 3}.
        checkpoint: an official-format SAM state dict (a `torch.save`d file, read with weights_only=True,
            or a mapping); None keeps the random init (one random SAM decoder copied into every task).
        decomp: "cp", "tucker" (TA-LoRA), "tt", "lora" (LoRA-STL), "shared-lora" (LoRA-HPS), "full"
            (encoder unfrozen, no delta), "frozen" (no delta, encoder frozen), "none" (no delta; LayerNorms
            train if train_norms).
        ranks: the delta's ranks; None = `default_ranks(decomp, config)`: the paper's for the official
            sizes (`PAPER_RANKS`: tucker (4, 32, 32), cp 32, tt (16, 16), lora / shared-lora 32), `SMALL_RANKS`
            for the tiny config (tucker (4, 8, 8), cp 8, tt (4, 8), lora / shared-lora 8). Never clipped:
            an invalid rank raises, naming it. Must be None for full / frozen / none.
        qkv: which of the fused q, k, v rows the deltas adapt (any non-empty subset, e.g. "qv").
        scale: delta multiplier (the paper: 0.5). dropout: on the delta's input.
        train_norms: also train the encoder's LayerNorms (the paper does).
        image_size: encoder input side S (default the config's); a checkpoint of another size has its
            position tables interpolated.
        init: "paper" (zero core, N(0, 1) factors) or "orthonormal"; both start at a zero delta.
        grad_checkpointing: recompute encoder-block activations in backward (vit_l / vit_h memory).

    Build on the meta device (`with torch.device("meta"): build_msam("vit_h", ...)`) to count parameters
    without allocating weights.
    """
    sam = get_sam_config(model_type, image_size)
    source = None
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        source = str(Path(checkpoint).expanduser().resolve())
    config = MSamConfig(
        sam=sam, tasks=dict(tasks) if isinstance(tasks, Mapping) else tasks, decomp=decomp, ranks=ranks,
        qkv=qkv, scale=scale, dropout=dropout, train_norms=train_norms, init=init, checkpoint=source,
        grad_checkpointing=grad_checkpointing,
    )
    return MultiTaskSAM(config, checkpoint)


# --------------------------------------------------------------------------------------------- reports
def parameter_breakdown(model: MultiTaskSAM) -> dict[str, int]:
    """Parameter counts by part: trainable / total, the deltas, decoders, embeddings, encoder norms."""
    deltas = {id(p) for _, d in task_deltas(model) for p in d.parameters()}
    embeds = {id(p) for p in model.no_mask_embeds.values()}
    norm2d = sam_modeling().common.LayerNorm2d
    norms = {
        id(p) for m in model.image_encoder.modules() if isinstance(m, (nn.LayerNorm, norm2d)) for p in m.parameters()
    }
    out = {k: 0 for k in (
        "trainable", "total", "delta", "encoder_norms_trainable", "encoder_other_trainable", "decoders_trainable",
        "decoders_frozen", "no_mask_embeds", "encoder_frozen",
    )}
    for name, p in model.named_parameters():
        n = p.numel()
        out["total"] += n
        out["trainable"] += n if p.requires_grad else 0
        if id(p) in deltas:
            out["delta"] += n
        elif id(p) in embeds:
            out["no_mask_embeds"] += n
        elif name.startswith("decoders."):
            out["decoders_trainable" if p.requires_grad else "decoders_frozen"] += n
        elif not p.requires_grad:
            out["encoder_frozen"] += n
        elif id(p) in norms:
            out["encoder_norms_trainable"] += n
        else:
            out["encoder_other_trainable"] += n
    return out


# --------------------------------------------------------------------------------------------- save / load
def _trainable_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _frozen_fingerprint(model: nn.Module) -> list[float]:
    """Cheap identity of the frozen weights: count, float64 sum and sum of squares over frozen tensors."""
    count, s1, s2 = 0, 0.0, 0.0
    with torch.no_grad():
        tensors = [p for p in model.parameters() if not p.requires_grad] + [
            b for n, b in model.named_buffers() if n.startswith("pe_layer.")
        ]
        for t in tensors:
            d = t.detach().double()
            count += t.numel()
            s1 += float(d.sum())
            s2 += float((d * d).sum())
    return [float(count), s1, s2]


def save_msam(model: MultiTaskSAM, directory: str | Path, include_frozen: bool = False) -> Path:
    """Write `msam.safetensors` (the trainable tensors) and `msam_config.json` into `directory`, atomically.

    The trainable state is the deltas, no-mask embeddings, trained decoder parts and (if trained) the
    encoder LayerNorms — "full" saves the whole encoder. The frozen weights come back from the base SAM
    checkpoint at `load_msam`; a fingerprint of them is stored and checked. `include_frozen=True` saves
    every tensor (self-contained, e.g. for a model built without a checkpoint).
    """
    from safetensors.torch import save_file

    from .._utils import atomic_path

    if not isinstance(model, MultiTaskSAM):
        raise TypeError(f"model must be a MultiTaskSAM, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if include_frozen:
        state = dict(model.state_dict())
    else:
        state = _trainable_state(model)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {
        "format": _FORMAT,
        "saved": "all" if include_frozen else "trainable",
        "trainable_keys": sorted(_trainable_state(model)),
        "frozen_fingerprint": _frozen_fingerprint(model),
        "msam_config": model.msam_config.to_dict(),
    }
    with atomic_path(directory / MSAM_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_path(directory / MSAM_CONFIG) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return directory


_USE_SAVED = object()


def load_msam(
    directory: str | Path,
    checkpoint: str | Path | Mapping[str, Tensor] | None | object = _USE_SAVED,
    map_location: str | torch.device = "cpu",
) -> MultiTaskSAM:
    """Rebuild a model saved by `save_msam` and load its tensors (exactly; strict on keys and shapes).

    `checkpoint` is the base SAM checkpoint for the frozen weights: by default the path recorded at
    build time; pass another path (the same weights moved elsewhere) or a state dict. The rebuilt frozen
    weights must match the saved fingerprint, else a ValueError names the checkpoint.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / MSAM_CONFIG, directory / MSAM_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"mSAM directory {directory} lacks {p.name} (written by save_msam)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{cfg_path} is not an mSAM config (format {meta.get('format')!r}, expected {_FORMAT!r})")
    config = MSamConfig.from_dict(meta["msam_config"])
    saved_all = meta["saved"] == "all"
    if saved_all:
        base = None
    else:
        base = config.checkpoint if checkpoint is _USE_SAVED else checkpoint
        if isinstance(base, (str, Path)):
            if not Path(base).is_file():
                raise FileNotFoundError(
                    f"the base SAM checkpoint {base} of {directory} does not exist: "
                    "pass load_msam(..., checkpoint=PATH)"
                )
            config.checkpoint = str(Path(base).expanduser().resolve())
    model = MultiTaskSAM(config, base)
    state = load_file(str(w_path))
    own = model.state_dict() if saved_all else _trainable_state(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"{w_path} does not match the model rebuilt from {cfg_path}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}"
        )
    bad = [
        f"{k}: saved {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items() if state[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{w_path}: shape mismatches {bad[:8]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    if not saved_all:
        want, have = meta["frozen_fingerprint"], _frozen_fingerprint(model)
        same = want[0] == have[0] and all(
            math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-6) for a, b in zip(want[1:], have[1:])
        )
        if not same:
            origin = "<random init>" if base is None else ("<in-memory state dict>" if isinstance(base, Mapping) else base)
            raise ValueError(
                f"the frozen weights rebuilt from checkpoint {origin} differ "
                f"from those {directory} was trained with (fingerprint {have} vs saved {want}): pass the base "
                "checkpoint via load_msam(..., checkpoint=...), or save with save_msam(..., include_frozen=True)"
            )
    return model.to(map_location)
