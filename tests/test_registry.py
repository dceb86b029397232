"""A new decomposition is one class: defined here, it works everywhere the built-in ones do."""
from __future__ import annotations

import pytest
import torch
from strategies import randomize_
from torch import Tensor, nn

import tensoradapt as ta
from tensoradapt.deltas import TaskDelta


def define_scaled_lora() -> type[TaskDelta]:
    """A toy decomposition: one LoRA scaled per task, `delta[t] = s[t] * B @ A`."""

    class ScaledLoRADelta(TaskDelta):
        decomp = "scaled-lora"
        rank_names = ("r",)

        def __init__(self, shape, ranks, init: str = "paper") -> None:
            super().__init__(shape, ranks, init)
            self.A, self.B = self._new(self.ranks, self.d_in), self._new(self.d_out, self.ranks)
            self.s = self._new(self.num_tasks)
            self.reset_parameters(init)

        @property
        def rank(self) -> int:
            return self.ranks

        def reset_parameters(self, init: str = "paper") -> None:
            self._init_factor(self.A, init)
            with torch.no_grad():
                self.B.zero_()
                self.s.fill_(1.0)

        def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
            s = self.s[task] if isinstance(task, int) else self.s[task].view(-1, 1, 1)
            return (x @ self.A.T) * s

        def _up(self, task: int | Tensor) -> Tensor:
            return self.B

        def to_tensor(self) -> Tensor:
            return self.s.view(-1, 1, 1) * (self.B @ self.A)

        def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
            self._check_terms(terms)
            return [self.A.T, self.B]

    return ScaledLoRADelta


@pytest.fixture
def scaled_lora():
    cls = define_scaled_lora()
    yield cls
    ta.unregister_delta("scaled-lora")
    assert "scaled-lora" not in ta.DELTA_CLASSES and "scaled-lora" not in ta.DECOMPS


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))


def test_a_new_class_is_seen_by_every_entry_point(scaled_lora):
    assert ta.DELTA_CLASSES["scaled-lora"] is scaled_lora and "scaled-lora" in ta.DECOMPS
    assert ta.parse_ranks("scaled-lora", "3") == 3
    with pytest.raises(ValueError, match=r"ranks for scaled-lora must be 1 value\(s\) \(r\)"):
        ta.parse_ranks("scaled-lora", "3,3")
    delta = randomize_(ta.make_delta("scaled-lora", (3, 5, 4), 2).double())
    x = torch.randn(6, 4, dtype=torch.float64)
    dense = delta.to_tensor()
    for t in range(3):
        torch.testing.assert_close(delta(x, t), x @ dense[t].T)
    ids = torch.tensor([2, 0, 1])  # k = 2 rows per sample
    mixed = delta(x, ids)
    torch.testing.assert_close(mixed, torch.cat([delta(x[2 * i:2 * i + 2], int(t)) for i, t in enumerate(ids)]))


def test_a_new_class_adapts_saves_loads_and_regularises(scaled_lora, tmp_path):
    model = ta.adapt(mlp(), ["0", "2"], decomp="scaled-lora", num_tasks=3, ranks=2, scale=0.5)
    for i, (_, d) in enumerate(ta.task_deltas(model)):
        randomize_(d, i)
    x, ids = torch.randn(3, 6), torch.tensor([1, 0, 2])
    with ta.task_scope(model, ids):
        mixed = model(x)
    for i in range(3):
        with ta.task_scope(model, int(ids[i])):
            torch.testing.assert_close(mixed[i], model(x[i:i + 1])[0])
    ta.save_adapter(model, tmp_path)
    fresh = ta.load_adapter(mlp(), tmp_path)  # rebuilt by name from the JSON config
    assert all(isinstance(d, scaled_lora) for _, d in ta.task_deltas(fresh))
    with ta.task_scope(fresh, ids):
        assert torch.equal(fresh(x), mixed)
    expected = torch.stack([
        torch.linalg.matrix_norm(m.T @ m - torch.eye(2))
        for _, d in ta.task_deltas(model) for m in (d.A.T, d.B)
    ]).mean()
    torch.testing.assert_close(ta.orthogonality_penalty(model), expected)


def test_a_taken_name_is_refused(scaled_lora):
    with pytest.raises(ValueError, match="decomp 'tucker' is already registered by .*TuckerDelta"):
        type("Impostor", (scaled_lora,), {"decomp": "tucker"})
    assert ta.DELTA_CLASSES["tucker"] is ta.TuckerDelta


def test_redefining_the_same_class_replaces_it(scaled_lora):
    again = define_scaled_lora()  # e.g. a re-run notebook cell
    assert again is not scaled_lora and ta.DELTA_CLASSES["scaled-lora"] is again


def test_a_class_without_rank_names_is_refused():
    with pytest.raises(ValueError, match="rank_names must name each rank"):
        type("Nameless", (TaskDelta,), {"decomp": "nameless"})
    assert "nameless" not in ta.DELTA_CLASSES


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"decomp must be one of \['cp', 'lora', .*got 'nope'"):
        ta.unregister_delta("nope")
    with pytest.raises(TypeError, match=r"ranks for tucker must be 3 int\(s\) \(r_task,r_out,r_in\), got None"):
        ta.parse_ranks("tucker", None)


def test_subclasses_without_a_name_of_their_own_are_not_registered():
    class Tweaked(ta.TuckerDelta):
        pass

    assert ta.DELTA_CLASSES["tucker"] is ta.TuckerDelta


@pytest.mark.parametrize(
    "decomp,wide,narrow",
    [("tucker", (4, 32, 32), (4, 8, 8)), ("cp", 32, 8), ("tt", (16, 16), (4, 8)), ("lora", 32, 8),
     ("shared-lora", 32, 8)],
)
def test_default_ranks_per_width(decomp, wide, narrow):
    cls = ta.DELTA_CLASSES[decomp]
    assert cls.default_ranks(512) == cls.default_ranks(1280) == wide
    assert cls.default_ranks(511) == cls.default_ranks(128) == narrow
    cls(shape=(3, 128, 128), ranks=narrow)  # valid ranks for the tiny config's width
    with pytest.raises(ValueError, match="width must be > 0"):
        cls.default_ranks(0)


def test_what_a_new_class_does_not_offer_it_says_so(scaled_lora):
    with pytest.raises(NotImplementedError, match="ScaledLoRADelta has no default ranks"):
        scaled_lora.default_ranks(768)
    with pytest.raises(NotImplementedError, match="ScaledLoRADelta has no fitting method"):
        scaled_lora.from_tensor(torch.randn(3, 5, 4), 2)
    with pytest.raises(TypeError, match="ScaledLoRADelta has no tensorly counterpart"):
        scaled_lora((3, 5, 4), 2).to_tensorly()


def test_msam_offers_a_new_class_with_its_default_ranks(scaled_lora):
    from tensoradapt.sam import build_msam, default_ranks, get_sam_config, is_task_agnostic, msam_decomps

    scaled_lora.paper_ranks, scaled_lora.narrow_ranks = 16, 3
    assert "scaled-lora" in msam_decomps() and not is_task_agnostic("scaled-lora")
    assert default_ranks("scaled-lora", get_sam_config("tiny")) == 3
    assert default_ranks("scaled-lora", get_sam_config("vit_b")) == 16
    model = build_msam("tiny", {"a": 2, "b": 1}, decomp="scaled-lora")
    assert model.msam_config.ranks == 3 and not model.task_agnostic
    deltas = [d for _, d in ta.task_deltas(model)]
    assert len(deltas) == 4 and all(isinstance(d, scaled_lora) for d in deltas)
    out = model(torch.rand(2, 3, 48, 64))
    assert out["a"].shape == (2, 2, 48, 64)
    scaled_lora.task_shared = True  # one delta for every task: mSAM then runs its encoder once per batch
    assert is_task_agnostic("scaled-lora")
