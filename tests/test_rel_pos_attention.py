"""`rel_pos_attention` (exact attention with a decomposed relative-position bias, in query chunks) against a
direct softmax(q k^T + bias) v: values, gradients of all five inputs (autograd's gradcheck in float64), chunks
that do not divide N, and argument checks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensoradapt.sam.rel_pos_attention import rel_pos_attention


def _direct(q, k, v, bias_h, bias_w):
    B, N, _ = q.shape
    bias = (bias_h[:, :, :, None] + bias_w[:, :, None, :]).reshape(B, N, N)
    return torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1) @ v


def _inputs(B, H, W, c, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = H * W
    shapes = [(B, N, c)] * 3 + [(B, N, H), (B, N, W)]
    return [(torch.randn(s, generator=g, dtype=dtype) * 2).requires_grad_() for s in shapes]


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 5), W=st.integers(1, 5), c=st.integers(1, 6),
       chunk=st.integers(1, 30), seed=st.integers(0, 1000))
def test_matches_direct_attention_values_and_gradients(B, H, W, c, chunk, seed):
    x = _inputs(B, H, W, c, seed=seed)
    out = rel_pos_attention(*x, chunk=chunk)
    ref = _direct(*x)
    assert torch.allclose(out, ref, atol=1e-10, rtol=1e-10)
    up = torch.cos(ref.detach() * 3)  # a non-uniform upstream gradient
    g_out = torch.autograd.grad(out, x, up)
    g_ref = torch.autograd.grad(ref, x, up)
    for name, a, b in zip(("q", "k", "v", "bias_h", "bias_w"), g_out, g_ref):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9), name


def test_gradcheck_with_several_chunks():
    x = _inputs(2, 3, 4, 3)
    assert torch.autograd.gradcheck(lambda *t: rel_pos_attention(*t, chunk=5), x)


def test_float32_and_bf16_stay_close_to_float64():
    x64 = _inputs(2, 8, 8, 16, seed=1)
    ref = _direct(*x64)
    out32 = rel_pos_attention(*[t.detach().float() for t in x64], chunk=7)
    assert torch.allclose(out32.double(), ref, atol=1e-5, rtol=1e-5)
    x16 = [t.detach().bfloat16() for t in x64]
    out16 = rel_pos_attention(*x16, chunk=7)
    assert out16.dtype == torch.bfloat16
    err = (out16.double() - ref).abs().max()
    assert err <= 1.5 * (_direct(*x16).double() - ref).abs().max()  # no worse than bf16 softmax attention


def test_large_logits_do_not_overflow():
    q, k, v, bh, bw = _inputs(1, 4, 4, 4)
    out = rel_pos_attention(q * 1e3, k, v, bh * 1e3, bw, chunk=3)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, _direct(q * 1e3, k, v, bh * 1e3, bw), atol=1e-8)


def test_sharp_float32_attention_keeps_values_and_gradients():
    """Logits spread over hundreds (trained attention is sharp): most probabilities underflow float32, the kernel
    must still match the float64 reference, in forward and in its recomputing backward."""
    x64 = _inputs(2, 5, 6, 8, seed=3)
    x64[0] = (x64[0].detach() * 12).requires_grad_()  # q: logits ~ +-200
    x32 = [t.detach().float().requires_grad_() for t in x64]
    ref, out = _direct(*x64), rel_pos_attention(*x32, chunk=7)
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-4)
    up = torch.cos(ref.detach() * 3)
    for name, a, b in zip(("q", "k", "v", "bias_h", "bias_w"), torch.autograd.grad(out, x32, up.float()),
                          torch.autograd.grad(ref, x64, up)):
        assert torch.isfinite(a).all() and torch.allclose(a.double(), b, atol=1e-3, rtol=1e-3), name


def test_fp16_does_not_overflow_where_the_softmax_does_not():
    # uniform attention over 1024 keys of value 100: the answer is 100; an unnormalised P @ V in fp16 is inf
    N = 32 * 32
    q, k = torch.zeros(1, N, 8, dtype=torch.float16), torch.zeros(1, N, 8, dtype=torch.float16)
    v = torch.full((1, N, 8), 100.0, dtype=torch.float16)
    bh, bw = torch.zeros(1, N, 32, dtype=torch.float16), torch.zeros(1, N, 32, dtype=torch.float16)
    out = rel_pos_attention(q, k, v, bh, bw)
    assert out.dtype == torch.float16 and torch.equal(out, v)


def test_double_backward_raises_instead_of_a_silent_wrong_answer():
    x = _inputs(1, 2, 3, 4)
    (g,) = torch.autograd.grad(rel_pos_attention(*x, chunk=4).sum(), x[0], create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|differentiate twice"):
        torch.autograd.grad(g.sum(), x[1])


def test_bad_shapes_name_the_argument():
    q, k, v, bh, bw = _inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match="q, k, v"):
        rel_pos_attention(q, k[:, :5], v, bh, bw)
    with pytest.raises(ValueError, match="bias_h"):
        rel_pos_attention(q, k, v, bh[..., :1], bw)
    with pytest.raises(ValueError, match="chunk"):
        rel_pos_attention(q, k, v, bh, bw, chunk=0)
