"""Properties of every task delta: factored forward == materialised tensor, routing, gradients, init."""
from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DECOMPS, DTYPES, randomize_, shapes_and_ranks

from tensoradapt import CPDelta, LoRADelta, SharedLoRADelta, TTDelta, TuckerDelta, make_delta

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def build(decomp, shape, ranks, dtype, seed=0, init="paper"):
    return randomize_(make_delta(decomp, shape, ranks, init=init).to(dtype), seed)


@given(spec=shapes_and_ranks(), dtype=st.sampled_from(DTYPES), n=st.integers(1, 5), seed=st.integers(0, 99))
def test_forward_matches_materialised_tensor_for_every_task(spec, dtype, n, seed):
    decomp, shape, ranks = spec
    delta = build(decomp, shape, ranks, dtype, seed)
    dense = delta.to_tensor()
    assert dense.shape == shape
    x = torch.randn(n, 3, shape[2], dtype=dtype)
    for t in range(shape[0]):
        torch.testing.assert_close(delta(x, t), x @ dense[t].T, **TOL[dtype])
        torch.testing.assert_close(delta.matrix(t), dense[t], **TOL[dtype])


@given(spec=shapes_and_ranks(), dtype=st.sampled_from(DTYPES), b=st.integers(1, 4), k=st.integers(1, 3),
       seed=st.integers(0, 99))
def test_mixed_task_batch_equals_per_task_batches(spec, dtype, b, k, seed):
    """Per-sample ids with B' = k*B rows (windows, sample-major) give what per-task calls give."""
    decomp, shape, ranks = spec
    delta = build(decomp, shape, ranks, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape[0], (b,), generator=g)
    x = torch.randn(b * k, 2, shape[2], dtype=dtype, generator=g)
    mixed = delta(x, ids)
    expected = torch.cat([delta(x[i * k:(i + 1) * k], int(ids[i])) for i in range(b)])
    torch.testing.assert_close(mixed, expected, **TOL[dtype])


@given(spec=shapes_and_ranks(), seed=st.integers(0, 99))
def test_to_tensor_agrees_with_tensorly(spec, seed):
    decomp, shape, ranks = spec
    delta = build(decomp, shape, ranks, torch.float64, seed)
    mine = delta.to_tensor().detach().numpy()
    if decomp in ("lora", "shared-lora"):
        ref = np.stack([delta.matrix(t).detach().numpy() for t in range(shape[0])])
    else:
        with tl.backend_context("numpy"):
            obj = delta.to_tensorly()
            if decomp == "cp":
                ref = tl.cp_to_tensor((obj.weights.numpy(), [f.numpy() for f in obj.factors]))
            elif decomp == "tucker":
                ref = tl.tucker_to_tensor((obj.core.numpy(), [f.numpy() for f in obj.factors]))
            else:
                ref = tl.tt_to_tensor([f.numpy() for f in obj.factors])
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_gradcheck_wrt_input_and_every_factor(decomp):
    spec = {"cp": 3, "tucker": (2, 3, 2), "tt": (2, 2), "lora": 2, "shared-lora": 2}[decomp]
    delta = build(decomp, (3, 4, 5), spec, torch.float64, seed=1)
    names = [n for n, _ in delta.named_parameters()]
    x = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in delta.parameters()]
    ids = torch.tensor([0, 2])  # k = 2 rows per id

    def f(x, *ps):
        state = dict(zip(names, ps))
        return (torch.func.functional_call(delta, state, (x, ids)),
                torch.func.functional_call(delta, state, (x, 1)))

    assert torch.autograd.gradcheck(f, (x, *params))


@given(spec=shapes_and_ranks(), init=st.sampled_from(["paper", "orthonormal"]))
def test_both_inits_give_an_exactly_zero_delta(spec, init):
    decomp, shape, ranks = spec
    delta = make_delta(decomp, shape, ranks, init=init)
    assert torch.count_nonzero(delta.to_tensor()) == 0
    x = torch.randn(2, shape[2])
    assert torch.count_nonzero(delta(x, 0)) == 0
    # ... yet not dead: some factor is non-zero so gradients can flow once the zero part moves
    assert any(torch.count_nonzero(p) > 0 for p in delta.parameters())


def test_orthonormal_init_has_orthonormal_factors():
    d = TuckerDelta((3, 64, 48), (4, 8, 6), init="orthonormal")
    for f in (d.out_factor, d.in_factor):
        torch.testing.assert_close(f.T @ f, torch.eye(f.shape[1]), atol=1e-5, rtol=0)
    t = d.task_factor  # (3, 4): wide, so its rows are orthonormal
    torch.testing.assert_close(t @ t.T, torch.eye(3), atol=1e-5, rtol=0)


def test_paper_init_draws_factors_from_standard_normal_and_zeros_the_core():
    torch.manual_seed(0)
    d = TuckerDelta((3, 512, 512), (4, 32, 32))
    assert torch.count_nonzero(d.core) == 0
    for f in (d.out_factor, d.in_factor):
        assert abs(f.std().item() - 1.0) < 0.05 and abs(f.mean().item()) < 0.05


@pytest.mark.parametrize(
    "cls,ranks,expected",
    [
        (TuckerDelta, (4, 32, 32), 32 * 32 * 4 + 1024 * 32 + 3072 * 32 + 3 * 4),  # the paper's arithmetic
        (CPDelta, 32, 3 * 32 + 1024 * 32 + 3072 * 32),
        (TTDelta, (4, 32), 3 * 4 + 4 * 3072 * 32 + 32 * 1024),
        (LoRADelta, 32, 3 * 32 * (1024 + 3072)),
        (SharedLoRADelta, 32, 32 * (1024 + 3072)),
    ],
)
def test_parameter_counts_and_compression(cls, ranks, expected):
    d = cls((3, 3072, 1024), ranks)
    assert d.num_parameters == expected
    assert d.compression_ratio("dense") == pytest.approx(3 * 3072 * 1024 / expected)
    assert d.compression_ratio("lora") == pytest.approx(3 * d.rank * (3072 + 1024) / expected)
    assert "params=" in repr(d) and str(d.shape) in repr(d)


def test_forward_never_materialises_a_weight_sized_tensor():
    """No intermediate of the factored forward may hold d_out*d_in elements (a (d_out, d_in) matrix)."""
    shape = (3, 384, 256)
    for decomp, ranks in [("cp", 8), ("tucker", (4, 8, 8)), ("tt", (4, 8)), ("lora", 8), ("shared-lora", 8)]:
        delta = randomize_(make_delta(decomp, shape, ranks))
        x = torch.randn(2, 5, shape[2])
        sizes = []
        with torch.profiler.profile(record_shapes=True) as prof:
            delta(x, torch.tensor([0, 2]))
            delta(x, 1)
        for evt in prof.events():
            for s in evt.input_shapes or []:
                if s:
                    sizes.append(int(np.prod(s)))
        assert max(sizes) < shape[1] * shape[2], (decomp, max(sizes))


@given(spec=shapes_and_ranks(), dtype=st.sampled_from(DTYPES), b=st.integers(1, 3), k=st.integers(1, 3),
       scale=st.floats(-2, 2), seed=st.integers(0, 99))
def test_fused_add_to_equals_base_plus_scaled_delta(spec, dtype, b, k, scale, seed):
    decomp, shape, ranks = spec
    delta = build(decomp, shape, ranks, dtype, seed)
    x = torch.randn(b * k, 2, shape[2], dtype=dtype)
    y = torch.randn(b * k * 2, shape[1], dtype=dtype)  # (N, d_out), rows in x's order
    ids = torch.arange(b) % shape[0]
    for task in (ids, shape[0] - 1):
        expected = y + scale * delta(x, task).reshape(-1, shape[1])
        torch.testing.assert_close(delta.add_to_(y.clone(), x, task, scale), expected, **TOL[dtype])


def test_fused_add_to_under_bf16_autocast_and_through_autograd():
    delta = build("tucker", (3, 16, 8), (2, 4, 4), torch.float32)
    base = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = delta.add_to_(base(x), x, ids, 0.5)  # x (4, 8): N = 4 rows
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and delta.core.grad is not None and torch.isfinite(delta.core.grad).all()
