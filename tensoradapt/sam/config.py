"""Configs: the SAM architecture (three official sizes and a tiny one that trains on a CPU) and an mSAM's.

`SamConfig` builds segment-anything's own modules (SAM 2's architecture is `sam2_config.Sam2HieraConfig`);
`MSamConfig` is everything needed to rebuild an mSAM on either (architecture, tasks, decomposition, ranks,
...), validated on construction and round-tripped through JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from .._utils import dataclass_kwargs
from ..deltas import check_init, parse_ranks
from ..layers import check_dropout, qkv_rows
from ._import import sam_modeling
from .attention import ATTENTIONS
from .decomps import NO_DELTA, default_ranks, is_task_agnostic, msam_decomps
from .sam2_config import SAM2_CONFIGS, Sam2HieraConfig, get_sam2_config

__all__ = [
    "SamConfig", "SAM_CONFIGS", "MODEL_TYPES", "get_sam_config", "get_model_config", "build_sam", "MSamConfig",
    "ENCODER_TARGETS", "parse_targets",
]

#: the encoder-block linears a task delta can adapt: "qkv" (the fused attention input projection, the
#: paper's and the default), "proj" (the attention output projection), "mlp" (both MLP linears)
ENCODER_TARGETS: tuple[str, ...] = ("qkv", "proj", "mlp")


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

    def replace(self, **changes: Any) -> "SamConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamConfig":
        """Inverse of `to_dict` (JSON lists become tuples); unknown keys are refused."""
        data = dataclass_kwargs(cls, data)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

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
# The embedded benchmark's foundation model: "tiny" with 8-pixel patches, a 16 x 16 token grid (12 x 16 on
# NYUv2's 3:4 frames, against tiny's 6 x 8), fine enough for dense tasks; ~4x tiny's encoder cost.
SAM_CONFIGS["tiny_p8"] = SAM_CONFIGS["tiny"].replace(name="tiny_p8", patch_size=8)
#: the model names `get_sam_config` / `build_msam` take
MODEL_TYPES: tuple[str, ...] = tuple(SAM_CONFIGS)


def get_sam_config(model_type: str | SamConfig, image_size: int | None = None) -> SamConfig:
    """Look up a config by name (`vit_b`, `vit_l`, `vit_h`, `tiny`, `tiny_p8`), optionally at another image size."""
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


def get_model_config(
    model_type: str | SamConfig | Sam2HieraConfig, image_size: int | None = None
) -> SamConfig | Sam2HieraConfig:
    """The architecture `build_msam` builds for a name: a `SamConfig` (`MODEL_TYPES`) or a SAM 2
    `Sam2HieraConfig` (`SAM2_MODEL_TYPES`), optionally at another image size."""
    if isinstance(model_type, Sam2HieraConfig) or (isinstance(model_type, str) and model_type in SAM2_CONFIGS):
        return get_sam2_config(model_type, image_size)
    if isinstance(model_type, SamConfig) or model_type in SAM_CONFIGS:
        return get_sam_config(model_type, image_size)
    raise ValueError(f"model_type must be one of {[*SAM_CONFIGS, *SAM2_CONFIGS]}, got {model_type!r}")


def _arch_from_dict(data: Mapping[str, Any]) -> SamConfig | Sam2HieraConfig:
    """A saved architecture: SAM 2's is told apart by its per-stage widths."""
    return (Sam2HieraConfig if "embed_dim_per_stage" in data else SamConfig).from_dict(data)


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


@dataclass
class MSamConfig:
    """Everything needed to rebuild an mSAM (saved as JSON next to its weights by `save_msam`).

    Attributes:
        sam: the SAM architecture (`SamConfig`, or `Sam2HieraConfig` for an mSAM-2; `image_size` is the
            encoder's input side S).
        tasks: ordered task name -> output channels C_t.
        decomp: one of `DECOMPS`.
        ranks: the delta's ranks, resolved (None for the `NO_DELTA` baselines).
        qkv: which of q, k, v the deltas adapt (non-empty subset of "qkv"), in the "qkv" target.
        targets: which linears of every adapted block carry a delta (non-empty subset of `ENCODER_TARGETS`,
            kept in that order; default ("qkv",), the paper's). Must be the default for the `NO_DELTA` baselines.
        scale, dropout, init: passed to `tensoradapt.adapt`.
        train_norms: train the encoder's LayerNorms (ignored by "full", which trains everything, and
            "frozen", which trains none).
        checkpoint: absolute path of the SAM checkpoint the frozen weights came from (None: random or
            an in-memory state dict).
        grad_checkpointing: recompute each encoder block's activations in backward instead of storing
            them (activation checkpointing; trades ~1 extra encoder forward for memory).
        attention: the encoder's attention, "auto" (the default: "chunked" on CPUs, dense for calls below one
            chunk, "sdpa" elsewhere), "sdpa" (fused, relative positions folded into q / k), "chunked" (exact,
            blocks of query rows) or "sam" (segment-anything's own forward); "sdpa" and "chunked" never store
            the N x N matrix (see `tensoradapt.sam.attention`). Equal to float tolerance. On SAM 2: "auto" /
            "sdpa" is transformers' "sdpa", "sam" its "eager" reference kernel, in the encoder and decoders.
        shared_blocks: k, the task-shared trunk: the first k encoder blocks carry no delta and run once for
            the B images; the last depth - k blocks carry the task delta and run per task on the trunk's
            output (0, the default: every block adapted, the paper's model). SAM (ViT) encoders only.
        train_modules: encoder submodules or parameters, by dotted name inside the image encoder (e.g.
            ("patch_embed", "neck", "pos_embed", "blocks.0.attn.rel_pos_h")), that train in full beside the
            deltas, one copy shared by the tasks (like PEFT's `modules_to_save` with a single adapter). A name
            reaching an adapted projection is refused, and so is any for "full" (which trains everything) and
            "frozen" (which trains nothing). Default (): none.
    """

    sam: SamConfig | Sam2HieraConfig
    tasks: dict[str, int]
    decomp: str = "tucker"
    ranks: int | tuple[int, ...] | None = None
    qkv: str = "qkv"
    targets: tuple[str, ...] = ("qkv",)
    scale: float = 0.5
    dropout: float = 0.1
    train_norms: bool = True
    init: str = "paper"
    checkpoint: str | None = None
    grad_checkpointing: bool = False
    attention: str = "auto"
    shared_blocks: int = 0
    train_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.sam, Mapping):
            self.sam = _arch_from_dict(self.sam)
        if not isinstance(self.sam, (SamConfig, Sam2HieraConfig)):
            raise TypeError(f"sam must be a SamConfig or a Sam2HieraConfig, got {type(self.sam).__name__}")
        self.tasks = _check_tasks(self.tasks)
        if self.decomp not in msam_decomps():
            raise ValueError(f"decomp must be one of {list(msam_decomps())}, got {self.decomp!r}")
        if self.decomp in NO_DELTA:
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
        self.targets = parse_targets(self.targets)
        if self.qkv != "qkv" and "qkv" not in self.targets:
            raise ValueError(f"qkv {self.qkv!r} picks rows of the fused qkv, which targets {self.targets!r} does "
                             "not adapt: add 'qkv' to targets or leave qkv at 'qkv'")
        if self.decomp in NO_DELTA and self.targets != ("qkv",):
            raise ValueError(f"targets does not apply to decomp={self.decomp!r} (it has no task delta); leave it "
                             f"at the default ('qkv',), got {self.targets!r}")
        if not _is_number(self.scale) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        self.scale = float(self.scale)
        self.dropout = check_dropout(self.dropout)
        if not isinstance(self.train_norms, bool):
            raise TypeError(f"train_norms must be a bool, got {self.train_norms!r}")
        check_init(self.init)
        if not isinstance(self.grad_checkpointing, bool):
            raise TypeError(f"grad_checkpointing must be a bool, got {self.grad_checkpointing!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "chunked" and not isinstance(self.sam, SamConfig):
            raise ValueError("attention 'chunked' applies to SAM (ViT) encoders only (SAM 2's Hiera has no "
                             "decomposed relative positions); use 'auto', 'sdpa' or 'sam'")
        self._check_shared_blocks()
        self.train_modules = parse_train_modules(self.train_modules)
        if self.train_modules and self.decomp in ("full", "frozen"):
            raise ValueError(f"train_modules does not apply to decomp={self.decomp!r} (\"full\" trains the whole "
                             f"encoder, \"frozen\" none of it); got {self.train_modules!r}")

    def _check_shared_blocks(self) -> None:
        k = self.shared_blocks
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"shared_blocks must be an int >= 0, got {k!r}")
        if k and not isinstance(self.sam, SamConfig):
            raise ValueError("shared_blocks applies to SAM (ViT) encoders only, not to SAM 2's Hiera")
        if k and k >= self.sam.encoder_depth:
            raise ValueError(f"shared_blocks must be below the encoder depth {self.sam.encoder_depth} (at least "
                             f"one block must carry the task delta), got {k}")

    @property
    def has_delta(self) -> bool:
        """False for the `NO_DELTA` baselines (no task delta in the encoder)."""
        return self.decomp not in NO_DELTA

    @property
    def task_agnostic(self) -> bool:
        """True when the encoder is the same for every task (it then runs once per batch)."""
        return is_task_agnostic(self.decomp)

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


def parse_targets(targets: str | Any) -> tuple[str, ...]:
    """"qkv,mlp" or a sequence of names -> a tuple in `ENCODER_TARGETS` order; raises ValueError naming targets."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else targets
    try:
        names = list(names)
    except TypeError:
        raise ValueError(f"targets must be a non-empty subset of {ENCODER_TARGETS}, got {targets!r}") from None
    bad = [t for t in names if t not in ENCODER_TARGETS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"targets must be a non-empty subset of {ENCODER_TARGETS} without repeats, got {targets!r}")
    return tuple(t for t in ENCODER_TARGETS if t in names)


def parse_train_modules(names: str | Any) -> tuple[str, ...]:
    """"patch_embed,neck" or a sequence of dotted module or parameter names -> a tuple (order kept); "" or () -> ().
    Raises ValueError naming train_modules. Whether each name exists is checked when the model is built."""
    items = [t.strip() for t in names.split(",") if t.strip()] if isinstance(names, str) else names
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"train_modules must be dotted module names like 'patch_embed,neck', got {names!r}") from None
    bad = [t for t in items if not isinstance(t, str) or not all(part.isidentifier() or part.isdigit()
                                                                     for part in t.split("."))]
    if bad or len(set(items)) != len(items):
        raise ValueError(f"train_modules must be distinct dotted module names like 'patch_embed' or "
                         f"'blocks.0.norm1', got {names!r}")
    return tuple(items)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_tasks(tasks: Any) -> dict[str, int]:
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
