"""Fitting deltas to dense tensors (tensorly) and round trips through tensorly / tensorly-torch objects."""
from __future__ import annotations

import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import randomize_, shapes_and_ranks

from tensoradapt import CPDelta, LoRADelta, SharedLoRADelta, TTDelta, TuckerDelta, make_delta
from tensoradapt.deltas import DELTA_CLASSES


@given(spec=shapes_and_ranks(), seed=st.integers(0, 50))
@settings(max_examples=30)
def test_from_tensor_recovers_an_exactly_low_rank_tensor(spec, seed):
    decomp, shape, ranks = spec
    if decomp == "cp":  # CP-ALS is only reliably exact for ranks within every mode's size
        ranks = min(ranks, *shape)
    source = randomize_(make_delta(decomp, shape, ranks).double(), seed)
    dense = source.to_tensor().detach()
    fitted, err = DELTA_CLASSES[decomp].from_tensor(dense, ranks)
    assert err < 1e-6
    assert fitted.ranks == source.ranks and fitted.shape == shape
    torch.testing.assert_close(fitted.to_tensor(), dense, rtol=1e-6, atol=1e-6 * dense.abs().max().item() + 1e-12)


def test_from_tensor_reports_the_error_of_a_too_small_rank():
    torch.manual_seed(0)
    dense = torch.randn(3, 20, 16, dtype=torch.float64)
    errors = [TuckerDelta.from_tensor(dense, ranks)[1] for ranks in [(3, 2, 2), (3, 8, 8), (3, 20, 16)]]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-10  # full rank is exact
    _, err = LoRADelta.from_tensor(dense, 4)
    u = torch.linalg.svdvals(dense)
    expected = (u[:, 4:].pow(2).sum() / u.pow(2).sum()).sqrt()  # Eckart-Young, per task
    assert err == pytest.approx(float(expected), rel=1e-8)


def test_from_tensor_keeps_dtype_and_compresses_separate_finetunes():
    torch.manual_seed(0)
    shared = torch.randn(40, 6) @ torch.randn(6, 30)
    dense = torch.stack([shared * s + 0.01 * torch.randn(40, 30) for s in (1.0, -0.5, 2.0)])
    delta, err = TuckerDelta.from_tensor(dense, (3, 6, 6))
    assert delta.core.dtype == torch.float32 and err < 0.02
    _, err_shared = SharedLoRADelta.from_tensor(dense, 6)
    assert err_shared > 0.3  # one shared matrix cannot express tasks with opposite signs


@pytest.mark.parametrize("cls,ranks", [(CPDelta, 4), (TuckerDelta, (4, 3, 5)), (TTDelta, (2, 3))])
def test_tensorly_round_trip(cls, ranks):
    d = randomize_(cls((3, 7, 6), ranks).double())
    obj = d.to_tensorly()
    back = cls.from_tensorly(obj)
    torch.testing.assert_close(back.to_tensor(), d.to_tensor())
    with tl.backend_context("pytorch"):
        ref = {"cp": tl.cp_to_tensor, "tucker": tl.tucker_to_tensor, "tt": tl.tt_to_tensor}[cls.decomp](obj)
    torch.testing.assert_close(ref, d.to_tensor().detach())


@pytest.mark.parametrize("cls,ranks", [(CPDelta, 4), (TuckerDelta, (4, 3, 5)), (TTDelta, (2, 3))])
def test_tltorch_round_trip(cls, ranks):
    pytest.importorskip("tltorch")
    d = randomize_(cls((3, 7, 6), ranks).double())
    ft = d.to_tltorch()
    torch.testing.assert_close(ft.to_tensor(), d.to_tensor().detach())
    back = cls.from_tltorch(ft)
    torch.testing.assert_close(back.to_tensor(), d.to_tensor())


def test_tensorly_backend_is_left_as_it_was():
    before = tl.get_backend()
    TuckerDelta.from_tensor(torch.randn(2, 5, 4, dtype=torch.float64), (2, 2, 2))
    assert tl.get_backend() == before


def test_lora_has_no_tensorly_counterpart():
    with pytest.raises(TypeError, match="no tensorly counterpart"):
        LoRADelta((2, 4, 4), 2).to_tensorly()
