"""TaskLinear and model injection: zero start, routing, merge/unmerge, trainable set, save/load, any model."""
from __future__ import annotations

import pytest
import torch
from strategies import DECOMPS, randomize_
from torch import nn

import tensoradapt as ta
from tensoradapt import TaskLinear, TuckerDelta
from tensoradapt._utils import StateMismatchError

RANKS = {"cp": 4, "tucker": (3, 4, 4), "tt": (2, 4), "lora": 4, "shared-lora": 4}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 5))


def randomize_model_deltas(model, seed=0):
    for i, (_, d) in enumerate(ta.task_deltas(model)):
        randomize_(d, seed + i)
        with torch.no_grad():
            for p in d.parameters():
                p.mul_(0.1)


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("init", ["paper", "orthonormal"])
def test_zero_init_leaves_the_model_bit_identical(decomp, init):
    model = mlp()
    x = torch.randn(6, 12)
    before = model(x)
    ta.adapt(model, ["0", "2", "4"], decomp=decomp, num_tasks=3, ranks=RANKS[decomp], scale=0.5, init=init)
    with ta.task_scope(model, torch.tensor([0, 1, 2, 2, 1, 0])):
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_mixed_task_batch_equals_per_task_batches_through_a_model(decomp):
    model = ta.adapt(mlp(), lambda name, m: isinstance(m, nn.Linear), decomp=decomp, num_tasks=3, ranks=RANKS[decomp])
    randomize_model_deltas(model)
    x = torch.randn(6, 12)
    ids = torch.tensor([2, 0, 1, 1, 0, 2])
    with ta.task_scope(model, ids):
        mixed = model(x)
    for i in range(6):
        with ta.task_scope(model, int(ids[i])):
            torch.testing.assert_close(mixed[i], model(x[i:i + 1])[0])


def test_task_linear_computes_base_plus_scaled_delta_on_selected_rows():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    rows = list(range(0, 8)) + list(range(16, 24))  # q and v of a fused qkv
    layer = TaskLinear(base, randomize_(TuckerDelta((2, 16, 8), (2, 3, 3))), scale=0.25, rows=rows)
    x = torch.randn(5, 8)
    layer.task = 1
    expected = base(x)
    expected[:, rows] += 0.25 * x @ layer.delta.matrix(1).T
    torch.testing.assert_close(layer(x), expected)
    assert torch.equal(layer(x)[:, 8:16], base(x)[:, 8:16])  # k rows untouched


@pytest.mark.parametrize("parts", ["q", "k", "v", "qk", "qv", "kv", "qkv"])
def test_qkv_subsets_adapt_exactly_those_rows(parts):
    torch.manual_seed(0)
    d = 6
    model = nn.Sequential(nn.Linear(d, 3 * d))
    ta.adapt(model, ["0"], decomp="cp", num_tasks=2, ranks=3, qkv=parts)
    randomize_model_deltas(model)
    x = torch.randn(4, d)
    ta.set_task(model, 0)
    changed = (model(x) - model[0].base(x)).abs().sum(0) > 0
    for i, p in enumerate("qkv"):
        assert bool(changed[i * d:(i + 1) * d].all()) == (p in parts)
        assert bool(changed[i * d:(i + 1) * d].any()) == (p in parts)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_merge_equals_unmerged_forward_and_unmerge_restores_w0_exactly(decomp):
    model = ta.adapt(mlp(), ["0", "2"], decomp=decomp, num_tasks=3, ranks=RANKS[decomp], qkv=None)
    randomize_model_deltas(model)
    w0 = {n: m.base.weight.detach().clone() for n, m in ta.task_linears(model)}
    x = torch.randn(4, 12)
    for t in range(3):
        ta.set_task(model, t)
        expected = model(x)
        ta.merge_adapters(model, t)
        assert all(m.merged and m.merged_task == t for _, m in ta.task_linears(model))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        ta.unmerge_adapters(model)
    for n, m in ta.task_linears(model):
        assert torch.equal(m.base.weight, w0[n]) and not m.merged


def test_parameters_come_base_first_then_delta():
    """The order optimiser states and seeded initialisations index parameters by."""
    layer = TaskLinear(nn.Linear(4, 6), TuckerDelta((2, 6, 4), (2, 2, 2)))
    names = [n for n, _ in layer.named_parameters()]
    assert names[:2] == ["base.weight", "base.bias"] and all(n.startswith("delta.") for n in names[2:])


def test_merged_layer_refuses_another_task_and_costs_one_linear():
    layer = TaskLinear(nn.Linear(4, 4), randomize_(TuckerDelta((2, 4, 4), (2, 2, 2))))
    layer.merge(0)
    layer.task = 1
    with pytest.raises(RuntimeError, match="merged for task 0"):
        layer(torch.randn(1, 4))
    layer.task = torch.tensor([0, 1, 0])  # a mixed batch cannot run on one merged weight
    with pytest.raises(RuntimeError, match="merged for task 0 but task 1"):
        layer(torch.randn(3, 4))
    layer.task = torch.tensor([0, 0, 0])
    layer(torch.randn(3, 4))
    layer.task = 0
    with torch.profiler.profile() as prof:
        layer(torch.randn(3, 4))
    ops = [e.name for e in prof.events()]
    assert ops.count("aten::linear") == 1 and "aten::mm" not in ops and "aten::bmm" not in ops


def test_only_delta_parameters_receive_gradients_after_mark_trainable():
    model = ta.adapt(mlp(), ["0", "2"], decomp="tucker", num_tasks=2, ranks=(2, 3, 3))
    n = ta.mark_trainable(model)
    assert n == sum(d.num_parameters for _, d in ta.task_deltas(model))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with ta.task_scope(model, torch.tensor([0, 1])):
        model(torch.randn(2, 12)).pow(2).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".delta." in k for k in changed)
    assert not any(k.endswith("base.weight") or k.endswith("base.bias") for k in changed)


def test_mark_trainable_extra_by_module_and_by_pattern():
    model = ta.adapt(mlp(), ["0"], decomp="cp", num_tasks=2, ranks=2)
    ta.mark_trainable(model, extra=[model[4]])
    assert model[4].weight.requires_grad and not model[2].weight.requires_grad
    ta.mark_trainable(model, extra=r"^2\.bias$")
    assert model[2].bias.requires_grad and not model[4].weight.requires_grad


@pytest.mark.parametrize("decomp", DECOMPS)
def test_save_load_round_trip_gives_identical_outputs(decomp, tmp_path):
    model = ta.adapt(mlp(), ["0", "4"], decomp=decomp, num_tasks=3, ranks=RANKS[decomp], scale=0.7)
    randomize_model_deltas(model)
    ta.save_adapter(model, tmp_path)
    fresh = ta.load_adapter(mlp(), tmp_path)  # rebuilt from the JSON config alone
    x = torch.randn(3, 12)
    ids = torch.tensor([0, 2, 1])
    with ta.task_scope(model, ids), ta.task_scope(fresh, ids):
        assert torch.equal(model(x), fresh(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_load_adapter_names_missing_and_unexpected_keys(tmp_path):
    model = ta.adapt(mlp(), ["0"], decomp="cp", num_tasks=2, ranks=2)
    ta.save_adapter(model, tmp_path)
    other = ta.adapt(mlp(), ["2"], decomp="cp", num_tasks=2, ranks=2)
    with pytest.raises(KeyError, match=r"missing keys \['2\.delta"):
        ta.load_adapter(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ta.load_adapter(mlp(), tmp_path / "nowhere")


def test_load_adapter_state_refuses_wrong_shapes_before_copying_anything():
    model = ta.adapt(mlp(), ["0", "2"], decomp="tucker", num_tasks=2, ranks=(2, 3, 3))
    state = {k: torch.ones_like(v) for k, v in ta.adapter_state_dict(model).items()}
    state["2.delta.core"] = torch.ones(2, 3, 4)
    before = {k: v.clone() for k, v in ta.adapter_state_dict(model).items()}
    with pytest.raises(StateMismatchError, match=r"shape mismatch for \['2\.delta\.core: \(2, 3, 4\)"):
        ta.load_adapter_state_dict(model, state)
    assert all(torch.equal(v, before[k]) for k, v in ta.adapter_state_dict(model).items())
    del state["2.delta.core"]
    with pytest.raises(KeyError, match=r"missing keys \['2\.delta\.core'\]"):
        ta.load_adapter_state_dict(model, state)


def test_a_task_passed_to_the_layer_overrides_the_routed_one():
    layer = TaskLinear(nn.Linear(4, 6), randomize_(TuckerDelta((3, 6, 4), (2, 2, 2))))
    x = torch.randn(3, 4)
    layer.task = 0
    routed = layer(x)
    assert torch.equal(layer(x, task=0), routed) and not torch.equal(layer(x, task=2), routed)
    assert torch.equal(layer(x, task=torch.tensor([2, 2, 2])), layer(x, task=2))
    assert layer.task == 0


def test_adapt_works_on_a_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 5, 16)
    before = model(x)
    # freeze_base=False: a frozen nn.MultiheadAttention in eval mode runs torch's fused kernel, equal to
    # its unfused path only to ~1e-7, and this checks bit-identity
    ta.adapt(model, ["linear1", "linear2"], decomp="tucker", num_tasks=2, ranks=(2, 4, 4), freeze_base=False)
    assert len(list(ta.task_linears(model))) == 4
    with ta.task_scope(model, torch.tensor([0, 1, 1])):
        assert torch.equal(model(x), before)
        randomize_model_deltas(model)
        y = model(x)
    with ta.task_scope(model, 1):
        torch.testing.assert_close(y[1:], model(x[1:]))


def test_adapt_works_on_a_timm_vit():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    ta.adapt(model, r"blocks\.\d+\.attn\.qkv", decomp="tucker", num_tasks=2, ranks=(2, 4, 4), qkv="qv")
    with ta.task_scope(model, torch.tensor([0, 1])):
        assert torch.equal(model(x), before)


def test_parameter_report_mentions_counts_and_compression():
    model = ta.adapt(mlp(), ["0", "2"], decomp="tucker", num_tasks=3, ranks=(2, 4, 4))
    ta.mark_trainable(model)
    report = ta.trainable_parameters_report(model)
    n = sum(d.num_parameters for _, d in ta.task_deltas(model))
    assert f"trainable params: {n:,}" in report and "smaller than T independent LoRAs" in report


@pytest.mark.parametrize("decomp", DECOMPS)
def test_merged_inference_matches_the_factored_forward_and_tracks_updates(decomp):
    model = ta.adapt(mlp(), ["0", "2"], decomp=decomp, num_tasks=3, ranks=RANKS[decomp], qkv=None)
    randomize_model_deltas(model)
    x = torch.randn(6, 12)
    ids = torch.tensor([0, 0, 2, 2, 1, 0])  # runs of equal ids, as a task-major batch has
    with torch.no_grad(), ta.task_scope(model, ids):
        expected = model(x)
        ta.set_merged_inference(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        layer = model[0]
        w = layer.merged_weights()
        assert layer.merged_weights() is w  # cached
        next(layer.delta.parameters()).add_(0.5)  # an in-place update (as an optimiser step) invalidates
        assert layer.merged_weights() is not w
        ta.set_merged_inference(model, False)
        expected = model(x)
        ta.set_merged_inference(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with ta.task_scope(model, ids):  # grad enabled: the training path, gradients reach the deltas
        model(x).sum().backward()
    assert all(p.grad is not None for _, d in ta.task_deltas(model) for p in d.parameters())


def test_merged_inference_runs_one_plain_linear_per_task_run():
    model = ta.adapt(mlp(), ["0"], decomp="tucker", num_tasks=3, ranks=(2, 3, 3))
    ta.set_merged_inference(model)
    with torch.no_grad(), ta.task_scope(model, torch.tensor([0, 0, 1, 1, 2, 2])):
        model(torch.randn(6, 12))  # builds the cache
        with torch.profiler.profile() as prof:
            model[0](torch.randn(6, 12))
    ops = [e.name for e in prof.events()]
    assert ops.count("aten::linear") == 3 and "aten::bmm" not in ops


@pytest.mark.parametrize("decomp", DECOMPS)
def test_task_routing_causes_no_graph_break_under_torch_compile(decomp):
    model = ta.adapt(mlp(), ["0", "2"], decomp=decomp, num_tasks=3, ranks=RANKS[decomp])
    ta.set_task(model, torch.tensor([0, 1, 2, 0]))
    explanation = torch._dynamo.explain(model)(torch.randn(8, 12))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
