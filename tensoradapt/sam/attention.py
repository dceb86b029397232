"""SAM's encoder attention without the N x N matrix, two ways; "auto" picks the faster one per device.

segment-anything's `Attention` computes, per head, with N = H * W tokens of head width c and s = c^-1/2,

    logits[i, j] = s q_i . k_j + q_i . R_h[h_i, h_j] + q_i . R_w[w_i, w_j]        (mvitv2's decomposed rel-pos)

and keeps softmax(logits), (N, N), for backward: ~0.8 GB per sample and global block at ViT-B 1024^2 (4096
tokens, 12 heads). Both replacements compute the two bias terms as bias_h[i, m] = q_i . R_h[h_i, m] (N, H) and
bias_w (N, W), O(N (H + W)) per head, and never build the (N, N) bias or probabilities:

- "sdpa": the logits are one dot product of wider vectors,

      q'_i = [s q_i,  bias_h[i, :],  bias_w[i, :]]        k'_j = [k_j,  onehot_H(h_j),  onehot_W(w_j)]      (c + H + W)

  so PyTorch's fused `scaled_dot_product_attention` (scale 1) computes them. The fused kernels want one head
  width for q, k and v, so v is zero-padded to it (and every width to a multiple of 8) and the padding sliced off
  the output. Fastest on CUDA; on a CPU the ~3x wider products cost more than they save.
- "chunked": `rel_pos_attention`, exact logits in blocks of query rows with a flash-style recomputing backward.
  Faster than segment-anything's own attention on a CPU.
- "auto" (the default): "sdpa" for non-CPU tensors; on a CPU, "chunked" when a call's logits over all its
  (batch x heads) would fill more than one chunk (`DENSE_MAX_ELEMENTS`), else the plain dense formula (float32
  at least, like the kernel), which keeps that one chunk's worth of probabilities per call for backward and
  skips the kernel's recomputation (the tiny SAM's global blocks: 0.73x the kernel's time). Decided per call
  from the device type and shapes, no host sync.

`set_attention(encoder, kind)` swaps the class of every block's `attn` for a subclass whose forward does this;
parameters, state-dict keys and the wrapped (possibly adapted) `qkv` / `proj` are untouched, and
`set_attention(encoder, "sam")` swaps back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._import import sam_modeling
from .rel_pos_attention import CHUNK_ELEMENTS, rel_pos_attention

__all__ = ["ATTENTIONS", "set_attention", "memory_efficient_attention", "DENSE_MAX_ELEMENTS"]

#: "auto" on a CPU computes a call densely when its (batch x heads, N, N) logits hold at most this many values
#: (one chunk of the "chunked" kernel: chunking would save nothing), else with the chunked kernel
DENSE_MAX_ELEMENTS = CHUNK_ELEMENTS

#: "auto": "chunked" on CPUs (dense for calls that fit one chunk), "sdpa" elsewhere; "sdpa": fused attention
#: with folded relative positions; "chunked": exact blocks of query rows; "sam": segment-anything's own forward
#: (stores N x N).
ATTENTIONS = ("auto", "sdpa", "chunked", "sam")


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def memory_efficient_attention(attn: nn.Module, x: Tensor, kind: str = "auto", get_rel_pos=None) -> Tensor:
    """segment-anything `Attention.forward` without the N x N matrix: x (B, H, W, dim) -> (B, H, W, dim).

    `kind`: "sdpa", "chunked" or "auto" (module docstring; it builds the matrix only for calls that fit one
    chunk). `get_rel_pos`: segment-anything's `get_rel_pos`
    (looked up when None; the swapped class passes the one it captured, so a compiled forward does no import
    lookups).
    """
    B, H, W, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, c)
    q, k, v = qkv.unbind(0)
    c = q.shape[-1]
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        get_rel_pos = get_rel_pos or sam_modeling().image_encoder.get_rel_pos
        rel_h = _relative_table(H, attn.rel_pos_h, get_rel_pos).to(q.dtype)  # (H, H, c): R_h[h_i, h_j]
        rel_w = _relative_table(W, attn.rel_pos_w, get_rel_pos).to(q.dtype)  # (W, W, c)
        grid_q = q.reshape(B, heads, H, W, c)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_h).reshape(B, heads, H * W, H)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_w).reshape(B, heads, H * W, W)
        if kind == "auto":
            kind = _auto_kind(q)
        if kind == "dense":
            out = _dense(q * attn.scale, k, v, bias_h, bias_w, H, W)
        elif kind == "chunked":
            flat = [t.reshape(B * heads, H * W, -1) for t in (q * attn.scale, k, v, bias_h, bias_w)]
            out = rel_pos_attention(*flat).view(B, heads, H * W, c)
        else:
            out = _folded_sdpa(q * attn.scale, k, v, bias_h, bias_w, H, W)
    out = out.permute(0, 2, 1, 3).reshape(B, H, W, heads * c)
    return attn.proj(out)


def _auto_kind(q: Tensor) -> str:
    """What "auto" runs for q (B, heads, N, c): "sdpa" off CPUs; on a CPU "dense" if the logits fit one chunk."""
    if q.device.type != "cpu":
        return "sdpa"
    B, heads, N, _ = q.shape
    return "dense" if B * heads * N * N <= DENSE_MAX_ELEMENTS else "chunked"


def _dense(q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor, bias_w: Tensor, H: int, W: int) -> Tensor:
    """softmax(q k^T + bias) v with the (N, N) probabilities built and kept for backward; computed in float32 at
    least, outside autocast, as the chunked kernel is (so "auto" gives the same precision at every size); q is
    pre-scaled. (B, heads, N, c) -> same, in v's dtype."""
    B, heads, N, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v32, bias_h, bias_w = (t.to(acc) for t in (q, k, v, bias_h, bias_w))
        logits = (q @ k.transpose(-2, -1)).view(B, heads, N, H, W) + bias_h[..., :, None] + bias_w[..., None, :]
        return (logits.view(B, heads, N, N).softmax(-1) @ v32).to(v.dtype)


def _folded_sdpa(q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor, bias_w: Tensor, H: int, W: int) -> Tensor:
    """Fused SDPA of the folded q' / k' (module docstring); q is pre-scaled. (B, heads, N, c) -> same."""
    B, heads, _, c = q.shape
    onehot = _key_onehots(H, W, q.device, q.dtype).expand(B, heads, -1, -1)  # (B, heads, N, H + W)
    q, k = torch.cat([q, bias_h, bias_w], dim=-1), torch.cat([k, onehot], dim=-1)
    width = _round8(q.shape[-1])
    q, k = F.pad(q, (0, width - q.shape[-1])), F.pad(k, (0, width - k.shape[-1]))
    v = F.pad(v, (0, width - c))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :c]


def _relative_table(size: int, table: Tensor, get_rel_pos) -> Tensor:
    """(size, size, c): row i, column j is the table's entry for the offset i - j (entry i - j + size - 1 of a
    (2 size - 1, c) table). The indices are made on the table's device: indexing a CUDA table with CPU
    indices, as segment-anything's `get_rel_pos` does, copies them over and syncs the host every forward. A
    table of another length is resampled by `get_rel_pos` itself."""
    if table.shape[0] != 2 * size - 1:
        return get_rel_pos(size, size, table)
    pos = torch.arange(size, device=table.device)
    return table[pos[:, None] - pos[None, :] + (size - 1)]


def _key_onehots(H: int, W: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, 1, H*W, H + W): row j is [onehot(h_j), onehot(w_j)] for token j = h_j * W + w_j."""
    rows = torch.arange(H, device=device).repeat_interleave(W)
    cols = torch.arange(W, device=device).repeat(H)
    out = torch.cat([F.one_hot(rows, H), F.one_hot(cols, W)], dim=-1)
    return out.to(dtype)[None, None]


@functools.cache
def _attention_class(kind: str) -> type:
    image_encoder = sam_modeling().image_encoder

    class MemoryEfficientAttention(image_encoder.Attention):
        """segment-anything's Attention without the N x N matrix (module docstring of tensoradapt.sam.attention)."""

        attention_kind = kind
        _get_rel_pos = staticmethod(image_encoder.get_rel_pos)

        def forward(self, x: Tensor) -> Tensor:
            return memory_efficient_attention(self, x, self.attention_kind, self._get_rel_pos)

    MemoryEfficientAttention.__name__ = MemoryEfficientAttention.__qualname__ = f"{kind.capitalize()}Attention"
    return MemoryEfficientAttention


def set_attention(encoder: nn.Module, kind: str) -> int:
    """Use attention `kind` (`ATTENTIONS`) in every block of a segment-anything ImageEncoderViT.

    Returns the number of attention modules switched. Numerically all kinds agree to float tolerance
    (tests/test_sam_attention.py); all but "sam" never store the (N, N) attention matrix.
    """
    if kind not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
    base = sam_modeling().image_encoder.Attention
    target = base if kind == "sam" else _attention_class(kind)
    n = 0
    for module in encoder.modules():
        if isinstance(module, base):
            module.__class__ = target
            n += 1
    return n
