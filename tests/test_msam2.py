"""mSAM-2 (the paper's multi-task SAM on transformers' SAM 2): the mSAM battery on the `sam2_cpu` config.

Shapes, zero-init equals promptless SAM 2, mixed-task batch equals per-task passes (Hiera's windows change
per stage), only trainable tensors change, save / load, checkpoint errors, the official sizes on meta."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tensoradapt import merge_adapters, task_linears, unmerge_adapters
from tensoradapt._utils import trainable_state_dict
from tensoradapt.sam import (
    DECOMPS, NO_DELTA, SAM2_MODEL_TYPES, MSamConfig, MultiTaskSAM, MultiTaskSAM2, SamCheckpointError, build_msam,
    build_sam2, get_sam2_config, load_msam, msam_from_config, save_msam,
)
from tensoradapt.sam.serialization import MSAM_WEIGHTS

from msam_fixtures import SMALL, mixed_batch_equals_folded, randomise_deltas
from tiny_hosts import randomize_

CPU = "sam2_cpu"
X = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))


def _redraw(model: torch.nn.Module, seed: int = 0) -> None:
    randomize_(model, seed)


@pytest.fixture(scope="module")
def sam2() -> torch.nn.Module:
    """A random `sam2_cpu` Sam2Model at a sensible scale, eager attention, returning mask token 0."""
    model = build_sam2(CPU, attention="sam")
    _redraw(model)
    model.mask_decoder.dynamic_multimask_via_stability = False
    return model


@pytest.fixture(scope="module")
def folder(sam2, tmp_path_factory) -> Path:
    """`sam2` as a transformers-format folder (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("sam2") / "sam2_cpu"
    sam2.save_pretrained(path)
    return path


def _promptless(sam2, pre: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sam2Model's own prediction without a prompt (mask token 0), resized as SAM 2's processor does."""
    low = sam2(pixel_values=pre, multimask_output=False).pred_masks[:, 0]
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(96, 128), (128, 128), (50, 70), (288, 384)])
def test_output_shapes(size):
    torch.manual_seed(0)
    model = build_msam(CPU, SMALL).eval()
    assert isinstance(model, MultiTaskSAM2)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        s0, s1, emb = model.encode(x, "b")
    assert list(out) == list(SMALL)
    for name, c in SMALL.items():
        assert out[name].shape == (2, c, *size) and torch.isfinite(out[name]).all()
    D, S = 64, 128
    assert (s0.shape, s1.shape, emb.shape) == ((2, D, S // 4, S // 4), (2, D, S // 8, S // 8), (2, D, S // 16, S // 16))


def test_config_json_round_trip_and_image_size():
    model = build_msam(CPU, SMALL, decomp="tt", qkv="qv", image_size=160)
    cfg = model.msam_config
    again = MSamConfig.from_json(cfg.to_json())
    assert again == cfg and again.sam == get_sam2_config(CPU, 160) and again.ranks == (4, 8)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 40, 60))["a"].shape == (1, 3, 40, 60)


@pytest.mark.parametrize("name", SAM2_MODEL_TYPES)
def test_official_sizes_on_meta(name):
    """Every size builds (on the meta device: counts only) with a delta in every Hiera block's qkv."""
    cfg = get_sam2_config(name)
    with torch.device("meta"):
        model = build_msam(name, {"semantic": 13, "depth": 1, "normal": 3})
    qkv = [n for n, _ in task_linears(model)]
    assert qkv == [f"image_encoder.backbone.blocks.{i}.attn.qkv" for i in range(cfg.depth)]
    with torch.device("meta"):
        plain = build_sam2(name)
    encoder = sum(p.numel() for p in plain.vision_encoder.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("image_encoder.") and ".delta." not in n) == encoder
    first = next(task_linears(model))[1]
    assert (first.in_features, first.out_features) == (cfg.embed_dim_per_stage[0], 3 * cfg.embed_dim_per_stage[0])


# --------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("decomp", DECOMPS)
def test_zero_deltas_bit_identical_to_plain_encoder(sam2, folder, decomp):
    model = build_msam(CPU, SMALL, checkpoint=folder, decomp=decomp, attention="sam").eval()
    with torch.no_grad():
        pre, _ = model.preprocess(X)
        ref = sam2.vision_encoder(pre).fpn_hidden_states
        for task in SMALL:
            s0, s1, emb = model.encode(X, task)
            assert torch.equal(s0, ref[0]) and torch.equal(s1, ref[1]), task
            assert torch.equal(emb, ref[2] + sam2.no_memory_embedding.view(1, -1, 1, 1)), task


def test_forward_at_init_equals_promptless_sam2(sam2, folder):
    """Every channel starts as SAM 2's own no-prompt prediction (PE, no-mask embed, padding points, no-memory
    embedding, the high-resolution features): bit-exact on one (image, channel) pair, to float tolerance
    for batched pairs (another GEMM batch shape rounds differently)."""
    model = build_msam(CPU, SMALL, checkpoint=folder, attention="sam").eval()
    with torch.no_grad():
        pre, _ = model.preprocess(X)
        ref = _promptless(sam2, pre, (96, 128))
        assert torch.equal(model.image_pe(), sam2.get_image_wide_positional_embeddings())
        assert torch.equal(model(X[:1], tasks=["b"])["b"], _promptless(sam2, pre[:1], (96, 128)))
        out = model(X)
    for name, c in SMALL.items():
        torch.testing.assert_close(out[name], ref.expand(-1, c, -1, -1), atol=1e-5, rtol=1e-5)


def test_fused_attention_default_equals_eager(sam2, folder):
    model = build_msam(CPU, SMALL, checkpoint=folder).eval()
    assert model.msam_config.attention == "auto"
    assert model.image_encoder.backbone.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref = _promptless(sam2, model.preprocess(X)[0], (96, 128))
        torch.testing.assert_close(model(X)["a"], ref.expand(-1, 3, -1, -1), atol=1e-4, rtol=1e-4)


def test_chunked_attention_is_refused_for_sam2():
    with pytest.raises(ValueError, match="attention 'chunked' applies to SAM"):
        build_msam(CPU, SMALL, attention="chunked")


@pytest.mark.parametrize("decomp", ["tucker", "cp", "tt", "lora"])
def test_mixed_task_batch_equals_per_task(folder, decomp):
    """B > 1 distinct images through Hiera's per-stage windows: the T*B batch must not mix samples up."""
    torch.manual_seed(2)
    model = build_msam(CPU, SMALL, checkpoint=folder, decomp=decomp).eval()
    randomise_deltas(model)
    x = torch.rand(3, 3, 96, 128)
    with torch.no_grad():
        mixed = model(x)
        levels = model._encode(model.preprocess(x)[0], [0, 1, 2])
        for k, name in enumerate(SMALL):
            for level, alone in zip(levels, model.encode(x, name)):
                torch.testing.assert_close(level[k * 3:(k + 1) * 3], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mixed[name], model(x, tasks=[name])[name], atol=1e-5, rtol=1e-5)
        assert (model.encode(x, "a")[2] - model.encode(x, "c")[2]).abs().max() > 1e-2  # the deltas are live


def test_every_target_in_hiera_routes_each_sample_to_its_task(folder):
    """Deltas in qkv, proj and the MLP of every Hiera block (through query pooling and the stage changes):
    the mixed T*B batch equals, task by task, the encoder with that task's deltas folded in."""
    torch.manual_seed(4)
    model = build_msam(CPU, SMALL, checkpoint=folder, targets=("qkv", "proj", "mlp")).eval()
    depth = model.config.depth
    assert {n for n, _ in task_linears(model)} == {
        f"image_encoder.backbone.blocks.{i}.{n}" for i in range(depth)
        for n in ("attn.qkv", "attn.proj", "mlp.proj_in", "mlp.proj_out")}
    randomise_deltas(model, std=0.2)
    levels = mixed_batch_equals_folded(model, torch.rand(2, 3, 96, 128))
    assert len(levels) == 3 and (levels[2][:2] - levels[2][2:4]).abs().max() > 1e-2  # the deltas are live


def test_qkv_rows_follow_the_windows_of_each_stage():
    """Which row counts each block's qkv sees: B' * (windows per image), k changing with the stage."""
    model = build_msam(CPU, SMALL).eval()
    rows: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0])) for _, layer in task_linears(model)]
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    # B' = 3 tasks x 2 images; a stage's first block pools after qkv with the previous stage's window:
    # block 0: window 8 on 32^2 (16 windows), 1: 8 on 32^2 (16), 2: 4 on 16^2 (16), 3: global, 4: 4 on 8^2 (4)
    assert rows == [6 * 16, 6 * 16, 6 * 16, 6, 6 * 4]


@pytest.mark.parametrize("decomp,rows", [("tucker", 6), ("shared-lora", 2), ("frozen", 2)])
def test_encoder_runs_once_and_patch_embedding_once(decomp, rows):
    model = build_msam(CPU, {"a": 3, "b": 1, "c": 2}, decomp=decomp).eval()
    seen = []
    trunk = model.image_encoder.backbone
    trunk.patch_embed.register_forward_hook(lambda m, a, o: seen.append(("patch", o.shape[0])))
    trunk.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(("block", o.shape[0])))
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    assert seen == [("patch", 2), ("block", rows)]


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("decomp", DECOMPS)
def test_one_step_changes_only_trainable(folder, decomp):
    torch.manual_seed(4)
    model = build_msam(CPU, SMALL, checkpoint=folder, decomp=decomp).train()
    if decomp not in NO_DELTA:
        randomise_deltas(model, std=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    sum(v.square().mean() for v in model(X).values()).backward()
    assert not sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    torch.optim.SGD(params, lr=1e-2).step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    frozen_heads = ("iou_prediction_head", "pred_obj_score_head", "output_hypernetworks_mlps.1")
    assert not any(h in n for n in trainable for h in frozen_heads)
    assert {"decoders.a.conv_s0.weight", "decoders.a.obj_score_token.weight"} <= trainable
    assert "no_memory_embedding" not in trainable and "not_a_point_embed" not in trainable
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    norms = {n for n in encoder if ".layer_norm" in n}
    if decomp == "frozen":
        assert not encoder
    elif decomp == "full":
        assert encoder == {n for n, _ in model.named_parameters() if n.startswith("image_encoder.")}
    else:
        assert len(norms) == 4 * 5 and encoder - norms == {n for n in encoder if ".delta." in n}


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    models = []
    for recompute in (False, True):
        torch.manual_seed(0)
        m = build_msam(CPU, {"s": 3, "d": 1}, dropout=0.0, grad_checkpointing=recompute).train()
        randomise_deltas(m, std=0.05)
        models.append(m)
    grads = []
    outs = []
    for m in models:
        out = m(X)
        sum(o.square().mean() for o in out.values()).backward()
        outs.append(out)
        grads.append([p.grad for p in m.parameters() if p.requires_grad])
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_cpu(folder):
    torch.manual_seed(6)
    model = build_msam(CPU, SMALL, checkpoint=folder).train()
    randomise_deltas(model, std=0.05)
    with torch.no_grad():
        ref = model.eval()(X)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(X)
        loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    for name, c in SMALL.items():
        assert out[name].shape == (2, c, 96, 128) and torch.isfinite(out[name]).all()
        assert (out[name].float() - ref[name]).abs().max() < 0.1 * ref[name].abs().max() + 0.1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_merged_encoder(folder):
    torch.manual_seed(10)
    model = build_msam(CPU, SMALL, checkpoint=folder).eval()
    randomise_deltas(model)
    with torch.no_grad():
        ref = model(X, tasks=["c"])["c"]
        merge_adapters(model, 2)
        torch.testing.assert_close(model(X, tasks=["c"])["c"], ref, atol=1e-4, rtol=1e-4)
        with pytest.raises(RuntimeError, match="merged"):
            model(X)
        unmerge_adapters(model)


# --------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("decomp", DECOMPS)
def test_round_trip_is_bit_exact(folder, tmp_path, decomp):
    model = build_msam(CPU, SMALL, checkpoint=folder, decomp=decomp)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    save_msam(model, tmp_path / "run")
    assert "pe_layer.positional_embedding" in trainable_state_dict(model)
    loaded = load_msam(tmp_path / "run")
    assert isinstance(loaded, MultiTaskSAM2) and loaded.msam_config == model.msam_config
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        oa, ob = model.eval()(X), loaded.eval()(X)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


def test_load_refuses_other_base_weights(sam2, folder, tmp_path):
    model = build_msam(CPU, SMALL, checkpoint=folder)
    save_msam(model, tmp_path / "run")
    state = {k: v.clone() for k, v in sam2.state_dict().items()}
    key = "vision_encoder.backbone.blocks.2.mlp.proj_in.weight"
    state[key] += 1e-3
    with pytest.raises(ValueError, match=r"differ in \['image_encoder\.backbone\.blocks\.2\.mlp\.proj_in\.weight'\]"):
        load_msam(tmp_path / "run", checkpoint=state)
    assert load_msam(tmp_path / "run", checkpoint=sam2.state_dict()).msam_config.tasks == SMALL
    save_msam(build_msam(CPU, SMALL), tmp_path / "random", include_frozen=True)
    assert (tmp_path / "random" / MSAM_WEIGHTS).is_file() and load_msam(tmp_path / "random").num_tasks == 3


# --------------------------------------------------------------------------------------------- errors
def test_checkpoint_errors(sam2, folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        build_msam(CPU, SMALL, checkpoint=folder / "model.safetensors")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["backbone_config"]["global_attention_blocks"] = [2]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(SamCheckpointError, match=r"global_attention_blocks: \[2\] vs \[3\]"):
        build_msam(CPU, SMALL, checkpoint=other)
    state = dict(sam2.state_dict())
    state["memory_attention.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)  # a video checkpoint's: ignored
    build_msam(CPU, SMALL, checkpoint=state)
    del state["mask_decoder.conv_s0.weight"]
    state["mask_decoder.extra"] = torch.zeros(1)
    with pytest.raises(SamCheckpointError, match=r"missing keys \(1\): mask_decoder\.conv_s0\.weight[\s\S]*unexpected keys \(1\): mask_decoder\.extra"):
        build_msam(CPU, SMALL, checkpoint=state)
    with pytest.raises(SamCheckpointError, match=r"shape mismatches \(\d+\): vision_encoder\.backbone\.blocks\.0\.attn\.proj\.bias: checkpoint \(16,\) vs model \(32,\)"):
        build_msam(get_sam2_config(CPU).replace(embed_dim_per_stage=(32, 32, 64, 128)), SMALL, checkpoint=sam2.state_dict())


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"model_type": "sam2_hiera_huge"}, r"model_type must be one of \[.*'vit_b'.*'sam2_hiera_tiny'"),
        ({"image_size": 100}, "image_size must be a positive multiple of 32"),
        ({"decomp": "lora", "ranks": 999}, "ranks"),
        ({"qkv": "qq"}, "qkv"),
    ],
)
def test_build_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_msam(**{"model_type": CPU, "tasks": SMALL, **kwargs})


def test_the_model_class_must_fit_the_architecture():
    config = build_msam(CPU, SMALL).msam_config
    with pytest.raises(TypeError, match="MultiTaskSAM needs msam_config.sam to be a SamConfig, got Sam2HieraConfig"):
        MultiTaskSAM(config)
    assert isinstance(msam_from_config(config), MultiTaskSAM2)


@pytest.mark.parametrize(
    "changes,pattern",
    [
        ({"window_size_per_stage": (6, 4, 4, 2)}, r"token grid 32 must be a multiple of window_size_per_stage\[0\]=6"),
        ({"blocks_per_stage": (1, 1, 2)}, "blocks_per_stage must be 4 positive ints"),
        ({"num_heads_per_stage": (3, 1, 2, 4)}, "divisible by num_heads_per_stage"),
        ({"global_attention_blocks": (5,)}, r"global_attention_blocks \[5\] outside \[0, depth=5\)"),
        ({"prompt_embed_dim": 60}, "prompt_embed_dim=60 must be a multiple of 8"),
    ],
)
def test_config_errors(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_sam2_config(CPU).replace(**changes)


def test_decode_equals_the_sam2_decoder_per_image_and_channel(folder):
    """The batched B*C_t pairs keep each (image, channel) together: pair by pair through Sam2MaskDecoder."""
    torch.manual_seed(1)
    model = build_msam(CPU, SMALL, checkpoint=folder).eval()
    randomise_deltas(model)
    with torch.no_grad():
        s0, s1, emb = model.encode(X, "a")
        mine = model.decode("a", (s0, s1, emb))
        dec, no_mask, pe = model.decoders["a"], model.no_mask_embeds["a"], model.image_pe()
        sparse = model.not_a_point_embed.view(1, 1, 1, -1).expand(1, 1, 2, -1)
        for b in range(2):
            high = [dec.conv_s0(s0[b:b + 1]), dec.conv_s1(s1[b:b + 1])]
            for c in range(3):
                ref = dec(emb[b:b + 1], pe, sparse, no_mask[c].view(1, -1, 1, 1), False, high)[0]
                torch.testing.assert_close(mine[b, c], ref[0, 0, 0], atol=1e-5, rtol=1e-5)
    assert mine.shape == (2, 3, 32, 32) and (mine[:, 0] - mine[:, 1]).abs().max() > 1e-3
