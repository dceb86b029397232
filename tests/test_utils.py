"""The shared pieces: atomic files (permissions per umask, nothing left behind), strict state subsets,
frozen-weight fingerprints, the subnormal flag, unit vectors."""
import os
import stat

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tensoradapt._utils import (
    StateMismatchError, atomic_path, atomic_write_text, denormals_flushed, fingerprint_mismatch, flush_denormal,
    frozen_fingerprint, load_state_subset, trainable_state_dict, unit,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_mode_follows_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert _mode(tmp_path / "a.json") == 0o644  # mkstemp alone would leave 0600
    os.umask(0o007)
    atomic_write_text(tmp_path / "b.json", "{}")
    assert _mode(tmp_path / "b.json") == 0o660


def test_saved_adapter_is_group_readable(tmp_path, umask_022):
    import tensoradapt as ta

    model = nn.Sequential(nn.Linear(8, 8))
    ta.adapt(model, targets=["0"], decomp="cp", num_tasks=2, ranks=2)
    ta.save_adapter(model, tmp_path)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert _mode(tmp_path / name) & stat.S_IRGRP, name


def test_atomic_path_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[0].requires_grad_(False)
    return m


def test_trainable_state_is_grad_params_and_persistent_buffers():
    keys = set(trainable_state_dict(_model()))
    assert keys == {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                    "2.weight", "2.bias"}


def test_load_state_subset_round_trip_and_errors():
    src, dst = _model(), _model()
    with torch.no_grad():
        src[2].weight.add_(1.0)
    state = {k: v.clone() for k, v in trainable_state_dict(src).items()}
    frozen_before = dst[0].weight.clone()
    load_state_subset(dst, state)
    assert torch.equal(dst[2].weight, src[2].weight) and torch.equal(dst[0].weight, frozen_before)

    missing = {k: v for k, v in state.items() if k != "2.bias"}
    with pytest.raises(StateMismatchError, match=r"missing keys \['2\.bias'\]"):
        load_state_subset(dst, missing, source="ckpt.pt")
    with pytest.raises(StateMismatchError, match=r"unexpected keys \['0\.weight'\]"):
        load_state_subset(dst, {**state, "0.weight": dst[0].weight.detach()})
    bad = {**state, "2.weight": torch.zeros(3, 4)}
    before = dst[2].bias.clone()
    with pytest.raises(StateMismatchError, match=r"2\.weight: \(3, 4\) in ckpt.pt vs \(2, 4\)"):
        load_state_subset(dst, {**bad, "2.bias": torch.ones(2)}, source="ckpt.pt")
    assert torch.equal(dst[2].bias, before), "nothing may be copied when a shape is wrong"
    with pytest.raises(ValueError, match="custom"):
        load_state_subset(dst, missing, error=lambda msg: ValueError(f"custom: {msg}"))


def test_fingerprint_names_the_changed_frozen_tensor():
    m = _model()
    fp = frozen_fingerprint(m)
    assert set(fp) == {"0.weight", "0.bias"}
    assert fingerprint_mismatch(fp, frozen_fingerprint(m)) is None
    with torch.no_grad():
        m[0].bias[0] += 1e-3
    assert "0.bias" in fingerprint_mismatch(fp, frozen_fingerprint(m))
    m[2].requires_grad_(False)
    assert "model only" in fingerprint_mismatch(fp, frozen_fingerprint(m))


def test_flush_denormal_zeroes_subnormals_inside_and_restores_the_flag():
    tiny = torch.full((4,), 1e-39)  # float32 subnormal
    assert not denormals_flushed()  # torch's default, which every other test runs under
    with flush_denormal() as on:
        assert on and denormals_flushed()
        assert torch.equal(tiny * 1.0, torch.zeros(4))
        assert (torch.full((4,), 2e-38) * 1.0 == 2e-38).all()  # normal floats are untouched
        with flush_denormal(False) as inner:  # a nested opt-out, then back on
            assert not inner and (tiny * 1.0 == 1e-39).all()
        assert denormals_flushed()
        with flush_denormal():  # nested on: leaving it must not turn the outer off
            pass
        assert denormals_flushed()
    assert not denormals_flushed() and (tiny * 1.0 == 1e-39).all()


def test_flush_denormal_restores_the_flag_after_an_error():
    with pytest.raises(RuntimeError, match="boom"):
        with flush_denormal():
            raise RuntimeError("boom")
    assert not denormals_flushed()


@settings(deadline=None, max_examples=30)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 99))
def test_unit_is_f_normalize_in_value_and_gradient(shape, data, dtype, seed):
    """`unit` replaces F.normalize for speed on CPUs: same value and gradient along any dim, zero vectors too."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    x = x * (torch.rand(x.shape, generator=g) > 0.3)  # zero entries, and (for short dims) zero vectors
    whole = [0] * x.dim()
    whole[dim] = slice(None)
    x[tuple(whole)] = 0  # and always one all-zero vector along dim
    w = torch.randn(*shape, generator=g, dtype=dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = unit(a, dim), F.normalize(b, dim=dim)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ya, yb, **tol)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad, **tol)  # w / eps at zero vectors, as F.normalize's (rtol covers it)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unit_in_half_precision_is_float32_rounded(dtype):
    """Squares of |x| >= 256 overflow float16: `unit` normalises in float32 (a zero vector stays 0, no NaN)."""
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [300.0, 400.0, 0.0], [1e-3, 0.0, 0.0]], dtype=dtype)
    y = unit(x, dim=1)
    assert y.dtype == dtype
    torch.testing.assert_close(y, F.normalize(x.float(), dim=1).to(dtype), rtol=0, atol=0)
