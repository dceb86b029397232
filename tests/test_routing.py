"""Task routing: ids are validated once where they are routed, and the routed forward never syncs the host."""
from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
from strategies import randomize_
from torch import nn

import tensoradapt as ta
from tensoradapt import CPDelta, TaskLinear

#: Tensor methods that copy a value to the host (a device -> host sync on a GPU)
SYNCING = ("item", "tolist", "__int__", "__bool__", "__float__", "__index__")


@contextlib.contextmanager
def count_host_syncs(monkeypatch: pytest.MonkeyPatch):
    """Count calls of the syncing Tensor methods inside the block."""
    calls: Counter[str] = Counter()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        yield calls
    finally:
        monkeypatch.undo()


def test_the_counter_sees_a_sync():
    """Guard for the guard: the patched methods do catch `int(t)`, `t.item()`, `if t:` and `t.tolist()`."""
    t = torch.tensor([3])
    with pytest.MonkeyPatch.context() as mp, count_host_syncs(mp) as calls:
        int(t.max()), t.item(), bool(t), t.tolist()
    assert calls["__int__"] == 1 and calls["item"] == 1 and calls["__bool__"] == 1 and calls["tolist"] == 1


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 5))


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.1)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


HOSTS = {
    "mlp": (mlp, lambda m: [n for n, x in m.named_modules() if isinstance(x, nn.Linear)], (4, 12)),
    "encoder": (encoder, lambda m: ["linear1", "linear2"], (4, 5, 16)),
    "attention": (encoder, lambda m: ["self_attn", "out_proj"], (4, 5, 16)),  # torch's nn.MultiheadAttention
}


def _adapted(host: str, decomp: str) -> tuple[nn.Module, tuple[int, ...]]:
    build, targets, shape = HOSTS[host]
    model = build()
    ranks = {"cp": 3, "tucker": (2, 3, 3), "tt": (2, 3), "lora": 3, "shared-lora": 3}[decomp]
    ta.adapt(model, targets(model), decomp=decomp, num_tasks=3, ranks=ranks, dropout=0.1)
    for _, d in ta.task_deltas(model):
        randomize_(d)
    ta.mark_trainable(model)
    return model.train(), shape


@pytest.mark.parametrize("decomp", ["tucker", "tt", "lora"])
@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(
    "task", [torch.tensor([0, 2, 1, 2]), torch.tensor([1, 1, 0, 2], dtype=torch.int32), 1],
    ids=["mixed-ids", "int32-ids", "int"],
)
def test_routed_training_step_does_not_sync_the_host(host, decomp, task, monkeypatch):
    model, shape = _adapted(host, decomp)
    x = torch.randn(shape)
    with ta.task_scope(model, task):  # routing validates the ids (one sync at most) ...
        with count_host_syncs(monkeypatch) as calls:  # ... the forward and backward need none
            model(x).square().mean().backward()
    assert not calls, dict(calls)
    assert all(p.grad is not None for _, d in ta.task_deltas(model) for p in d.parameters())


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_task_kwarg_validates_once_whatever_the_depth(host, monkeypatch):
    model, shape = _adapted(host, "tucker")
    ta.enable_task_kwarg(model)
    x, ids = torch.randn(shape), torch.tensor([0, 2, 1, 2])
    with count_host_syncs(monkeypatch) as calls:
        model(x, task=ids).square().mean().backward()
    assert sum(calls.values()) <= 1, dict(calls)  # the pre-hook's one range check, not one per layer


def test_task_kwarg_routing_through_a_forward_pre_hook():
    model = ta.adapt(mlp(), ["0"], decomp="cp", num_tasks=2, ranks=2)
    for _, d in ta.task_deltas(model):
        randomize_(d)
    ta.enable_task_kwarg(model)
    x = torch.randn(2, 12)
    with ta.task_scope(model, 1):
        expected = model(x)
    assert torch.equal(model(x, task=1), expected)
    assert model[0].task is None  # restored after the call


def test_task_scope_restores_the_previous_routing():
    model = ta.adapt(mlp(), ["0"], decomp="cp", num_tasks=3, ranks=2)
    ta.set_task(model, 2)
    with ta.task_scope(model, 0):
        assert model[0].task == 0
    assert model[0].task == 2


def test_direct_calls_with_bad_ids_still_raise_naming_the_id_and_T():
    delta = CPDelta((3, 4, 4), 2)
    layer = TaskLinear(nn.Linear(4, 4), CPDelta((3, 4, 4), 2))
    bad = torch.tensor([0, 5])
    with pytest.raises(IndexError, match=r"task id 5 is outside \[0, T\) with T=3"):
        delta(torch.randn(2, 4), bad)
    layer.task = bad  # assigned by hand, not through set_task: checked at the forward
    with pytest.raises(IndexError, match=r"task id 5 is outside \[0, T\) with T=3"):
        layer(torch.randn(2, 4))
    with pytest.raises(IndexError, match=r"task id 5 is outside \[0, T\) with T=3"):
        layer(torch.randn(2, 4), task=bad)


def test_routing_moves_the_ids_once_and_they_stay_checked(monkeypatch):
    model = ta.adapt(mlp(), ["0", "2"], decomp="tucker", num_tasks=3, ranks=(2, 3, 3))
    ids = torch.tensor([2, 0], dtype=torch.int32)
    ta.set_task(model, ids)
    routed = model[0].task
    assert routed.dtype == torch.int64 and all(m.task is routed for _, m in ta.task_linears(model))
    with count_host_syncs(monkeypatch) as calls:
        model(torch.randn(2, 12))
    assert not calls, dict(calls)


@pytest.mark.parametrize("decomp", ["tucker", "tt"])
def test_routing_inside_a_compiled_forward_causes_no_graph_break(decomp):
    """mSAM routes inside its forward (`task_scope` per task pass): routing must trace too."""
    model, shape = _adapted("mlp", decomp)
    ids = torch.tensor([0, 2, 1, 2])

    def step(x):
        with ta.task_scope(model, ids):
            return model(x)

    explanation = torch._dynamo.explain(step)(torch.randn(shape))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_ids_changed_in_place_after_routing_are_checked_again():
    model = ta.adapt(mlp(), ["0"], decomp="cp", num_tasks=3, ranks=2)
    ids = torch.tensor([0, 1])
    ta.set_task(model, ids)
    model(torch.randn(2, 12))
    ids[1] = 7  # the validated tensor is not the same tensor any more
    with pytest.raises(IndexError, match=r"task id 7 is outside \[0, T\) with T=3"):
        model(torch.randn(2, 12))


def test_ids_validated_for_more_tasks_are_checked_against_a_smaller_T():
    ids = torch.tensor([0, 3])
    CPDelta((4, 4, 4), 2)(torch.randn(2, 4), ids)  # valid for T = 4
    with pytest.raises(IndexError, match=r"task id 3 is outside \[0, T\) with T=3"):
        CPDelta((3, 4, 4), 2)(torch.randn(2, 4), ids)


def test_repeated_task_ids_route_without_reading_them_back(monkeypatch):
    from tensoradapt.deltas import check_task_index, repeated_task_ids

    ids = repeated_task_ids([2, 0], 3, "cpu")
    assert ids.tolist() == [2, 2, 2, 0, 0, 0] and ids.dtype == torch.long

    def no_read(*args, **kwargs):
        raise AssertionError("the ids were read back on the host (a device sync on a GPU)")

    monkeypatch.setattr(torch.Tensor, "tolist", no_read)
    check_task_index(ids, 3)  # known valid: no read
    with pytest.raises(IndexError, match="task id 2 is outside"):
        check_task_index(ids, 2)  # and still refused for a model with fewer tasks
    monkeypatch.undo()
    with pytest.raises(ValueError, match="tasks must be a non-empty list of ids >= 0"):
        repeated_task_ids([-1], 2, "cpu")
