"""What every mSAM shares, whichever SAM it wraps: the tasks, what trains, and the mixed-task forward.

    images (B, 3, H, W) in [0, 1] -> preprocess -> encoder input (B, 3, S, S)
      -> the encoder once, as one mixed-task batch of T'*B samples (task-major: rows [k*B, (k+1)*B) are the
         k-th requested task), or once on the B images when it is task-agnostic
      -> per task t: its C_t no-mask embeddings and its own mask decoder -> low-resolution logits (B, C_t, h, w)
      -> postprocess (one resize for all tasks' channels) -> {task name: logits (B, C_t, H, W)}

`MultiTaskSAMBase` holds that skeleton; `MultiTaskSAM` (segment-anything) and `MultiTaskSAM2` (transformers'
SAM 2) build `image_encoder`, `decoders` and `no_mask_embeds` and supply the host-specific steps.
`encode_task_batch` routes the requested tasks to an adapted encoder for one run of it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..deltas import repeated_task_ids
from ..inject import adapt, mark_trainable, task_deltas, task_linears, task_projections, task_scope
from .config import MSamConfig
from .encoder import run_block

__all__ = ["MultiTaskSAMBase", "encode_task_batch", "run_block"]

Features = TypeVar("Features", Tensor, tuple[Tensor, ...])


def encode_task_batch(
    encoder: nn.Module,
    run: Callable[[Tensor, int], Features],
    x: Tensor,
    task_indices: Sequence[int],
    has_delta: bool,
    task_agnostic: bool,
) -> Features:
    """`run(x, repeats)` with the requested tasks routed to `encoder`'s adapted layers.

    `run` maps the B images x to `repeats` task-major copies of the encoder's output(s). Without a delta,
    or when the encoder is task-agnostic or one task is requested, it runs once (repeats = 1); otherwise
    the T' = len(task_indices) tasks run as one batch of T'*B samples whose per-sample ids are each task
    repeated B times. A multi-task batch on a merged encoder is refused (a merged layer would silently
    apply its one task's weights to every sample).
    """
    if not has_delta:
        return run(x, 1)
    if task_agnostic or len(task_indices) == 1:
        with task_scope(encoder, 0 if task_agnostic else int(task_indices[0])):
            return run(x, 1)
    merged = {layer.merged_task for _, layer in task_linears(encoder)} - {None}
    if merged:
        raise RuntimeError(
            f"the encoder is merged for task {sorted(merged)}: call tensoradapt.unmerge_adapters(model) "
            "before a multi-task forward (or request that task only)"
        )
    ids = repeated_task_ids(task_indices, x.shape[0], x.device)  # no host sync, unlike ids built from a list
    with task_scope(encoder, ids):
        return run(x, len(task_indices))


def _task_rows(features: Features, k: int, batch: int) -> Features:
    """The k-th task's rows of a task-major encoder output (all rows when it holds one batch)."""
    if isinstance(features, tuple):
        return tuple(_task_rows(f, k, batch) for f in features)
    return features if features.shape[0] == batch else features[k * batch:(k + 1) * batch]


class MultiTaskSAMBase(nn.Module):
    """A SAM without a prompt encoder: one (adapted) image encoder, per-task no-mask embeddings and decoders.

    Subclasses set `image_encoder`, call `_build_task_heads` and `_adapt_encoder`, and define `preprocess`,
    `_encode`, `image_pe`, `decode`, `postprocess`, `trained_decoder_parts`, `encoder_norms` and
    `load_sam_checkpoint` (with `_load_plain_state`); `forward`, `encode`, the task bookkeeping and the
    trainable set live here.
    """

    def __init__(self, msam_config: MSamConfig, arch: type) -> None:
        super().__init__()
        if not isinstance(msam_config, MSamConfig):
            raise TypeError(f"msam_config must be an MSamConfig, got {type(msam_config).__name__}")
        if not isinstance(msam_config.sam, arch):
            raise TypeError(
                f"{type(self).__name__} needs msam_config.sam to be a {arch.__name__}, got "
                f"{type(msam_config.sam).__name__} (build_msam picks the model class for a config)"
            )
        self.msam_config = msam_config
        self.config = msam_config.sam
        self._task_index = {name: i for i, name in enumerate(msam_config.tasks)}

    def _build_task_heads(self, build_decoder: Callable[[], nn.Module], dim: int) -> None:
        """`decoders` (one decoder copied into every task) and `no_mask_embeds` (C_t copies of one (1, D) draw)."""
        self.decoders = nn.ModuleDict({name: build_decoder() for name in self.msam_config.tasks})
        no_mask = torch.randn(1, dim)  # SAM's nn.Embedding init, shared by every channel as a checkpoint's is
        self.no_mask_embeds = nn.ParameterDict({
            name: nn.Parameter(no_mask.expand(c, dim).clone()) for name, c in self.msam_config.tasks.items()
        })
        first = next(iter(self.decoders.values()))
        for dec in self.decoders.values():  # one SAM decoder copied into every task, as from a checkpoint
            if dec is not first:
                dec.load_state_dict(first.state_dict())

    #: each of `ENCODER_TARGETS` -> its linears in one encoder block (names relative to the block)
    TARGET_LINEARS: dict[str, tuple[str, ...]] = {}

    def _adapt_encoder(self, blocks: Sequence[str]) -> None:
        """Put the config's task delta into the `targets` linears of the named `image_encoder` blocks (nothing
        for the baselines); the fused qkv gets the `qkv` rows, every other linear a delta over all its rows."""
        c = self.msam_config
        if not c.has_delta:
            return
        options = dict(decomp=c.decomp, num_tasks=len(c.tasks), ranks=c.ranks, scale=c.scale, dropout=c.dropout,
                       init=c.init)
        if "qkv" in c.targets:
            adapt(self.image_encoder, [f"{b}.{n}" for b in blocks for n in self.TARGET_LINEARS["qkv"]],
                  qkv=c.qkv, **options)
        others = [f"{b}.{n}" for b in blocks for t in c.targets if t != "qkv" for n in self.TARGET_LINEARS[t]]
        if others:
            adapt(self.image_encoder, others, **options)

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

    def _refuse_if_adapted(self) -> None:
        if any(True for _ in task_deltas(self)):
            raise RuntimeError("load_sam_checkpoint must run before the encoder is adapted (qkv wrapped)")

    @torch.no_grad()
    def _load_plain_state(self, state: Mapping[str, Tensor], encoder_prefix: str, no_mask: Tensor) -> None:
        """Load a fitted SAM state into the plain modules: `encoder_prefix`* into `image_encoder`, the
        `mask_decoder.`* tensors into every task's decoder, `no_mask` (1, D) into every no-mask embedding."""
        self._refuse_if_adapted()
        enc = {k[len(encoder_prefix):]: v for k, v in state.items() if k.startswith(encoder_prefix)}
        dec = {k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")}
        self.image_encoder.load_state_dict(enc, strict=True)
        for decoder in self.decoders.values():
            decoder.load_state_dict(dec, strict=True)
        for emb in self.no_mask_embeds.values():
            emb.copy_(no_mask.expand_as(emb))

    # ----------------------------------------------------------------------------- what trains
    def trained_decoder_parts(self, decoder: nn.Module) -> list[nn.Module]:
        """The parts of one task's decoder that train (those that get a gradient from mask token 0)."""
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """The modules (besides the deltas and no-mask embeddings) whose parameters train: every task's
        `trained_decoder_parts`; the whole encoder for "full", else its norms if `train_norms` (not "frozen")."""
        c = self.msam_config
        mods = [part for dec in self.decoders.values() for part in self.trained_decoder_parts(dec)]
        if c.decomp == "full":
            mods.append(self.image_encoder)
        elif c.train_norms and c.decomp != "frozen":
            mods += self.encoder_norms()
        return mods

    def train_modules(self) -> list[nn.Parameter]:
        """The encoder parameters named by the config's `train_modules`: every parameter of a named submodule
        (e.g. "neck"), or a named parameter itself (e.g. "pos_embed", "blocks.0.attn.rel_pos_h"). Raises
        ValueError naming one that does not exist or that reaches an adapted projection (its frozen base would
        train under the delta)."""
        enc = self.image_encoder
        adapted = tuple(f"{n}." for n, _ in task_projections(enc))
        params: list[nn.Parameter] = []
        for name in self.msam_config.train_modules:
            try:
                named = [(f"{name}.{n}", p) for n, p in enc.get_submodule(name).named_parameters()]
            except AttributeError:
                try:
                    named = [(name, enc.get_parameter(name))]
                except AttributeError:
                    children = [n for n, _ in enc.named_children()]
                    raise ValueError(f"train_modules: the image encoder has no submodule or parameter {name!r} "
                                     f"(its children: {children})") from None
            if any(n.startswith(adapted) for n, _ in named) or f"{name}.".startswith(adapted):
                raise ValueError(f"train_modules: {name!r} holds a task delta; name a module or parameter "
                                 f"without one (e.g. 'patch_embed', 'neck', 'pos_embed' or a block's 'norm1')")
            params += [p for _, p in named]
        return params

    def encoder_norms(self) -> list[nn.Module]:
        """The encoder's normalisation layers (trained with `train_norms`)."""
        raise NotImplementedError

    def reset_trainable(self) -> int:
        """Set `requires_grad` as the builder does (see the subclass docstring); return #trainable."""
        ids = {id(p) for mod in self.trainable_modules() for p in mod.parameters()}
        ids |= {id(p) for p in self.train_modules()}
        ids |= {id(p) for p in self.no_mask_embeds.values()}
        return mark_trainable(self, extra=lambda _n, p: id(p) in ids)

    # ----------------------------------------------------------------------------- forward
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

    @staticmethod
    def _check_images(images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")

    def preprocess(self, images: Tensor, normalize: bool = True) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> the encoder input (B, 3, S, S) and the resized size (h, w) inside it."""
        raise NotImplementedError

    def _encode(self, x: Tensor, task_indices: Sequence[int]) -> Any:
        """x (B, 3, S, S) -> the decoders' input for B (task-agnostic / one task) or T'*B rows, task-major."""
        raise NotImplementedError

    def encode(self, images: Tensor, task: str, normalize: bool = True) -> Any:
        """The encoder output that `task`'s decoder reads, for (B, 3, H, W) images in [0, 1]."""
        (name,) = self._task_ids([task])
        x, _ = self.preprocess(images, normalize)
        return self._encode(x, [self._task_index[name]])

    def image_pe(self, device: torch.device | None = None) -> Tensor:
        raise NotImplementedError

    def decode(self, task: str, features: Any, image_pe: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def postprocess(self, masks: Tensor, resized: tuple[int, int], size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

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
        features = self._encode(x, [self._task_index[n] for n in names])
        pe = self.image_pe(x.device)
        low = [self.decode(name, _task_rows(features, k, B), pe) for k, name in enumerate(names)]
        full = self.postprocess(torch.cat(low, dim=1), resized, size)  # one resize for all tasks' channels
        return dict(zip(names, full.split([m.shape[1] for m in low], dim=1)))

    def extra_repr(self) -> str:
        c = self.msam_config
        return f"model_type={self.config.name!r}, tasks={c.tasks}, decomp={c.decomp!r}, ranks={c.ranks}"
