"""SAM's encoder attention without the N x N matrix: relative positions folded into extra q / k channels.

segment-anything's `Attention` computes, per head, with N = H * W tokens of head width c and s = c^-1/2,

    logits[i, j] = s q_i . k_j + q_i . R_h[h_i, h_j] + q_i . R_w[w_i, w_j]        (mvitv2's decomposed rel-pos)

and keeps softmax(logits), (N, N), for backward: ~0.8 GB per sample and global block at ViT-B 1024^2 (4096
tokens, 12 heads). The same logits are one dot product of wider vectors,

    q'_i = [s q_i,  (q_i . R_h[h_i, m])_{m < H},  (q_i . R_w[w_i, n])_{n < W}]       (c + H + W)
    k'_j = [k_j,    onehot_H(h_j),                onehot_W(w_j)]

so PyTorch's fused `scaled_dot_product_attention` (scale 1; flash / memory-efficient kernels on CPU and CUDA)
computes it storing O(N (c + H + W)) per head. The fused kernels want one head width for q, k and v, so v is
zero-padded to it (and every width to a multiple of 8) and the padding sliced off the output.

`set_attention(encoder, "sdpa")` swaps the class of every block's `attn` for a subclass whose forward does this;
parameters, state-dict keys and the wrapped (possibly adapted) `qkv` / `proj` are untouched, and
`set_attention(encoder, "sam")` swaps back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._import import sam_modeling

__all__ = ["ATTENTIONS", "set_attention", "folded_rel_pos_attention"]

#: "sdpa": fused attention with folded relative positions; "sam": segment-anything's own forward.
ATTENTIONS = ("sdpa", "sam")


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def folded_rel_pos_attention(attn: nn.Module, x: Tensor, get_rel_pos=None) -> Tensor:
    """segment-anything `Attention.forward` via fused SDPA: x (B, H, W, dim) -> (B, H, W, dim).

    `get_rel_pos`: segment-anything's `get_rel_pos` (looked up when None; the swapped class passes the one it
    captured, so a compiled forward does no import lookups).
    """
    B, H, W, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, c)
    q, k, v = qkv.unbind(0)
    c = q.shape[-1]
    if attn.use_rel_pos:
        get_rel_pos = get_rel_pos or sam_modeling().image_encoder.get_rel_pos
        rel_h = _relative_table(H, attn.rel_pos_h, get_rel_pos).to(q.dtype)  # (H, H, c): R_h[h_i, h_j]
        rel_w = _relative_table(W, attn.rel_pos_w, get_rel_pos).to(q.dtype)  # (W, W, c)
        grid_q = q.reshape(B, heads, H, W, c)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_h).reshape(B, heads, H * W, H)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_w).reshape(B, heads, H * W, W)
        onehot = _key_onehots(H, W, q.device, q.dtype).expand(B, heads, -1, -1)  # (B, heads, N, H + W)
        q = torch.cat([q * attn.scale, bias_h, bias_w], dim=-1)
        k = torch.cat([k, onehot], dim=-1)
        scale = 1.0
    else:
        scale = attn.scale
    width = _round8(q.shape[-1])
    q, k = F.pad(q, (0, width - q.shape[-1])), F.pad(k, (0, width - k.shape[-1]))
    v = F.pad(v, (0, width - c))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :c]  # (B, heads, N, c)
    out = out.permute(0, 2, 1, 3).reshape(B, H, W, heads * c)
    return attn.proj(out)


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
def _sdpa_class() -> type:
    image_encoder = sam_modeling().image_encoder

    class FoldedRelPosAttention(image_encoder.Attention):
        """segment-anything's Attention whose forward runs fused SDPA (module docstring of tensoradapt.sam.attention)."""

        _get_rel_pos = staticmethod(image_encoder.get_rel_pos)

        def forward(self, x: Tensor) -> Tensor:
            return folded_rel_pos_attention(self, x, self._get_rel_pos)

    return FoldedRelPosAttention


def set_attention(encoder: nn.Module, kind: str) -> int:
    """Use attention `kind` ("sdpa" or "sam") in every block of a segment-anything ImageEncoderViT.

    Returns the number of attention modules switched. Numerically the two agree to float tolerance
    (tests/test_sam_attention.py); "sdpa" never stores the (N, N) attention matrix.
    """
    if kind not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
    base = sam_modeling().image_encoder.Attention
    target = _sdpa_class() if kind == "sdpa" else base
    n = 0
    for module in encoder.modules():
        if isinstance(module, base):
            module.__class__ = target
            n += 1
    return n
