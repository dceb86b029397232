"""Put task deltas into any model, choose what trains, save and load adapters.

Task routing (`set_task`, `task_scope`, `enable_task_kwarg`) lives in `routing` and is re-exported here.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from torch import Tensor, nn

from ._utils import atomic_path, atomic_write_json, dataclass_kwargs, load_state_subset
from .deltas import TaskDelta, check_init, delta_class, make_delta
from .layers import TaskLinear, TaskProjection, check_dropout, qkv_rows, task_deltas, task_linears, task_projections
from .mha import TaskMultiheadAttention
from .routing import enable_task_kwarg, set_task, task_scope

__all__ = [
    "AdapterConfig", "adapt", "task_linears", "task_projections", "task_deltas", "set_task", "task_scope",
    "enable_task_kwarg", "mark_trainable", "count_parameters", "trainable_parameters_report",
    "adapter_state_dict", "load_adapter_state_dict", "save_adapter", "load_adapter",
    "merge_adapters", "unmerge_adapters", "set_merged_inference",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

Targets = str | Sequence[str] | Callable[[str, nn.Module], bool]


@dataclass
class AdapterConfig:
    """Everything `adapt` needs to rebuild the same deltas (serialised next to the weights)."""

    targets: str | list[str]
    decomp: str = "tucker"
    num_tasks: int = 1
    ranks: int | list[int] | tuple[int, ...] = (4, 32, 32)
    scale: float | None = None
    alpha: float | None = None
    dropout: float = 0.0
    init: str = "paper"
    qkv: str | None = None
    layers: list[str] = field(default_factory=list)
    freeze_base: bool = True

    def __post_init__(self) -> None:
        delta_class(self.decomp)  # a registered decomposition, or an error listing them
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int) or self.num_tasks <= 0:
            raise ValueError(f"num_tasks must be a positive int, got {self.num_tasks!r}")
        check_init(self.init)
        self.dropout = check_dropout(self.dropout)
        if not isinstance(self.freeze_base, bool):
            raise TypeError(f"freeze_base must be a bool, got {self.freeze_base!r}")
        if isinstance(self.ranks, list):
            self.ranks = tuple(self.ranks)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        return cls(**dataclass_kwargs(cls, json.loads(text)))


def _matcher(targets: Targets) -> Callable[[str, nn.Module], bool]:
    """PEFT's `target_modules` semantics: a str is a full-name regex; a list matches names or suffixes."""
    if callable(targets):
        return targets
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return lambda name, _m: pattern.fullmatch(name) is not None
    names = list(targets)
    if not names:
        raise ValueError("targets must not be empty")
    return lambda name, _m: any(name == t or name.endswith("." + t) for t in names)


def _batch_dim(model: nn.Module, name: str) -> int:
    """1 for a linear inside torch's sequence-first transformer layers (inputs (S, B, d): per-sample task ids
    route along dim 1), else 0 (batch-leading)."""
    parts = name.split(".")
    for k in range(len(parts) - 1, -1, -1):
        parent = model.get_submodule(".".join(parts[:k])) if k else model
        if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            return 0 if parent.self_attn.batch_first else 1
    return 0


def adapt(
    model: nn.Module,
    targets: Targets,
    decomp: str = "tucker",
    num_tasks: int = 1,
    ranks=(4, 32, 32),
    scale: float | None = None,
    alpha: float | None = None,
    dropout: float = 0.0,
    init: str = "paper",
    qkv: str | None = None,
    freeze_base: bool = True,
) -> nn.Module:
    """Put task deltas into the modules of `model` that `targets` names (in place); return `model`.

    A matching `nn.Linear` becomes a `TaskLinear`. A matching `nn.MultiheadAttention` (torch's, whose q / k / v
    share one `in_proj_weight`) becomes a `TaskMultiheadAttention` with a delta on its packed in-projection;
    when its `out_proj` matches too (or alone), `out_proj` gets a delta as well. torch's fused
    `TransformerEncoder` / `TransformerEncoderLayer` fast paths never bypass an adapted module (see
    `layers.keep_called`; the encoders met here stop packing padded batches into nested tensors).

    Args:
        targets: a regex matched against full module names, a list of names/suffixes (PEFT style), or a
            predicate `(name, module) -> bool`.
        decomp: a registered decomposition (`DECOMPS`: "cp", "tucker", "tt", "lora", "shared-lora", ...).
        num_tasks: T.
        ranks: the decomposition's ranks (see each delta class).
        scale / alpha: delta multiplier; `scale` wins, else `alpha / rank`, else 1.
        dropout: dropout on the delta input.
        init: "paper" or "orthonormal" (both start at a zero delta).
        qkv: the parts of a fused [q; k; v] projection to adapt (e.g. "qv"): of each matched attention's
            in-projection (None: all three), and of each matched `nn.Linear`, then taken to be a fused qkv
            linear (None: the whole linear). An attention's `out_proj` is never split.
        freeze_base: set `requires_grad=False` on every parameter of `model` that is not a task delta, as
            PEFT's `get_peft_model` does (`mark_trainable` picks extras afterwards); False leaves them as they
            are. The adapted projections' own weights are frozen either way.
    """
    if not callable(targets) and not isinstance(targets, str):
        targets = list(targets)
    config = AdapterConfig(
        targets=targets if not callable(targets) else "<callable>", decomp=decomp,
        num_tasks=num_tasks, ranks=ranks, scale=scale, alpha=alpha, dropout=dropout, init=init, qkv=qkv,
        freeze_base=freeze_base,
    )
    linears, attention = _resolve_targets(model, _matcher(targets))
    if not linears and not attention:
        raise ValueError(f"targets {targets!r} matched no module of {type(model).__name__}")

    def new_delta(d_out: int, d_in: int, like: Tensor) -> TaskDelta:
        delta = make_delta(decomp, (num_tasks, d_out, d_in), ranks, init=init)
        return delta.to(device=like.device, dtype=like.dtype)

    options = dict(scale=scale, alpha=alpha, dropout=dropout)
    replacements: dict[str, nn.Module] = {}  # swapped in once all are built: a bad target changes nothing
    for name in linears:
        linear = model.get_submodule(name)
        rows = qkv_rows(linear.out_features, qkv) if qkv is not None else None
        delta = new_delta(linear.out_features if rows is None else len(rows), linear.in_features, linear.weight)
        replacements[name] = TaskLinear(linear, delta, rows=rows, **options)
        replacements[name].batch_dim = _batch_dim(model, name)
        config.layers.append(name)
    for name, parts in attention.items():
        mha = model.get_submodule(name)
        E, parts_in = mha.embed_dim, qkv or "qkv"
        n_in = len(qkv_rows(3 * E, parts_in) or range(3 * E))
        deltas = {
            which: new_delta(n_in if which == "in" else E, E, mha.out_proj.weight)
            for which in ("in", "out") if which in parts and getattr(mha, f"{which}_adapter", None) is None
        }
        if isinstance(mha, TaskMultiheadAttention):  # adapted before: add the projection it lacks
            for which, delta in deltas.items():
                mha.add_adapter(which, delta, qkv=parts_in, **options)
        elif deltas:
            replacements[name] = TaskMultiheadAttention(
                mha, deltas.get("in"), deltas.get("out"), qkv=parts_in, **options
            )
        config.layers += [name] * ("in" in deltas) + [f"{name}.out_proj"] * ("out" in deltas)
    if not config.layers:
        raise ValueError(f"targets {targets!r} matched only modules of {type(model).__name__} adapted before")
    for name, module in replacements.items():
        _set_submodule(model, name, module)
    _keep_encoders_unpacked(model)
    if freeze_base:
        deltas = {id(p) for _, d in task_deltas(model) for p in d.parameters()}
        for p in model.parameters():
            if id(p) not in deltas:
                p.requires_grad_(False)
    existing: list[AdapterConfig] = getattr(model, "tensoradapt_configs", [])
    model.tensoradapt_configs = existing + [config]
    return model


def _resolve_targets(
    model: nn.Module, match: Callable[[str, nn.Module], bool],
) -> tuple[list[str], dict[str, set[str]]]:
    """The matched linears, and the matched attentions with their projections to adapt ({"in", "out"}).

    The insides of adapted projections (a TaskLinear's base, a delta) are never targets.
    """
    linears: list[str] = []
    attention: dict[str, set[str]] = {}
    adapted: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(a + ".") for a in adapted):
            continue
        if isinstance(module, TaskProjection):
            adapted.append(name)
            continue
        if not match(name, module):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(module, nn.MultiheadAttention):
            attention.setdefault(name, set()).add("in")
        elif isinstance(module, nn.Linear) and isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
            if not parent_name:
                raise ValueError(
                    f"target {name!r} is the out_proj of the model itself: adapt a module that holds the "
                    "nn.MultiheadAttention (its forward, not out_proj's, has to change)"
                )
            attention.setdefault(parent_name, set()).add("out")
        elif isinstance(module, nn.Linear):
            linears.append(name)
        else:
            raise TypeError(
                f"target {name!r} is a {type(module).__name__}, not an nn.Linear or nn.MultiheadAttention"
            )
    return linears, attention


def _keep_encoders_unpacked(model: nn.Module) -> None:
    """torch's `TransformerEncoder` packs a padded batch into a nested tensor in eval mode without autograd;
    adapted layers take padded tensors, so an encoder holding one stops packing (same results)."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(True for _ in task_projections(module)):
            module.use_nested_tensor = False


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def mark_trainable(
    model: nn.Module,
    extra: Iterable[nn.Module] | str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None = None,
) -> int:
    """Freeze everything but the task deltas (and `extra`); return the number of trainable params.

    `extra` may be modules, a regex (or list of regexes) over parameter names, or a predicate
    `(name, param) -> bool`.
    """
    model.requires_grad_(False)
    for _, delta in task_deltas(model):
        delta.requires_grad_(True)
    if extra is not None:
        if callable(extra) and not isinstance(extra, nn.Module):
            for n, p in model.named_parameters():
                if extra(n, p):
                    p.requires_grad_(True)
        elif isinstance(extra, str) or (
            isinstance(extra, (list, tuple)) and extra and all(isinstance(e, str) for e in extra)
        ):
            patterns = [re.compile(e) for e in ([extra] if isinstance(extra, str) else extra)]
            for n, p in model.named_parameters():
                if any(pt.search(n) for pt in patterns):
                    p.requires_grad_(True)
        else:
            for m in [extra] if isinstance(extra, nn.Module) else extra:
                m.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable / total / delta parameter counts and the deltas' compression ratios."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    deltas = [d for _, d in task_deltas(model)]
    n_delta = sum(d.num_parameters for d in deltas)
    dense = sum(d.num_parameters * d.compression_ratio("dense") for d in deltas)
    lora = sum(d.num_parameters * d.compression_ratio("lora") for d in deltas)
    return {
        "trainable": trainable,
        "total": total,
        "delta": n_delta,
        "vs_dense": dense / n_delta if n_delta else float("nan"),
        "vs_lora": lora / n_delta if n_delta else float("nan"),
    }


def trainable_parameters_report(model: nn.Module) -> str:
    """A PEFT-style one-liner plus the deltas' size against T independent LoRAs and dense deltas."""
    c = count_parameters(model)
    line = (
        f"trainable params: {c['trainable']:,} || all params: {c['total']:,} || "
        f"trainable%: {100 * c['trainable'] / max(c['total'], 1):.4f}"
    )
    if c["delta"]:
        line += (
            f" || delta params: {c['delta']:,} ({c['vs_lora']:.2f}x smaller than T independent LoRAs "
            f"at the same rank, {c['vs_dense']:.1f}x smaller than T dense deltas)"
        )
    return line


# ----------------------------------------------------------------------------- state
def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The deltas' parameters only, keyed by their names in `model`."""
    out = {}
    for name, delta in task_deltas(model):
        for pname, p in delta.named_parameters():
            out[f"{name}.{pname}"] = p.detach()
    return out


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load delta parameters strictly: missing, unexpected or mis-shaped keys raise `StateMismatchError`
    (a KeyError) naming them, before anything is copied."""
    load_state_subset(model, state, keys=adapter_state_dict(model), source="adapter state")


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` into `directory` (atomically)."""
    from safetensors.torch import save_file

    configs: list[AdapterConfig] = getattr(model, "tensoradapt_configs", [])
    if not configs:
        raise ValueError("model has no adapter config: adapt it with tensoradapt.adapt(...) first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(directory / ADAPTER_CONFIG, [dataclasses.asdict(c) for c in configs])
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Adapt `model` as the saved config says (if not yet adapted) and load the saved deltas."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"adapter directory {directory} lacks {p.name} (written by save_adapter)")
    configs = [AdapterConfig.from_json(json.dumps(c)) for c in json.loads(cfg_path.read_text())]
    if not any(True for _ in task_projections(model)):
        for c in configs:
            adapt(
                model, targets=list(c.layers), decomp=c.decomp, num_tasks=c.num_tasks, ranks=c.ranks,
                scale=c.scale, alpha=c.alpha, dropout=c.dropout, init=c.init, qkv=c.qkv, freeze_base=c.freeze_base,
            )
        model.tensoradapt_configs = configs
    load_adapter_state_dict(model, load_file(str(w_path)))
    return model


def merge_adapters(model: nn.Module, task: int) -> None:
    """`merge(task)` on every adapted projection (single-task inference at the cost of the base model)."""
    for _, layer in task_projections(model):
        layer.merge(task)


def unmerge_adapters(model: nn.Module) -> None:
    """`unmerge()` on every adapted projection: the base weights come back bit-exactly."""
    for _, layer in task_projections(model):
        layer.unmerge()


def set_merged_inference(model: nn.Module, enabled: bool = True) -> None:
    """Under `torch.no_grad()`, run `TaskLinear`s with cached per-task merged weights (an adapted
    `nn.MultiheadAttention` keeps its factored forward; `merge_adapters` serves one task at the base cost).

    A forward then costs the plain model's GEMMs for every task (mixed-task batches run one GEMM per
    run of same-task samples). The cache holds T weights per layer and is rebuilt whenever a parameter
    changes (an optimiser step, `load_state_dict`). Training forwards (grad enabled) are unaffected.
    """
    for _, layer in task_linears(model):
        layer.merged_inference = enabled
        if not enabled:
            layer._cache = None
