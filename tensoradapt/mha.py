"""`TaskMultiheadAttention`: torch's `nn.MultiheadAttention` with task deltas on its projections.

`nn.MultiheadAttention` keeps q / k / v in one packed `in_proj_weight (3E, E)` and hands its weights to a
functional kernel, so neither of its projections is an `nn.Linear` forward that a `TaskLinear` could wrap.
The adapted module takes over every parameter of the original under its own name (the state-dict keys do
not change) and adds `in_adapter` (a delta on the packed in-projection: any subset of the q / k / v rows)
and / or `out_adapter` (a delta on `out_proj`). Its forward is torch's `multi_head_attention_forward` step
for step, the frozen projections run exactly as torch runs them (a zero delta leaves the output
bit-identical), and each adapter adds its delta to its projection. Per-sample task ids route along the
batch whatever `batch_first` says. Once every adapter is merged, torch's own forward runs on the merged
weights (its fused fast path included).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .deltas import TaskDelta
from .layers import TaskProjection, keep_called, qkv_rows, refuse_nested

__all__ = ["TaskMultiheadAttention", "AttentionProjection"]

PROJECTIONS = ("in", "out")


class AttentionProjection(TaskProjection):
    """The task delta on one projection of a `TaskMultiheadAttention`: the packed in-projection (`"in"`:
    `in_proj_weight (3E, E)`, `in_proj_bias`) or the output projection (`"out"`: `out_proj.weight`, `.bias`).

    W and b stay the attention module's own parameters: they are read from it, never copied, so its
    state-dict keys stay and `merge` folds the delta into them in place. Arguments as `TaskProjection`.
    """

    def __init__(
        self,
        owner: nn.MultiheadAttention,
        which: str,
        delta: TaskDelta,
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
        rows: list[int] | None = None,
    ) -> None:
        if which not in PROJECTIONS:
            raise ValueError(f"which must be one of {PROJECTIONS}, got {which!r}")
        weight = owner.in_proj_weight if which == "in" else owner.out_proj.weight
        super().__init__(delta, tuple(weight.shape), scale, alpha, dropout, rows, f"the attention's {which}-projection")
        self.which = which
        object.__setattr__(self, "_owner", owner)  # a reference, not a submodule: the owner holds this module

    @property
    def weight(self) -> Tensor:
        return self._owner.in_proj_weight if self.which == "in" else self._owner.out_proj.weight

    @property
    def bias(self) -> Tensor | None:
        return self._owner.in_proj_bias if self.which == "in" else self._owner.out_proj.bias

    def _base(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.which}-projection, {super().extra_repr()}"


def _with_delta(adapter: AttentionProjection | None, y: Tensor, x: Tensor, lo: int = 0) -> Tensor:
    """y: (L, N, w), the frozen outputs of rows [lo, lo + w) for x: (L, N, d_in) in torch's sequence-first
    layout, plus the adapter's delta (computed batch-first, where per-sample task ids route)."""
    if adapter is None:
        return y
    return adapter.add_delta(y.transpose(0, 1), x.transpose(0, 1), lo).transpose(0, 1)


class TaskMultiheadAttention(nn.MultiheadAttention):
    """An `nn.MultiheadAttention` (same parameters, settings and state-dict keys) with task deltas on its
    packed in-projection (the rows of `qkv`) and / or its output projection; the adapted weights are frozen.

    Args:
        base: the attention to adapt, with one width for q, k and v (`kdim == vdim == embed_dim`, torch's
            default); its parameters are taken over, not copied.
        in_delta: a `TaskDelta` `(T, len(qkv) * E, E)` on the in-projection, or None.
        out_delta: a `TaskDelta` `(T, E, E)` on `out_proj`, or None.
        qkv: the parts of the in-projection `in_delta` covers (a non-empty subset of "qkv").
        scale / alpha / dropout: as `TaskLinear`'s, for both deltas.
    """

    def __init__(
        self,
        base: nn.MultiheadAttention,
        in_delta: TaskDelta | None = None,
        out_delta: TaskDelta | None = None,
        qkv: str = "qkv",
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        if not isinstance(base, nn.MultiheadAttention) or isinstance(base, TaskMultiheadAttention):
            raise TypeError(f"base must be a plain nn.MultiheadAttention, got {type(base).__name__}")
        if not base._qkv_same_embed_dim:
            raise ValueError(
                f"base has kdim={base.kdim}, vdim={base.vdim} besides embed_dim={base.embed_dim}: separate q / k / v "
                "weights have no packed in-projection to adapt (only kdim == vdim == embed_dim is supported)"
            )
        if in_delta is None and out_delta is None:
            raise ValueError("TaskMultiheadAttention needs in_delta, out_delta or both")
        nn.Module.__init__(self)  # not MultiheadAttention.__init__: the weights are base's, not fresh ones
        for key, value in vars(base).items():
            self.__dict__[key] = value.copy() if isinstance(value, dict) else value
        self.register_module("in_adapter", None)
        self.register_module("out_adapter", None)
        if in_delta is not None:
            self.add_adapter("in", in_delta, qkv=qkv, scale=scale, alpha=alpha, dropout=dropout)
        if out_delta is not None:
            self.add_adapter("out", out_delta, scale=scale, alpha=alpha, dropout=dropout)
        self.register_forward_pre_hook(keep_called)

    def add_adapter(
        self,
        which: str,
        delta: TaskDelta,
        qkv: str = "qkv",
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
    ) -> AttentionProjection:
        """Put `delta` on the in-projection (`which="in"`, rows of `qkv`) or on `out_proj` (`"out"`) and
        freeze that projection's weight and bias."""
        if which not in PROJECTIONS:
            raise ValueError(f"which must be one of {PROJECTIONS}, got {which!r}")
        if getattr(self, f"{which}_adapter") is not None:
            raise ValueError(f"the {which}-projection of this attention is adapted already")
        rows = qkv_rows(3 * self.embed_dim, qkv) if which == "in" else None
        adapter = AttentionProjection(self, which, delta, scale=scale, alpha=alpha, dropout=dropout, rows=rows)
        for p in (adapter.weight, adapter.bias):
            if p is not None:
                p.requires_grad_(False)
        setattr(self, f"{which}_adapter", adapter)
        return adapter

    def adapters(self) -> list[AttentionProjection]:
        return [a for a in (self.in_adapter, self.out_adapter) if a is not None]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As `nn.MultiheadAttention.forward`, with the routed tasks' deltas on the adapted projections."""
        adapters = self.adapters()
        if all(a.merged for a in adapters):  # the weights hold the deltas: torch's forward is exact
            for a in adapters:
                a._check_merged_routing(a.task)
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        for x in (query, key, value):
            refuse_nested(x, self)
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=query.dtype,
        )
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
            check_other=False,
        )
        if self.batch_first and is_batched:  # transposes that keep `query is key is value`, as torch's do
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        out, weights = self._attention(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
        return (out.transpose(1, 0) if self.batch_first and is_batched else out), weights

    def _attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """torch's `F.multi_head_attention_forward` on sequence-first inputs (L, N, E) (or unbatched (L, E)),
        with each adapter's delta added to its projection."""
        heads, head_dim = self.num_heads, self.head_dim
        is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, heads)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=query.dtype,
        )
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention takes the causal hint itself
        else:
            attn_mask = F._canonical_mask(
                mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
                check_other=False,
            )
            if key_padding_mask is not None:
                is_causal = False  # merged with the padding mask below: no longer causal
        if embed_dim != self.embed_dim:
            raise ValueError(f"query must have embed_dim={self.embed_dim} features, got {embed_dim}")
        if key.shape != value.shape:
            raise ValueError(f"key shape {tuple(key.shape)} does not match value shape {tuple(value.shape)}")

        q, k, v = self._in_projection(query, key, value)

        if attn_mask is not None:
            expected = (tgt_len, src_len) if attn_mask.dim() == 2 else (bsz * heads, tgt_len, src_len)
            if attn_mask.dim() not in (2, 3) or attn_mask.shape != expected:
                raise RuntimeError(f"attn_mask must have shape {expected}, got {tuple(attn_mask.shape)}")
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.unsqueeze(0)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        q = q.view(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.view(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.view(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * heads, 1, head_dim), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros.to(v.dtype)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.size(1)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise ValueError(
                    f"key_padding_mask must have shape {(bsz, src_len)}, got {tuple(key_padding_mask.shape)}"
                )
            key_padding_mask = (
                key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
            )
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                weights = weights.squeeze(0)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, heads, -1, src_len)
            q = q.view(bsz, heads, tgt_len, head_dim)
            k = k.view(bsz, heads, src_len, head_dim)
            v = v.view(bsz, heads, src_len, head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
            weights = None

        y = F.linear(out, self.out_proj.weight, self.out_proj.bias).view(tgt_len, bsz, -1)
        y = _with_delta(self.out_adapter, y, out.view(tgt_len, bsz, embed_dim))
        return (y if is_batched else y.squeeze(1)), weights

    def _in_projection(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """torch's packed in-projection (one GEMM for self-attention, q | kv for a shared key and value,
        else three) of q: (L, N, E), k, v: (S, N, E), with the in-adapter's delta on its rows."""
        E = q.size(-1)
        if k is v and q is k:
            proj = self._project_in(q, 0, 3)
            proj = proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return proj[0], proj[1], proj[2]
        if k is v:
            kv = self._project_in(k, 1, 3)
            kv = kv.unflatten(-1, (2, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return self._project_in(q, 0, 1), kv[0], kv[1]
        return self._project_in(q, 0, 1), self._project_in(k, 1, 2), self._project_in(v, 2, 3)

    def _project_in(self, x: Tensor, first: int, stop: int) -> Tensor:
        """Parts [first, stop) of q, k, v (0, 1, 2) of x: (L, N, E) -> (L, N, (stop - first) * E)."""
        w, b, E = self.in_proj_weight, self.in_proj_bias, self.embed_dim
        if (first, stop) != (0, 3):
            w, b = w[first * E:stop * E], None if b is None else b[first * E:stop * E]
        return _with_delta(self.in_adapter, F.linear(x, w, b), x, first * E)
