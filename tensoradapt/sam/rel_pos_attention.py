"""Exact attention with SAM's decomposed relative-position bias, in query chunks, never storing N x N.

    out_i = sum_j softmax_j(logits_i) v_j,    logits[i, j] = q_i . k_j + bias_h[i, h_j] + bias_w[i, w_j]

for N = H * W tokens on an (H, W) grid (token j = h_j * W + w_j). The forward walks the queries in chunks of
`chunk` rows, so it holds one (chunk, N) block of logits at a time, and keeps for backward only the inputs and
the output, O(N (c + H + W)). A block holds whole rows, so its softmax is exact, and the backward recomputes it
(the flash-attention recurrence: dS = P * (dO V^T - rowsum(dO * O))); its extra cost is one q k^T product per
block. The probabilities come from `softmax`, never from `exp` of shifted logits: on a CPU `exp` takes a slow
path for results that underflow (trained attention is sharp, and the kernel was ~2x slower on the tiny SAM's
real activations than on random ones). The bias is added to a block in place, broadcast from (chunk, H, 1) and
(chunk, 1, W): the (N, N) bias is never built either. It computes in float32 at least (fp16 / bf16 inputs are
upcast, the output cast back), and it is differentiable once (a double backward raises).

On a CPU this is faster than segment-anything's attention (which keeps softmax(logits), N x N, for backward),
because a (chunk, N) block stays in cache: `benchmarks/bench_attention.py` measures it. `attention.py` uses it
for the "chunked" kind, and for "auto" on CPUs.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["rel_pos_attention", "CHUNK_ELEMENTS"]

#: logits per chunk, over the whole (batch x heads) stack: 2^22 float32 values are 16 MB
CHUNK_ELEMENTS = 1 << 22


def rel_pos_attention(q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor, bias_w: Tensor,
                      chunk: int | None = None) -> Tensor:
    """softmax(q k^T + bias) v with the decomposed bias; q is pre-scaled.

    q, k, v: (B, N, c); bias_h: (B, N, H); bias_w: (B, N, W) with H * W = N -> (B, N, c).
    `chunk`: queries per block (default: `CHUNK_ELEMENTS // (B * N)`, at least 16).
    """
    B, N, c = q.shape
    H, W = bias_h.shape[-1], bias_w.shape[-1]
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape (B, N, c); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if H * W != N or bias_h.shape[:2] != (B, N) or bias_w.shape[:2] != (B, N):
        raise ValueError(f"bias_h (B, N, H) and bias_w (B, N, W) must have H * W = N = {N} and B = {B}; got "
                         f"{tuple(bias_h.shape)} and {tuple(bias_w.shape)}")
    if chunk is None:
        chunk = max(16, CHUNK_ELEMENTS // max(1, B * N))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _RelPosAttention.apply(q, k, v, bias_h.to(q.dtype), bias_w.to(q.dtype), min(chunk, N))


def _logits(q: Tensor, kt: Tensor, bias_h: Tensor, bias_w: Tensor, H: int, W: int) -> Tensor:
    """The block's logits q kt + bias, (B, n, N) (bias added in place, by broadcast)."""
    B, n, _ = q.shape
    s = torch.bmm(q, kt)
    grid = s.view(B, n, H, W)
    grid.add_(bias_h[:, :, :, None]).add_(bias_w[:, :, None, :])
    return s


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel computes in: float32 at least, so fp16 / bf16 inputs neither overflow nor lose the
    softmax's sums (the inputs are (N, c)-sized; the (chunk, N) blocks are made in this dtype)."""
    return torch.promote_types(dtype, torch.float32)


class _RelPosAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias_h, bias_w, chunk):
        B, N, _ = q.shape
        H, W = bias_h.shape[-1], bias_w.shape[-1]
        acc, inputs = _accumulator(q.dtype), (q, k, v, bias_h, bias_w)
        q, k, v, bias_h, bias_w = (t.to(acc) for t in inputs)
        out = torch.empty_like(v)
        kt = k.transpose(1, 2)
        with torch.autocast(q.device.type, enabled=False):
            for s in range(0, N, chunk):
                e = min(N, s + chunk)
                p = _logits(q[:, s:e], kt, bias_h[:, s:e], bias_w[:, s:e], H, W).softmax(-1)
                out[:, s:e] = torch.bmm(p, v)
        ctx.save_for_backward(*inputs, out)  # inputs in their own dtype, upcast again in backward
        ctx.chunk = chunk
        return out.to(inputs[2].dtype)

    @staticmethod
    @once_differentiable  # this hand-written backward is not itself differentiable: a double backward raises
    def backward(ctx, grad_out):
        *saved, out = ctx.saved_tensors
        dtypes = [t.dtype for t in saved]
        acc = _accumulator(dtypes[0])
        q, k, v, bias_h, bias_w = (t.to(acc) for t in saved)
        B, N, _ = q.shape
        H, W = bias_h.shape[-1], bias_w.shape[-1]
        grad_out = grad_out.to(acc).contiguous()
        rowdot = (grad_out * out).sum(-1)  # rowsum(dO * O), (B, N)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dbias_h, dbias_w = torch.empty_like(bias_h), torch.empty_like(bias_w)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        with torch.autocast(q.device.type, enabled=False):
            for s in range(0, N, ctx.chunk):
                e = min(N, s + ctx.chunk)
                p = _logits(q[:, s:e], kt, bias_h[:, s:e], bias_w[:, s:e], H, W).softmax(-1)  # recomputed
                g = grad_out[:, s:e]
                dv.baddbmm_(p.transpose(1, 2), g)
                ds = torch.bmm(g, vt).sub_(rowdot[:, s:e, None]).mul_(p)  # d logits, (B, n, N)
                grid = ds.view(B, e - s, H, W)
                dbias_h[:, s:e] = grid.sum(-1)
                dbias_w[:, s:e] = grid.sum(-2)
                dq[:, s:e] = torch.bmm(ds, k)
                dk.baddbmm_(ds.transpose(1, 2), q[:, s:e])
        grads = (dq, dk, dv, dbias_h, dbias_w)
        return (*(g.to(dt) for g, dt in zip(grads, dtypes)), None)
