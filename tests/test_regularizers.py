"""The orthogonality penalty: the paper's set of matrices by default, every factor on request."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import randomize_
from torch import nn

import tensoradapt as ta
from tensoradapt import TuckerDelta


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 5))


def frob_dev(u: torch.Tensor) -> torch.Tensor:
    """||U^T U - I||_F for a tall U."""
    return torch.linalg.norm(u.T @ u - torch.eye(u.shape[1], dtype=u.dtype), "fro")


def tucker_model() -> nn.Module:
    model = ta.adapt(mlp(), ["0", "2"], decomp="tucker", num_tasks=3, ranks=(2, 4, 4))
    for i, (_, d) in enumerate(ta.task_deltas(model)):
        randomize_(d, i)
    return model


def test_tucker_default_is_the_papers_set_pooled_over_layers():
    """The paper's code: ||U^T U - I||_F for U1 (in), U2 (out) and each core slice G[:, :, k] (its layout
    (R1=in, R2=out, R3=task)), 2 + R3 terms per layer, one mean over all of them."""
    model = tucker_model()
    terms = []
    for _, d in ta.task_deltas(model):
        g = d.core.permute(2, 1, 0)  # (r_in, r_out, r_task): the paper's G
        terms += [frob_dev(d.in_factor), frob_dev(d.out_factor)]
        terms += [frob_dev(g[:, :, k]) for k in range(g.shape[-1])]
    assert len(terms) == 2 * (2 + 2)
    torch.testing.assert_close(ta.orthogonality_penalty(model), torch.stack(terms).mean())
    torch.testing.assert_close(ta.orthogonality_penalty(model, terms="paper"), torch.stack(terms).mean())


def test_all_adds_the_task_factor():
    model = tucker_model()
    terms = []
    for _, d in ta.task_deltas(model):
        terms += [frob_dev(d.task_factor), frob_dev(d.out_factor), frob_dev(d.in_factor)]
        terms += [frob_dev(d.core[k]) for k in range(d.core.shape[0])]
    torch.testing.assert_close(ta.orthogonality_penalty(model, terms="all"), torch.stack(terms).mean())


def test_the_papers_set_leaves_the_task_factor_alone():
    model = tucker_model()
    ta.orthogonality_penalty(model).backward()
    for _, d in ta.task_deltas(model):
        assert d.task_factor.grad is None and d.core.grad is not None and d.in_factor.grad is not None
    ta.orthogonality_penalty(model, terms="all").backward()
    assert all(d.task_factor.grad is not None for _, d in ta.task_deltas(model))


def test_unknown_terms_are_refused():
    with pytest.raises(ValueError, match=r"terms must be one of \('paper', 'all'\), got 'some'"):
        ta.orthogonality_penalty(mlp(), terms="some")


@given(st.integers(1, 3), st.integers(1, 4))
def test_orthogonality_penalty_is_zero_for_orthonormal_factors_and_core_slices(T, r):
    d = TuckerDelta((T, 8, 8), (1, r, r), init="orthonormal")
    with torch.no_grad():
        d.core[0].copy_(torch.eye(r))
        d.task_factor.copy_(torch.nn.functional.normalize(d.task_factor, dim=0))
    # task_factor (T, 1) with unit column, factors orthonormal, core slice = I
    for terms in ("paper", "all"):
        assert ta.orthogonality_penalty(d, terms=terms).item() < 1e-5
    randomize_(d)
    assert ta.orthogonality_penalty(d).item() > 0.1


def test_orthogonality_penalty_reaches_every_delta_and_has_gradients():
    model = ta.adapt(mlp(), ["0", "2"], decomp="cp", num_tasks=2, ranks=3)
    pen = ta.orthogonality_penalty(model)
    pen.backward()
    assert all(d.in_factor.grad is not None for _, d in ta.task_deltas(model))
    assert ta.orthogonality_penalty(mlp()).item() == 0.0
