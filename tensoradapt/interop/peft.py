"""PEFT LoRA adapters in and out: T single-task LoRAs <-> one task delta per layer.

    model, report = from_peft(["lora_seg/", "lora_depth/", "lora_normal/"], base, decomp="tucker",
                              ranks=(3, 16, 16))          # compress T LoRAs into one shared tensor per layer
    print(report.summary())                                # parameters and relative error per layer
    to_peft(model, "export/")                              # export/task_0, ... load with PeftModel.from_pretrained

A PEFT LoRA folder holds `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<layer>.lora_A.weight` (r, d_in) and `...lora_B.weight` (d_out, r); task t's update of
`<layer>` is `scaling_t * B_t @ A_t` (`scaling = lora_alpha / r`, or `/ sqrt(r)` with rsLoRA, per-layer
alphas from `alpha_pattern`). `from_peft` stacks the T updates into `(T, d_out, d_in)` (zeros where an
adapter leaves a layer out) and fits the chosen decomposition with `TaskDelta.from_tensor`.
`to_peft` writes delta[t] of every adapted layer in LoRA form, `(scale * U_t) @ D_t` with `D_t` the delta's
task-t down-projection and `U_t` its up factor; for `LoRADelta` (LoRA-STL) that is exactly the stored A[t],
B[t]. Only plain LoRA on `nn.Linear` layers is read: DoRA, trained biases, `modules_to_save`, embedding /
conv LoRA and transposed (`fan_in_fan_out`) weights raise an error naming the setting. The `peft` package is
not needed to read or write these folders.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._utils import atomic_path, atomic_write_json
from ..deltas import DELTA_CLASSES, TaskDelta, make_delta
from ..fit import pad_to
from ..inject import adapt, task_linears
from ..layers import TaskLinear, task_projections

__all__ = [
    "PEFT_CONFIG", "PEFT_WEIGHTS", "PeftLoRA", "LayerFit", "PeftFitReport", "read_peft_lora", "lora_factors",
    "from_peft", "to_peft",
]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
#: config settings whose non-default value changes what the adapter computes beyond `scaling * B @ A`
_UNSUPPORTED = {
    "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "target_parameters": None, "trainable_token_indices": None, "layer_replication": None,
}


@dataclass(frozen=True)
class PeftLoRA:
    """One PEFT LoRA adapter: per layer `(A (r, d_in), B (d_out, r), scaling)`, and its dropout."""

    path: Path
    layers: dict[str, tuple[Tensor, Tensor, float]]
    dropout: float

    def update(self, name: str) -> Tensor:
        """`scaling * B @ A` of layer `name`, (d_out, d_in) in float64."""
        A, B, scaling = self.layers[name]
        return scaling * (B.double() @ A.double())


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's `rank_pattern` / `alpha_pattern` lookup: the first key matching a suffix of `name`."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_peft_lora(directory: str | Path) -> PeftLoRA:
    """Read a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`) on the CPU."""
    from safetensors.torch import load_file

    path = Path(directory)
    for f in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (path / f).is_file():
            raise FileNotFoundError(f"PEFT adapter folder {path} lacks {f} (as PeftModel.save_pretrained writes it)")
    config = json.loads((path / PEFT_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path / PEFT_CONFIG}: peft_type is {config.get('peft_type')!r}; only 'LORA' is read")
    for key, default in _UNSUPPORTED.items():
        if config.get(key, default) not in (default, [], {}):
            raise ValueError(
                f"{path / PEFT_CONFIG}: {key}={config[key]!r} is not supported (plain LoRA needs {key}={default!r})"
            )
    pairs: dict[str, dict[str, Tensor]] = {}
    foreign: list[str] = []
    for key, value in load_file(str(path / PEFT_WEIGHTS)).items():
        m = _KEY.match(key)
        if m is None or value.dim() != 2:
            foreign.append(key)
        else:
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
    if foreign:
        raise ValueError(
            f"{path / PEFT_WEIGHTS}: tensors that are not 2-D LoRA A/B weights of a linear layer: {sorted(foreign)[:8]}"
        )
    layers: dict[str, tuple[Tensor, Tensor, float]] = {}
    alpha, rslora = config.get("lora_alpha", 8), bool(config.get("use_rslora", False))
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path / PEFT_WEIGHTS}: layer {name!r} has lora_{''.join(ab)} without its partner")
        A, B = ab["A"], ab["B"]
        if A.shape[0] != B.shape[1]:
            raise ValueError(f"{path / PEFT_WEIGHTS}: layer {name!r} has A {tuple(A.shape)} and B {tuple(B.shape)}")
        r = A.shape[0]
        a = _pattern_value(config.get("alpha_pattern") or {}, name, alpha)
        layers[name] = (A, B, a / math.sqrt(r) if rslora else a / r)
    if not layers:
        raise ValueError(f"{path / PEFT_WEIGHTS} holds no LoRA weights")
    return PeftLoRA(path, layers, float(config.get("lora_dropout", 0.0)))


# ----------------------------------------------------------------------------- from_peft
@dataclass(frozen=True)
class LayerFit:
    """How well one layer's fitted delta reproduces the T LoRA updates."""

    name: str
    shape: tuple[int, int, int]
    ranks: object  #: of the fitted delta
    lora_ranks: tuple[int, ...]  #: per task; 0 where that adapter leaves the layer out
    num_parameters: int  #: of the fitted delta
    dense_norm: float  #: ||(T, d_out, d_in) updates||_F
    relative_error: float  #: ||fit - updates||_F / ||updates||_F

    @property
    def lora_parameters(self) -> int:
        return sum(r * (self.shape[1] + self.shape[2]) for r in self.lora_ranks)


@dataclass(frozen=True)
class PeftFitReport:
    """Per-layer fits of `from_peft`, with totals against the T LoRA adapters."""

    decomp: str
    layers: tuple[LayerFit, ...]

    @property
    def num_parameters(self) -> int:
        return sum(f.num_parameters for f in self.layers)

    @property
    def lora_parameters(self) -> int:
        return sum(f.lora_parameters for f in self.layers)

    @property
    def compression(self) -> float:
        """Parameters of the T LoRA adapters over those of the fitted deltas."""
        return self.lora_parameters / self.num_parameters

    @property
    def relative_error(self) -> float:
        """Relative Frobenius error over all layers' updates together."""
        num = sum((f.relative_error * f.dense_norm) ** 2 for f in self.layers)
        den = sum(f.dense_norm ** 2 for f in self.layers)
        return math.sqrt(num / den) if den > 0 else math.sqrt(num)

    def summary(self) -> str:
        width = max(len(f.name) for f in self.layers)
        head = f"{'(T, d_out, d_in)':>18}  {'ranks':>12}  {'LoRA params':>11}  {'params':>8}  rel. error"
        rows = [f"{'layer':<{width}}  {head}"]
        rows += [
            f"{f.name:<{width}}  {str(f.shape):>18}  {str(f.ranks):>12}  {f.lora_parameters:>11,}  "
            f"{f.num_parameters:>8,}  {f.relative_error:.3e}"
            for f in self.layers
        ]
        rows.append(
            f"{self.decomp}: {self.num_parameters:,} parameters for {self.lora_parameters:,} in the "
            f"{len(self.layers[0].lora_ranks)} LoRAs ({self.compression:.2f}x smaller), "
            f"relative error {self.relative_error:.3e}"
        )
        return "\n".join(rows)


def from_peft(
    adapter_dirs: Sequence[str | Path],
    model: nn.Module,
    decomp: str = "tucker",
    ranks=None,
    dropout: float = 0.0,
    **fit_kwargs,
) -> tuple[nn.Module, PeftFitReport]:
    """Adapt `model` with one `decomp` delta per layer fitted to T PEFT LoRA adapters of that base model.

    Task t is `adapter_dirs[t]`. Every layer any adapter targets gets a `TaskLinear` with `scale=1` whose
    delta is `TaskDelta.from_tensor(updates, ranks, **fit_kwargs)` of the stacked updates `(T, d_out, d_in)`.
    `ranks` is one value for all layers or a mapping layer name -> ranks (layers differ in size).
    `model` must be the plain base model (not wrapped by PEFT). Returns `(model, report)`.
    """
    if isinstance(adapter_dirs, (str, Path)) or not adapter_dirs:
        raise ValueError("adapter_dirs must be a non-empty list of PEFT adapter folders, one per task")
    if decomp not in DELTA_CLASSES:
        raise ValueError(f"decomp must be one of {sorted(DELTA_CLASSES)}, got {decomp!r}")
    adapters = [read_peft_lora(d) for d in adapter_dirs]
    names = sorted(set().union(*(a.layers for a in adapters)))
    modules = dict(model.named_modules())
    for name in names:
        owner = next(a.path for a in adapters if name in a.layers)
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            what = "no such module" if linear is None else f"a {type(linear).__name__}, not an nn.Linear"
            raise ValueError(f"adapter {owner} targets {name!r}: {what} in {type(model).__name__}")
        for a in adapters:
            if name in a.layers:
                A, B, _ = a.layers[name]
                if A.shape[1] != linear.in_features or B.shape[0] != linear.out_features:
                    raise ValueError(
                        f"adapter {a.path} layer {name!r}: A {tuple(A.shape)}, B {tuple(B.shape)} do not fit "
                        f"{linear} of the model (is it the same base model?)"
                    )
    per_layer = _ranks_per_layer(ranks, names)
    with torch.device("meta"):  # every rank checked before any layer is replaced
        for n in names:
            make_delta(decomp, (len(adapters), modules[n].out_features, modules[n].in_features), per_layer[n])
    for value in {repr(v): v for v in per_layer.values()}.values():  # one adapt call per distinct ranks
        group = [n for n in names if per_layer[n] == value]
        adapt(model, "|".join(re.escape(n) for n in group), decomp=decomp, num_tasks=len(adapters), ranks=value,
              scale=1.0, dropout=dropout)
    fits = []
    for name, layer in task_linears(model):
        if name not in names:
            continue  # adapted before this call
        w = layer.base.weight
        dense = torch.stack([
            a.update(name) if name in a.layers else torch.zeros(w.shape, dtype=torch.float64) for a in adapters
        ])
        fitted, err = type(layer.delta).from_tensor(dense, per_layer[name], **fit_kwargs)
        layer.delta.load_state_dict(fitted.to(device=w.device, dtype=w.dtype).state_dict())
        lora_ranks = tuple(a.layers[name][0].shape[0] if name in a.layers else 0 for a in adapters)
        fits.append(LayerFit(
            name, tuple(dense.shape), layer.delta.ranks, lora_ranks, layer.delta.num_parameters,
            float(torch.linalg.vector_norm(dense)), err,
        ))
    return model, PeftFitReport(decomp, tuple(fits))


def _ranks_per_layer(ranks, names: list[str]) -> dict[str, object]:
    """One ranks value for every layer, or a mapping layer name -> ranks that covers exactly `names`."""
    if ranks is None:
        raise ValueError("ranks must be given: one value for every layer or a mapping layer name -> ranks")
    if not isinstance(ranks, Mapping):
        return {n: ranks for n in names}
    missing, extra = sorted(set(names) - set(ranks)), sorted(set(ranks) - set(names))
    if missing or extra:
        raise ValueError(f"ranks mapping must name every adapted layer: missing {missing[:8]}, unknown {extra[:8]}")
    return {n: tuple(r) if isinstance(r, list) else r for n, r in ranks.items()}


# ----------------------------------------------------------------------------- to_peft
@torch.no_grad()
def lora_factors(delta: TaskDelta, task: int) -> tuple[Tensor, Tensor]:
    """`delta[task]` in LoRA form `(A (r, d_in), B (d_out, r))` with `B @ A == delta.matrix(task)`.

    A is the delta's task-`task` down-projection (applied to the identity), B its up factor; r is the
    delta's bottleneck (LoRA's r, CP's R, Tucker's r_out, TT's r2). Exact for every decomposition.
    """
    param = next(delta.parameters())
    eye = torch.eye(delta.d_in, dtype=param.dtype, device=param.device)
    return delta._down(eye, task).T.contiguous(), delta._up(task).contiguous()


def _dropout_p(layer: TaskLinear) -> float:
    return layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0


def to_peft(
    model: nn.Module, out_dir: str | Path, task_names: Sequence[str] | None = None,
    base_model_name_or_path: str | None = None,
) -> list[Path]:
    """Write every task of an adapted `model` as a PEFT LoRA folder `out_dir/<task name>`; return the folders.

    `PeftModel.from_pretrained(base, folder)` on the plain base model then computes task t's outputs.
    The delta's `scale` is folded into B and `lora_alpha = r` (PEFT scaling 1); layers of a smaller
    bottleneck are zero-padded to the largest r (a zero-padded LoRA is the same update).
    """
    from safetensors.torch import save_file

    layers = list(task_linears(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no TaskLinear: adapt it (tensoradapt.adapt) first")
    others = [name for name, p in task_projections(model) if not isinstance(p, TaskLinear)]
    if others:  # PEFT's LoRA format has no place for them: refuse rather than drop them silently
        raise ValueError(
            f"to_peft writes adapted nn.Linear layers only; {others[:4]} are adapted attention projections"
        )
    merged = [n for n, l in layers if l.merged]
    if merged:
        raise RuntimeError(f"layers {merged[:4]} are merged: call tensoradapt.unmerge_adapters(model) first")
    counts = {l.num_tasks for _, l in layers}
    if len(counts) > 1:
        raise ValueError(f"adapted layers disagree on the number of tasks: {sorted(counts)}")
    T = counts.pop()
    names = [f"task_{t}" for t in range(T)] if task_names is None else list(task_names)
    if len(names) != T or len(set(names)) != T or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"task_names must be {T} distinct non-empty names, got {task_names!r}")
    dropouts = {_dropout_p(l) for _, l in layers}
    if len(dropouts) > 1:
        raise ValueError(f"adapted layers use different dropouts {sorted(dropouts)}; PEFT has one lora_dropout")
    factors = {}
    for name, layer in layers:
        per_task = []
        for t in range(T):  # zero-padding a LoRA to a larger r leaves B @ A unchanged
            A, up = lora_factors(layer.delta, t)
            B = up.new_zeros(layer.out_features, up.shape[1])
            B[slice(None) if layer.rows is None else torch.tensor(layer.rows, device=B.device)] = layer.scale * up
            per_task.append((A, B))
        factors[name] = per_task
    r = max(A.shape[0] for per_task in factors.values() for A, _ in per_task)
    config = {
        "peft_type": "LORA", "task_type": None, "r": r, "lora_alpha": r, "lora_dropout": dropouts.pop(),
        "target_modules": "|".join(re.escape(n) for n in factors), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path,
    }
    out = Path(out_dir)
    folders = []
    for t, task in enumerate(names):
        state = {}
        for name, per_task in factors.items():
            A, B = per_task[t]
            state[f"base_model.model.{name}.lora_A.weight"] = pad_to(A, (r, A.shape[1])).cpu().contiguous()
            state[f"base_model.model.{name}.lora_B.weight"] = pad_to(B, (B.shape[0], r)).cpu().contiguous()
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / PEFT_WEIGHTS) as tmp:
            save_file(state, str(tmp))
        atomic_write_json(folder / PEFT_CONFIG, config)
        folders.append(folder)
    return folders
