"""transformers hosts (SamModel: windowed ViT with fused qkv; Sam2Model: Hiera with per-stage windows and query
pooling; SamHQModel) adapted with every decomposition: PEFT's test table on real host modules."""
from __future__ import annotations

import pytest
import torch
from strategies import DECOMPS
from torch import nn

pytest.importorskip("transformers")

import tensoradapt as ta  # noqa: E402
from tensoradapt.interop import encoder_qkv_targets  # noqa: E402
from tiny_hosts import HOSTS, build_host, host_inputs, masks, randomize_deltas_  # noqa: E402

RANKS = {"cp": 4, "tucker": (2, 4, 4), "tt": (2, 4), "lora": 4, "shared-lora": 4}
IDS = torch.tensor([2, 0, 1])  # one task per image of the batch of 3
T = 3


def encoder_linears(name: str, module: nn.Module) -> bool:
    """Every linear of the image encoder: qkv, the attention output (after Hiera's query pooling), the MLPs and
    Hiera's width-changing block projections, so each shape a host gives its linears is routed."""
    return name.startswith("vision_encoder.") and isinstance(module, nn.Linear)


def adapted(host: str, decomp: str, random_deltas: bool = True) -> nn.Module:
    model = ta.adapt(build_host(host), encoder_linears, decomp=decomp, num_tasks=T, ranks=RANKS[decomp], scale=0.5)
    return randomize_deltas_(model) if random_deltas else model


def routed(model: nn.Module, task, inputs) -> torch.Tensor:
    with torch.no_grad(), ta.task_scope(model, task):
        return masks(model, inputs)


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("host", HOSTS)
def test_zero_init_output_is_bit_identical_to_the_host(host, decomp):
    inputs = host_inputs()
    with torch.no_grad():
        reference = masks(build_host(host), inputs)
    model = adapted(host, decomp, random_deltas=False)
    assert torch.equal(routed(model, IDS, inputs), reference)
    assert torch.equal(routed(model, 1, inputs), reference)


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("host", HOSTS)
def test_mixed_task_batch_equals_one_task_at_a_time(host, decomp):
    """Per-sample ids repeat over each image's k windows (sample-major); k differs between blocks (and between
    Hiera's stages); a wrong order would hand one image's windows another image's task."""
    model, inputs = adapted(host, decomp), host_inputs()
    mixed = routed(model, IDS, inputs)
    for t in range(T):
        rows = IDS == t
        torch.testing.assert_close(mixed[rows], routed(model, t, inputs)[rows], atol=1e-5, rtol=1e-5)
    if decomp != "shared-lora":  # the deltas do make the tasks differ
        assert not torch.allclose(routed(model, 0, inputs), routed(model, 1, inputs), atol=1e-3)


@pytest.mark.parametrize("host", HOSTS)
def test_qkv_preset_adapts_every_block_and_routes_a_mixed_batch(host):
    model = build_host(host)
    blocks = [n for n, m in model.named_modules() if n.endswith(".attn") and hasattr(m, "qkv")]
    ta.adapt(model, encoder_qkv_targets(model), decomp="tucker", num_tasks=T, ranks=(2, 4, 4), qkv="qv")
    assert sorted(n for n, _ in ta.task_linears(model)) == sorted(f"{b}.qkv" for b in blocks) and blocks
    randomize_deltas_(model)
    inputs = host_inputs()
    mixed = routed(model, IDS, inputs)
    for t in range(T):
        torch.testing.assert_close(mixed[IDS == t], routed(model, t, inputs)[IDS == t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("host", HOSTS)
def test_merge_equals_routing_and_unmerge_restores(host, decomp):
    model, inputs = adapted(host, decomp), host_inputs()
    expected = routed(model, 1, inputs)
    ta.merge_adapters(model, 1)
    with torch.no_grad():
        merged = masks(model, inputs)  # no routing needed: the merged weights serve task 1
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
    ta.unmerge_adapters(model)
    assert torch.equal(routed(model, 1, inputs), expected)


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("host", HOSTS)
def test_save_load_round_trip(host, decomp, tmp_path):
    model, inputs = adapted(host, decomp), host_inputs()
    ta.save_adapter(model, tmp_path)
    fresh = ta.load_adapter(build_host(host), tmp_path)
    assert torch.equal(routed(fresh, IDS, inputs), routed(model, IDS, inputs))


@pytest.mark.parametrize("decomp", DECOMPS)
@pytest.mark.parametrize("host", HOSTS)
def test_only_the_deltas_train(host, decomp):
    model = adapted(host, decomp)
    ta.mark_trainable(model)
    delta_params = {f"{n}.{p}" for n, d in ta.task_deltas(model) for p, _ in d.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == delta_params
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with ta.task_scope(model, IDS):
        masks(model, host_inputs()).square().mean().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= delta_params
