"""PEFT interop against the real `peft` package: T LoRA adapters -> one fitted delta per layer, and back."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from strategies import DECOMPS, randomize_
from torch import nn

peft = pytest.importorskip("peft")

import tensoradapt as ta  # noqa: E402
from tensoradapt.deltas import make_delta  # noqa: E402
from tensoradapt.interop import from_peft, lora_factors, read_peft_lora, to_peft  # noqa: E402
from tiny_hosts import randomize_deltas_  # noqa: E402

RANKS = {"cp": 4, "tucker": (2, 4, 4), "tt": (2, 4), "lora": 4, "shared-lora": 4}
LAYERS = r"blocks\.\d|head"


class Toy(nn.Module):
    """Three 16 x 16 linears and a 16 -> 6 head (the same weights on every construction)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.head = nn.Linear(16, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


X = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))


def peft_adapter(base: nn.Module, folder, config, seed: int, std: float = 0.3):
    """Save a PEFT LoRA of `base` with random A and B; return PEFT's own output on X."""
    model = peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    model.save_pretrained(folder)
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three single-task LoRAs of Toy: different ranks, rsLoRA and an alpha pattern, one without the head."""
    root = tmp_path_factory.mktemp("peft")
    configs = [
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["blocks.0", "blocks.1", "blocks.2", "head"]),
        peft.LoraConfig(r=3, lora_alpha=6, use_rslora=True, alpha_pattern={"head": 1.5},
                        target_modules=["blocks.0", "blocks.1", "blocks.2", "head"]),
        peft.LoraConfig(r=4, lora_alpha=4, target_modules=["blocks.0", "blocks.1", "blocks.2"]),
    ]
    dirs = [root / f"task{t}" for t in range(3)]
    outputs = [peft_adapter(Toy(), d, c, seed=t) for t, (d, c) in enumerate(zip(dirs, configs))]
    return dirs, outputs


def routed(model, task):
    with torch.no_grad(), ta.task_scope(model, task):
        return model(X)


# Ranks at which each decomposition holds the three updates exactly (task rank 3, the updates' ranks 2+3+4).
LOSSLESS = {
    "lora": 4,
    "tucker": {"blocks.0": (3, 9, 9), "blocks.1": (3, 9, 9), "blocks.2": (3, 9, 9), "head": (2, 5, 5)},
    "tt": (3, 9),
}


@pytest.mark.parametrize("decomp", list(LOSSLESS))
def test_lossless_fit_reproduces_every_peft_adapter(adapters, decomp):
    dirs, outputs = adapters
    model, report = from_peft(dirs, Toy(), decomp=decomp, ranks=LOSSLESS[decomp])
    assert [f.name for f in report.layers] == ["blocks.0", "blocks.1", "blocks.2", "head"]
    assert report.layers[-1].lora_ranks == (2, 3, 0) and report.relative_error < 1e-6
    assert "head" in report.summary()
    model.eval()
    for t, expected in enumerate(outputs):
        torch.testing.assert_close(routed(model, t), expected, atol=1e-5, rtol=1e-5)


def test_peft_scaling_rules_are_read(adapters):
    """lora_alpha / r, rsLoRA's lora_alpha / sqrt(r) and alpha_pattern."""
    dirs, _ = adapters
    assert read_peft_lora(dirs[0]).layers["blocks.1"][2] == pytest.approx(4 / 2)
    assert read_peft_lora(dirs[1]).layers["blocks.1"][2] == pytest.approx(6 / 3 ** 0.5)
    assert read_peft_lora(dirs[1]).layers["head"][2] == pytest.approx(1.5 / 3 ** 0.5)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_to_peft_loads_in_peft_with_the_same_outputs(decomp, tmp_path):
    model = ta.adapt(Toy(), LAYERS, decomp=decomp, num_tasks=3, ranks=RANKS[decomp], scale=0.5)
    randomize_deltas_(model)
    folders = to_peft(model, tmp_path, task_names=["seg", "depth", "normal"])
    assert [f.name for f in folders] == ["seg", "depth", "normal"]
    for t, folder in enumerate(folders):
        with torch.no_grad():
            theirs = peft.PeftModel.from_pretrained(Toy(), folder).eval()(X)
        torch.testing.assert_close(theirs, routed(model, t), atol=1e-5, rtol=1e-5)
    back, report = from_peft(folders, Toy(), decomp="lora", ranks=4)  # each task's delta has rank <= 4
    assert report.relative_error < 1e-6
    for t in range(3):
        torch.testing.assert_close(routed(back, t), routed(model, t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_lora_factors_are_exact(decomp):
    delta = randomize_(make_delta(decomp, (3, 10, 7), RANKS[decomp]).double())
    for t in range(3):
        A, B = lora_factors(delta, t)
        assert A.shape[1] == 7 and B.shape[0] == 10 and A.shape[0] == B.shape[1]
        torch.testing.assert_close(B @ A, delta.matrix(t))


def test_host_round_trip_with_a_fused_qkv_subset(tmp_path):
    """A transformers SamModel whose deltas cover q and v of the fused qkv only: PEFT sees zero k rows."""
    pytest.importorskip("transformers")
    from tiny_hosts import build_host, host_inputs, masks

    model = ta.adapt(build_host("sam"), r"vision_encoder\.layers\.\d+\.attn\.qkv", decomp="tucker", num_tasks=2,
                     ranks=(2, 4, 4), qkv="qv")
    randomize_deltas_(model)
    inputs = host_inputs()
    for t, folder in enumerate(to_peft(model, tmp_path)):
        with torch.no_grad(), ta.task_scope(model, t):
            ours = masks(model, inputs)
            theirs = masks(peft.PeftModel.from_pretrained(build_host("sam"), folder).eval(), inputs)
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- compression
class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(48, 48)

    def forward(self, x):
        return self.lin(x)


def lora_family(root, correlated: bool, T: int = 4, r: int = 4, noise: float = 0.01):
    """T rank-r LoRAs of Wide: independent random factors, or factors drawn in shared 8-dim row / column spaces
    (single-task LoRAs fine-tuned from one base on related tasks) plus a little independent noise."""
    g = torch.Generator().manual_seed(7)
    U, V = torch.randn(48, 8, generator=g), torch.randn(8, 48, generator=g)
    dirs = []
    for t in range(T):
        model = peft.get_peft_model(Wide(), peft.LoraConfig(r=r, lora_alpha=r, target_modules=["lin"]))
        lin = model.base_model.model.lin
        with torch.no_grad():
            if correlated:
                lin.lora_B["default"].weight.copy_(U @ torch.randn(8, r, generator=g) / 8)
                lin.lora_A["default"].weight.copy_(torch.randn(r, 8, generator=g) @ V / 8)
            for p in (lin.lora_A["default"].weight, lin.lora_B["default"].weight):
                p.add_(torch.randn(p.shape, generator=g) * (noise if correlated else 1.0))
        model.save_pretrained(root / f"{'corr' if correlated else 'rand'}{t}")
        dirs.append(root / f"{'corr' if correlated else 'rand'}{t}")
    return dirs


def test_tucker_compresses_correlated_loras_not_independent_ones(tmp_path):
    """One Tucker tensor of ranks (4, 8, 8) is 1.5x smaller than the four rank-4 LoRAs: it holds LoRAs that share
    their subspaces almost exactly and loses most of four independent ones (their updates span 16 dimensions)."""
    _, rand = from_peft(lora_family(tmp_path, correlated=False), Wide(), decomp="tucker", ranks=(4, 8, 8))
    _, corr = from_peft(lora_family(tmp_path, correlated=True), Wide(), decomp="tucker", ranks=(4, 8, 8))
    assert rand.compression == corr.compression > 1.4
    assert corr.relative_error < 0.05 < 0.4 < rand.relative_error


# ----------------------------------------------------------------------------- errors
def test_unsupported_peft_settings_are_named(adapters, tmp_path):
    dirs, _ = adapters
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / f).write_bytes((dirs[0] / f).read_bytes())
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        read_peft_lora(tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        read_peft_lora(tmp_path / "nowhere")


def test_adapters_of_another_model_are_refused_before_any_change(adapters):
    dirs, _ = adapters

    class Other(Toy):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(20, 6)

    other = Other()
    with pytest.raises(ValueError, match="head.*same base model"):
        from_peft(dirs, other, decomp="lora", ranks=4)
    plain = Toy()
    with pytest.raises(ValueError, match="r_out"):
        from_peft(dirs, plain, decomp="tucker", ranks=(3, 9, 9))  # head has d_out 6
    assert not list(ta.task_linears(plain))
    with pytest.raises(ValueError, match="missing.*head"):
        from_peft(dirs, plain, decomp="tucker", ranks={"blocks.0": (3, 9, 9)})
    del plain.blocks[2]
    with pytest.raises(ValueError, match="blocks.2.*no such module"):
        from_peft(dirs, plain, decomp="lora", ranks=4)


def test_to_peft_refuses_unadapted_merged_and_misnamed(tmp_path):
    with pytest.raises(ValueError, match="no TaskLinear"):
        to_peft(Toy(), tmp_path)
    model = ta.adapt(Toy(), LAYERS, decomp="lora", num_tasks=2, ranks=2)
    with pytest.raises(ValueError, match="task_names"):
        to_peft(model, tmp_path, task_names=["only-one"])
    ta.merge_adapters(model, 0)
    with pytest.raises(RuntimeError, match="unmerge"):
        to_peft(model, tmp_path)


def test_to_peft_refuses_adapted_attention_instead_of_dropping_it(tmp_path):
    host = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    ta.adapt(host, ["linear1"], decomp="lora", num_tasks=2, ranks=2)
    ta.adapt(host, ["self_attn"], decomp="lora", num_tasks=2, ranks=2, qkv="qv")
    with pytest.raises(ValueError, match=r"attention projections"):
        to_peft(host, tmp_path)
    assert not any(tmp_path.iterdir()), "nothing may be written"
