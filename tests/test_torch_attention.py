"""torch's own attention: an adapted `nn.MultiheadAttention`, and fused fast paths that must not bypass a delta."""
from __future__ import annotations

import copy

import pytest
import torch
from strategies import randomize_
from torch import nn

import tensoradapt as ta
from tensoradapt import CPDelta, TaskMultiheadAttention, TuckerDelta

E, HEADS, T = 16, 4, 3


def small_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random deltas of a modest size (the zero start would make every check trivial)."""
    for i, (_, d) in enumerate(ta.task_deltas(model)):
        randomize_(d, seed + i)
        with torch.no_grad():
            for p in d.parameters():
                p.mul_(0.3)
    return model


def merged_reference(base: nn.MultiheadAttention, attn: TaskMultiheadAttention, task: int) -> nn.MultiheadAttention:
    """A plain copy of `base` whose weights hold `scale * delta[task]` on the adapted rows: the reference."""
    ref = copy.deepcopy(base).requires_grad_(False)
    with torch.no_grad():
        if attn.in_adapter is not None:
            rows = attn.in_adapter.rows or list(range(3 * E))
            ref.in_proj_weight[rows] += attn.in_adapter.scale * attn.in_adapter.delta.matrix(task)
        if attn.out_adapter is not None:
            ref.out_proj.weight += attn.out_adapter.scale * attn.out_adapter.delta.matrix(task)
    return ref


# (batch_first, bias, add_bias_kv, add_zero_attn, inputs, attn_mask, key_padding_mask, need_weights, is_causal)
CASES = {
    "self": (False, True, False, False, "self", None, False, False, False),
    "self-batch-first-weights": (True, True, False, False, "self", None, False, True, False),
    "causal-sdpa": (True, True, False, False, "self", "bool", False, False, True),
    "causal-padding-weights": (False, True, False, False, "self", "bool", True, True, True),
    "float-masks": (True, True, False, False, "self", "float", True, False, False),
    "shared-kv": (True, True, False, False, "kv", None, True, False, False),
    "cross-qkv": (False, True, False, False, "all", "bool", False, True, False),
    "no-bias": (True, False, False, False, "self", None, True, False, False),
    "bias-kv-zero-attn": (False, True, True, True, "self", "bool", True, True, False),
    "bias-kv-sdpa": (True, True, True, True, "kv", None, True, False, False),
    "unbatched": (False, True, False, False, "self", "bool", True, True, False),
}


def case(name: str, seed: int = 0):
    """(plain MHA, its adapted copy with random deltas on q, v and out_proj, inputs, forward kwargs)."""
    bf, bias, bias_kv, zero, inputs, mask, padding, weights, causal = CASES[name]
    torch.manual_seed(seed)
    base = nn.MultiheadAttention(E, HEADS, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero, batch_first=bf)
    attn = TaskMultiheadAttention(
        copy.deepcopy(base), TuckerDelta((T, 2 * E, E), (2, 3, 3)), CPDelta((T, E, E), 3), qkv="qv", scale=0.5,
    )
    N, L, S = 3, 5, 6
    unbatched = name == "unbatched"
    shape = (lambda n: (n, E)) if unbatched else (lambda n: (N, n, E) if bf else (n, N, E))
    q = torch.randn(shape(L))
    k = q if inputs == "self" else torch.randn(shape(S))
    v = k if inputs != "all" else torch.randn(shape(S))
    src = L if inputs == "self" else S
    kw = dict(need_weights=weights, is_causal=causal, average_attn_weights=name != "cross-qkv")
    if mask is not None:
        causal_mask = torch.ones(L, src, dtype=torch.bool).triu(1)
        kw["attn_mask"] = causal_mask if mask == "bool" else torch.zeros(L, src).masked_fill(causal_mask, -1e4)
    if padding:
        pad = torch.zeros((src,) if unbatched else (N, src), dtype=torch.bool)
        pad[..., -2:] = True
        kw["key_padding_mask"] = pad if mask != "float" else torch.zeros(pad.shape).masked_fill(pad, -1e4)
    return base, attn, (q, k, v), kw


def assert_same_outputs(a, b, exact: bool) -> None:
    check = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-5))
    assert check(a[0], b[0]), (a[0] - b[0]).abs().max()
    assert (a[1] is None) == (b[1] is None) and (a[1] is None or check(a[1], b[1]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_delta_is_bit_identical_to_torch_attention(name):
    """Frozen projections run as torch runs them (same kernels and layouts): a zero delta changes no bit.
    Train mode: torch's fused eval kernel is a different computation (equal to ~1e-7)."""
    base, attn, inputs, kw = case(name)
    ref = copy.deepcopy(base).requires_grad_(False).train()
    attn.in_adapter.delta.reset_parameters()
    attn.out_adapter.delta.reset_parameters()
    ta.set_task(attn, 1)
    assert_same_outputs(attn.train()(*inputs, **kw), ref(*inputs, **kw), exact=True)


@pytest.mark.parametrize("mode", ["train", "eval", "eval-no-grad"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_deltas_match_torch_attention_with_merged_weights(name, mode):
    """The reference: torch's own MultiheadAttention (in eval + no_grad, its fused kernel) on weights that
    hold `scale * delta[t]` in the adapted rows of in_proj_weight and in out_proj.weight."""
    base, attn, inputs, kw = case(name)
    small_(attn)
    ref = merged_reference(base, attn, task=2)
    attn.train(mode == "train")
    ref.train(mode == "train")
    ta.set_task(attn, 2)
    with torch.set_grad_enabled(mode != "eval-no-grad"):
        assert_same_outputs(attn(*inputs, **kw), ref(*inputs, **kw), exact=False)


def test_attention_dropout_matches_torch_in_train_mode():
    base, attn, inputs, kw = case("bias-kv-zero-attn")
    base.dropout = attn.dropout = 0.3  # the attention's own dropout, on its weights
    small_(attn)
    ref = merged_reference(base, attn, task=0).train()
    ta.set_task(attn, 0)
    outputs = []
    for module in (attn.train(), ref):
        torch.manual_seed(5)
        outputs.append(module(*inputs, **kw))
    assert_same_outputs(*outputs, exact=False)
    assert not torch.allclose(outputs[0][0], attn.eval()(*inputs, **kw)[0])  # the dropout did act


class Attend(nn.Module):
    """A host whose attention is a child module (adapt replaces children)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("decomp,ranks", [("tucker", (2, 3, 3)), ("tt", (2, 3)), ("lora", 3)])
@pytest.mark.parametrize("batch_first", [True, False])
def test_mixed_task_batch_equals_per_task_batches(batch_first, decomp, ranks):
    """Per-sample ids route along the batch dim whatever the layout, k = 2 windows per id (B' = k B)."""
    torch.manual_seed(0)
    model = small_(ta.adapt(Attend(batch_first), ["attn", "out_proj"], decomp=decomp, num_tasks=T, ranks=ranks,
                            qkv="kv"))
    B, k, L = 3, 2, 5
    ids = torch.tensor([2, 0, 1])
    x = torch.randn(B * k, L, E) if batch_first else torch.randn(L, B * k, E)
    with ta.task_scope(model, ids):
        mixed = model(x)
    batch_dim = 0 if batch_first else 1
    for i in range(B):
        rows = torch.arange(i * k, (i + 1) * k)
        with ta.task_scope(model, int(ids[i])):
            torch.testing.assert_close(mixed.index_select(batch_dim, rows), model(x.index_select(batch_dim, rows)))


@pytest.mark.parametrize("qkv", ["q", "k", "v", "qv", "qkv"])
def test_qkv_subsets_adapt_exactly_those_rows_and_merge_equals_the_factored_forward(qkv):
    torch.manual_seed(0)
    model = small_(ta.adapt(Attend(True), ["attn"], decomp="cp", num_tasks=T, ranks=3, qkv=qkv))
    attn = model.attn
    assert attn.out_adapter is None and isinstance(attn.out_proj, nn.Linear)
    w0 = attn.in_proj_weight.detach().clone()
    x = torch.randn(2, 5, E)
    ta.set_task(model, 1)
    factored = model(x)
    ta.merge_adapters(model, 1)
    for i, part in enumerate("qkv"):
        changed = not torch.equal(attn.in_proj_weight[i * E:(i + 1) * E], w0[i * E:(i + 1) * E])
        assert changed == (part in qkv), part
    torch.testing.assert_close(model(x), factored, rtol=1e-5, atol=1e-5)
    ta.unmerge_adapters(model)
    assert torch.equal(attn.in_proj_weight, w0) and not attn.in_adapter.merged


def test_fully_merged_attention_runs_torchs_own_forward_and_refuses_other_tasks():
    base, attn, inputs, kw = case("self-batch-first-weights")
    small_(attn)
    ta.merge_adapters(attn, 2)
    plain = copy.deepcopy(base).requires_grad_(False)
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "adapter" not in k})
    ta.set_task(attn, 2)
    assert_same_outputs(attn(*inputs, **kw), plain(*inputs, **kw), exact=True)
    ta.set_task(attn, 0)
    with pytest.raises(RuntimeError, match="merged for task 2 but task 0"):
        attn(*inputs, **kw)


def test_state_dict_keeps_the_attention_keys_and_only_deltas_train():
    torch.manual_seed(0)
    plain = Attend(True)
    model = ta.adapt(copy.deepcopy(plain), ["attn", "attn.out_proj"], decomp="tucker", num_tasks=T, ranks=(2, 3, 3))
    keys = set(model.state_dict())
    assert set(plain.state_dict()) <= keys
    assert keys - set(plain.state_dict()) == set(ta.adapter_state_dict(model))
    assert all(".delta." in k for k in ta.adapter_state_dict(model))
    small_(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with ta.task_scope(model, torch.tensor([0, 2])):
        model(torch.randn(2, 5, E)).square().sum().backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(ta.adapter_state_dict(model))


def encoder(batch_first: bool = True, dropout: float = 0.1) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=32, dropout=dropout, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2)  # enable_nested_tensor (torch's default) left on


def adapted_encoder(**kw) -> nn.TransformerEncoder:
    model = ta.adapt(encoder(**kw), ["self_attn", "out_proj"], decomp="tucker", num_tasks=T, ranks=(2, 3, 3), qkv="qv")
    return small_(ta.adapt(model, ["linear1", "linear2"], decomp="cp", num_tasks=T, ranks=3))


@pytest.mark.parametrize("masks", ["none", "padding", "causal", "padding+causal"])
def test_encoder_fast_path_never_bypasses_the_deltas(masks):
    """eval + no_grad + batch_first is torch's fused TransformerEncoderLayer path (and, with a padding mask,
    its nested-tensor packing): the adapted encoder must give what the same model gives in train mode
    without dropout (the unfused computation), and not what the base model gives."""
    x = torch.randn(3, 6, E)
    kw = {}
    if "padding" in masks:
        pad = torch.zeros(3, 6, dtype=torch.bool)
        pad[0, -2:] = pad[2, -1:] = True
        kw["src_key_padding_mask"] = pad
    if "causal" in masks:
        kw["mask"] = nn.Transformer.generate_square_subsequent_mask(6)
        kw["is_causal"] = True
    base = encoder(dropout=0.0).eval()
    model = adapted_encoder(dropout=0.0)
    ids = torch.tensor([1, 0, 2])
    with ta.task_scope(model, ids):
        reference = model.train()(x, **kw)
        with torch.no_grad():
            fast = model.eval()(x, **kw)
            plain = base(x, **kw)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    real = ~kw.get("src_key_padding_mask", torch.zeros(3, 6, dtype=torch.bool))  # the base zeroes padded tokens
    assert (fast - plain)[real].abs().max() > 1e-2


def test_encoder_layers_adapted_one_by_one_refuse_nested_input():
    """An encoder that `adapt` never saw keeps packing padded batches: the adapted layer says so."""
    model = encoder().eval()
    for layer in model.layers:
        ta.adapt(layer, ["linear1"], decomp="cp", num_tasks=T, ranks=2)
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[1, -1] = True
    with ta.task_scope(model, 0), torch.no_grad(), pytest.raises(ValueError, match="use_nested_tensor=False"):
        model(torch.randn(2, 4, E), src_key_padding_mask=pad)
    model.use_nested_tensor = False
    with ta.task_scope(model, 0), torch.no_grad():
        model(torch.randn(2, 4, E), src_key_padding_mask=pad)


@pytest.mark.parametrize("batch_first", [True, False])
def test_save_load_round_trip_rebuilds_attention_adapters(batch_first, tmp_path):
    model = adapted_encoder(batch_first=batch_first).eval()
    ta.save_adapter(model, tmp_path)
    fresh = ta.load_adapter(encoder(batch_first=batch_first).eval(), tmp_path)
    assert isinstance(fresh.layers[1].self_attn, TaskMultiheadAttention)
    assert fresh.layers[1].self_attn.in_adapter.rows == model.layers[1].self_attn.in_adapter.rows
    x = torch.randn(3, 4, E) if batch_first else torch.randn(4, 3, E)
    ids = torch.tensor([0, 2, 1]) if batch_first else 2  # TaskLinear routes ids along dim 0 (the sequence here)
    with ta.task_scope(model, ids), ta.task_scope(fresh, ids), torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_adapting_an_adapted_attention_adds_the_projection_it_lacks():
    model = ta.adapt(Attend(True), ["attn"], decomp="cp", num_tasks=T, ranks=2, qkv="q")
    attn = model.attn
    ta.adapt(model, ["out_proj"], decomp="cp", num_tasks=T, ranks=2)
    assert model.attn is attn and attn.out_adapter is not None and attn.in_adapter.rows == list(range(E))
    with pytest.raises(ValueError, match="adapted before"):
        ta.adapt(model, ["attn", "out_proj"], decomp="cp", num_tasks=T, ranks=2)
    assert [c.layers for c in model.tensoradapt_configs] == [["attn"], ["attn.out_proj"]]


def test_routed_attention_compiles_without_graph_breaks():
    model = small_(ta.adapt(Attend(True), ["attn", "out_proj"], decomp="tucker", num_tasks=T, ranks=(2, 3, 3)))
    ta.set_task(model, torch.tensor([0, 2]))
    explanation = torch._dynamo.explain(model)(torch.randn(2, 5, E))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ----------------------------------------------------------------------------- freeze_base
def test_adapt_freezes_everything_but_the_deltas_by_default():
    model = adapted_encoder()
    delta_ids = {id(p) for _, d in ta.task_deltas(model) for p in d.parameters()}
    assert delta_ids and all(p.requires_grad == (id(p) in delta_ids) for p in model.parameters())
    n = sum(p.numel() for p in model.parameters() if id(p) in delta_ids)
    assert ta.trainable_parameters_report(model).startswith(f"trainable params: {n:,} ||")
    assert ta.mark_trainable(model, extra=r"norm1") > n  # mark_trainable still picks extras


def test_freeze_base_false_leaves_the_host_as_it_was():
    model = encoder()
    model.layers[0].norm2.requires_grad_(False)
    ta.adapt(model, ["self_attn", "linear1"], decomp="cp", num_tasks=T, ranks=2, freeze_base=False)
    layer = model.layers[0]
    assert layer.norm1.weight.requires_grad and layer.linear2.weight.requires_grad
    assert not layer.norm2.weight.requires_grad
    # the adapted projections' own weights are frozen either way
    assert not layer.self_attn.in_proj_weight.requires_grad and not layer.linear1.base.weight.requires_grad
    assert layer.self_attn.out_proj.weight.requires_grad  # not adapted


@pytest.mark.parametrize("freeze_base", [True, False])
def test_adapter_config_round_trips_freeze_base(freeze_base, tmp_path):
    model = ta.adapt(encoder(), ["self_attn"], decomp="cp", num_tasks=T, ranks=2, qkv="qv", freeze_base=freeze_base)
    config = model.tensoradapt_configs[0]
    assert ta.AdapterConfig.from_json(config.to_json()) == config and config.freeze_base is freeze_base
    ta.save_adapter(model, tmp_path)
    fresh = ta.load_adapter(encoder(), tmp_path)
    assert fresh.tensoradapt_configs[0].freeze_base is freeze_base
    assert fresh.layers[0].norm1.weight.requires_grad is not freeze_base


@pytest.mark.parametrize("batch_first", [False, True])
def test_linears_of_a_sequence_first_layer_route_ids_along_the_batch(batch_first):
    # S = 4 is a multiple of B = 2: routing along the wrong dim would not raise, it would mix the samples up
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    ta.adapt(layer, ["linear1", "linear2"], decomp="tucker", num_tasks=3, ranks=(2, 4, 4))
    ta.adapt(layer, ["self_attn"], decomp="tucker", num_tasks=3, ranks=(2, 4, 4), qkv="qv")
    with torch.no_grad():
        for _, d in ta.task_deltas(layer):
            for p in d.parameters():
                p.normal_(0, 0.3)
    assert [lin.batch_dim for _, lin in ta.task_linears(layer)] == [0 if batch_first else 1] * 2
    x = torch.randn(2, 4, 16) if batch_first else torch.randn(4, 2, 16)
    ids = torch.tensor([2, 0])
    layer.train()  # the unfused path; dropout is 0
    with ta.task_scope(layer, ids):
        mixed = layer(x)
    for b, t in enumerate(ids.tolist()):
        xb = x[b:b + 1] if batch_first else x[:, b:b + 1]
        with ta.task_scope(layer, t):
            alone = layer(xb)
        got = mixed[b:b + 1] if batch_first else mixed[:, b:b + 1]
        torch.testing.assert_close(got, alone, atol=1e-6, rtol=1e-6)
