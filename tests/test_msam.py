"""mSAM on the tiny config: shapes, equivalence with segment_anything, checkpoints, what trains, save/load."""
from __future__ import annotations

import json

import pytest
import torch

from tensoradapt import TaskLinear, merge_adapters, task_deltas, task_scope, unmerge_adapters
from tensoradapt.sam import (
    DECOMPS, MSamConfig, MultiTaskSAM, SamCheckpointError, build_msam, build_sam, get_sam_config,
    load_msam, parameter_breakdown, save_msam,
)
from tensoradapt.sam._import import sam_build_module

TASKS = {"semantic": 13, "depth": 1, "normal": 3}
SMALL = {"a": 3, "b": 1, "c": 2}



@pytest.fixture(scope="module")
def sam():
    """A random tiny SAM with non-zero position tables (SAM zero-inits rel_pos), in eval mode."""
    torch.manual_seed(0)
    model = build_sam("tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def ckpt(sam, tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def _randomise_deltas(model, std=0.3):
    with torch.no_grad():
        for _, d in task_deltas(model):
            for p in d.parameters():
                p.normal_(0.0, std)
        for p in model.no_mask_embeds.values():
            p.add_(torch.randn_like(p))


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(96, 128), (128, 96), (288, 384), (50, 70), (128, 128)])
def test_output_shapes_and_channels(size):
    torch.manual_seed(0)
    model = build_msam("tiny", TASKS).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert list(out) == list(TASKS) == model.task_names
    for name, c in TASKS.items():
        assert out[name].shape == (2, c, *size)
        assert torch.isfinite(out[name]).all()
    g = model.config.grid_size
    assert model.encode(x, "depth").shape == (2, model.config.prompt_embed_dim, g, g)
    with torch.no_grad():
        sub = model(x, tasks=["normal"])
    assert list(sub) == ["normal"]


def test_config_json_round_trip():
    model = build_msam("tiny", TASKS, decomp="tt", qkv="qv")
    cfg = model.msam_config
    again = MSamConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.ranks == (4, 8) and again.sam == get_sam_config("tiny")
    assert model.config is cfg.sam


# --------------------------------------------------------------------------------------------- equivalence
def test_preprocess_matches_sam(sam):
    model = build_msam("tiny", SMALL, decomp="frozen")
    x = torch.rand(2, 3, 96, 128)
    pre, resized = model.preprocess(x)
    assert resized == (96, 128)
    assert torch.equal(pre, sam.preprocess(x * 255))


@pytest.mark.parametrize("decomp", DECOMPS)
def test_zero_deltas_bit_identical_to_plain_encoder(sam, ckpt, decomp):
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(x * 255))
        for task in SMALL:
            assert torch.equal(model.encode(x, task), ref), task


@pytest.mark.parametrize("size", [(96, 128), (192, 256)])
def test_forward_at_init_equals_promptless_sam(sam, ckpt, size):
    """Every channel starts as SAM's own no-prompt prediction (PE, no-mask embed, decoder, pre/post-processing).

    At 192x256 the image is first resized to 96x128 as ResizeLongestSide.apply_image_torch does.
    """
    model = build_msam("tiny", SMALL, checkpoint=ckpt).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        inp = torch.nn.functional.interpolate(x * 255, (96, 128), mode="bilinear", align_corners=False, antialias=True)
        res = sam([{"image": xi, "original_size": size} for xi in inp], multimask_output=False)
        low = torch.cat([r["low_res_logits"] for r in res])
        ref = sam.postprocess_masks(low, (96, 128), size)
    for name, c in SMALL.items():
        torch.testing.assert_close(out[name], ref.expand(-1, c, -1, -1), atol=1e-4, rtol=1e-4)


def test_shared_lora_encoder_is_task_agnostic(ckpt):
    torch.manual_seed(9)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp="shared-lora").eval()
    _randomise_deltas(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model.encode(x, "a"), model.encode(x, "c"))
        assert model.task_agnostic and not build_msam("tiny", SMALL).task_agnostic


def test_decode_equals_predict_masks_per_image(ckpt):
    torch.manual_seed(1)
    model = build_msam("tiny", SMALL, checkpoint=ckpt).eval()
    _randomise_deltas(model)
    x = torch.rand(3, 3, 96, 128)
    with torch.no_grad():
        emb, pe = model.encode(x, "a"), model.image_pe()
        mine = model.decode("a", emb, pe)
        dec, nm = model.decoders["a"], model.no_mask_embeds["a"]
        ref = torch.stack([
            dec.predict_masks(emb[i:i + 1], pe, torch.empty(3, 0, nm.shape[1]), nm[:, :, None, None])[0][:, 0]
            for i in range(3)
        ])
    assert mine.shape == (3, 3, 32, 32)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decomp", ["tucker", "lora", "cp"])
def test_mixed_task_batch_equals_per_task(ckpt, decomp):
    """B > 1 distinct images: the mixed T*B batch must not mix up samples (the paper code's bug)."""
    torch.manual_seed(2)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp).eval()
    _randomise_deltas(model)
    x = torch.rand(3, 3, 96, 128)
    with torch.no_grad():
        mixed = model(x)
        pre, _ = model.preprocess(x)
        emb_mixed = model._encode(pre, [0, 1, 2])
        for k, name in enumerate(SMALL):
            per_task = model.encode(x, name)
            torch.testing.assert_close(emb_mixed[k * 3:(k + 1) * 3], per_task, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mixed[name], model(x, tasks=[name])[name], atol=1e-5, rtol=1e-5)
        # and the tasks' embeddings really differ (the deltas are live)
        assert (model.encode(x, "a") - model.encode(x, "b")).abs().max() > 1e-2


@pytest.mark.parametrize("decomp,calls,rows", [("tucker", 1, 12), ("shared-lora", 1, 4), ("frozen", 1, 4)])
def test_encoder_runs_once(decomp, calls, rows):
    model = build_msam("tiny", TASKS, decomp=decomp).eval()
    seen = []
    # the encoder's blocks run once on all samples (the patch embedding runs on the B images only)
    handle = model.image_encoder.blocks[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    with torch.no_grad():
        model(torch.rand(4, 3, 96, 128))
    handle.remove()
    assert seen == [rows] * calls


# --------------------------------------------------------------------------------------------- checkpoints
def test_official_builder_checkpoint_lands_in_place(tmp_path):
    """A state dict from segment_anything's own `_build_sam` (image 1024, prompt dim 256) at small width."""
    torch.manual_seed(3)
    official = sam_build_module()._build_sam(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1],
    )
    with torch.no_grad():
        for name, p in official.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_()
    path = tmp_path / "official_small.pth"
    torch.save(official.state_dict(), path)
    cfg = get_sam_config("vit_b").replace(
        name="small", encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,)
    )
    model = build_msam(cfg, SMALL, checkpoint=path)
    assert model.msam_config.checkpoint == str(path.resolve())
    enc = model.image_encoder
    qkv = enc.blocks[0].attn.qkv
    assert isinstance(qkv, TaskLinear)
    assert torch.equal(qkv.base.weight, official.image_encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(enc.pos_embed, official.image_encoder.pos_embed)
    assert torch.equal(enc.blocks[1].attn.rel_pos_h, official.image_encoder.blocks[1].attn.rel_pos_h)
    assert torch.equal(enc.neck[0].weight, official.image_encoder.neck[0].weight)
    for name, c in SMALL.items():
        dec_sd, ref_sd = model.decoders[name].state_dict(), official.mask_decoder.state_dict()
        assert dec_sd.keys() == ref_sd.keys()
        assert all(torch.equal(dec_sd[k], ref_sd[k]) for k in ref_sd)
        assert torch.equal(model.no_mask_embeds[name], official.prompt_encoder.no_mask_embed.weight.expand(c, -1))
    assert torch.equal(
        model.pe_layer.positional_encoding_gaussian_matrix,
        official.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
    )

    # Another image size: pos_embed and the global block's rel_pos are resized, the windowed one's kept.
    small = build_msam(cfg, SMALL, checkpoint=path, image_size=256)
    g = 256 // 16
    assert small.image_encoder.pos_embed.shape == (1, g, g, 64)
    assert small.image_encoder.blocks[1].attn.rel_pos_h.shape == (2 * g - 1, 32)
    assert torch.equal(small.image_encoder.blocks[0].attn.rel_pos_h, official.image_encoder.blocks[0].attn.rel_pos_h)
    with torch.no_grad():
        out = small(torch.rand(1, 3, 96, 128))
    assert out["a"].shape == (1, 3, 96, 128)


def test_image_size_interpolation_tiny(sam, ckpt):
    model = build_msam("tiny", SMALL, checkpoint=ckpt, image_size=64)
    assert model.config.image_size == 64 and model.config.grid_size == 4
    pos = model.image_encoder.pos_embed
    assert pos.shape == (1, 4, 4, 128)
    # bicubic resize of the 8x8 table (a smooth down-sampling, not a copy)
    assert not torch.equal(pos, sam.image_encoder.pos_embed[:, :4, :4])
    assert model.image_encoder.blocks[1].attn.rel_pos_h.shape == (7, 32)
    assert torch.equal(model.image_encoder.blocks[0].attn.rel_pos_w, sam.image_encoder.blocks[0].attn.rel_pos_w)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 48, 64))["a"].shape == (2, 3, 48, 64)


def test_bad_checkpoints(sam, ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_msam("tiny", SMALL, checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(SamCheckpointError, match="junk.pth"):
        build_msam("tiny", SMALL, checkpoint=junk)

    state = dict(sam.state_dict())
    no_pe = {k: v for k, v in state.items() if "pe_layer" not in k}
    torch.save(no_pe, tmp_path / "no_pe.pth")
    with pytest.raises(SamCheckpointError, match=r"no_pe\.pth[\s\S]*missing keys.*pe_layer\.positional_encoding_gaussian_matrix"):
        build_msam("tiny", SMALL, checkpoint=tmp_path / "no_pe.pth")
    with pytest.raises(SamCheckpointError, match=r"unexpected keys.*mask_decoder\.extra"):
        build_msam("tiny", SMALL, checkpoint={**state, "mask_decoder.extra": torch.zeros(1)})
    with pytest.raises(SamCheckpointError, match="not tensors"):
        build_msam("tiny", SMALL, checkpoint={**state, "prompt_encoder.note": "hello"})

    # another model size: a deeper, wider tiny variant
    other = build_sam(get_sam_config("tiny").replace(encoder_embed_dim=192, encoder_depth=6, encoder_num_heads=6))
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(SamCheckpointError) as err:
        build_msam("tiny", SMALL, checkpoint=tmp_path / "other.pth")
    msg = str(err.value)
    assert "other.pth" in msg and "embed dim 192, depth 6" in msg
    assert "unexpected keys (28): image_encoder.blocks.4." in msg
    assert "image_encoder.blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (384, 128)" in msg


def test_official_size_mismatch_is_named():
    """A vit_l state dict (shapes only, meta tensors) offered to vit_b names both sizes."""
    from tensoradapt.sam.weights import expected_sam_shapes, fit_sam_state_dict

    state = {k: torch.empty(s, device="meta") for k, s in expected_sam_shapes(get_sam_config("vit_l")).items()}
    with pytest.raises(SamCheckpointError, match=r"model_type 'vit_b'[\s\S]*looks like a vit_l checkpoint"):
        fit_sam_state_dict(state, get_sam_config("vit_b"), "sam_vit_l_0b3195.pth")


# --------------------------------------------------------------------------------------------- training
def _step(model, x, lr=1e-2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    out = model(x)
    loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    return opt


@pytest.mark.parametrize("decomp", DECOMPS)
def test_one_step_changes_only_trainable(ckpt, decomp):
    torch.manual_seed(4)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp).train()
    if decomp not in ("full", "frozen", "none"):
        _randomise_deltas(model, std=0.05)  # non-zero cores so every factor gets a gradient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = _step(model, torch.rand(2, 3, 96, 128))
    # every trainable tensor got a gradient (DDP without find_unused_parameters)
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    names = {n for n, _ in model.named_parameters()}
    assert changed and changed <= trainable
    # frozen parts of the decoders
    assert not any("iou_prediction_head" in n or "output_hypernetworks_mlps.1" in n for n in trainable)
    assert any(n.startswith("decoders.a.transformer") for n in trainable)
    has_delta = any(True for _ in task_deltas(model))
    assert has_delta == (decomp not in ("full", "frozen", "none"))
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    norms = {n for n in encoder if ".norm1." in n or ".norm2." in n or n.startswith(("image_encoder.neck.1.", "image_encoder.neck.3."))}
    if decomp == "frozen":
        assert not encoder
    elif decomp == "full":
        assert {n for n in names if n.startswith("image_encoder.")} == encoder
    else:
        assert len(norms) == 4 * 4 + 4 and encoder - norms == {n for n in encoder if ".delta." in n}


def test_train_norms_off():
    model = build_msam("tiny", SMALL, train_norms=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_encoder.")]
    assert trainable and all(".delta." in n for n in trainable)
    b = parameter_breakdown(model)
    assert b["encoder_norms_trainable"] == 0 and b["delta"] > 0


@pytest.mark.parametrize("qkv", ["q", "k", "v", "qv", "kv", "qkv"])
def test_qkv_subsets_adapt_exactly_those_rows(qkv):
    torch.manual_seed(5)
    model = build_msam("tiny", SMALL, qkv=qkv, dropout=0.0)
    _randomise_deltas(model)
    layer = model.image_encoder.blocks[0].attn.qkv
    dim = model.config.encoder_embed_dim
    assert layer.delta.d_out == dim * len(qkv)
    x = torch.randn(2, 8, dim)
    with torch.no_grad(), task_scope(model, 1):
        diff = (layer(x) - layer.base(x)).abs().amax(dim=(0, 1))
    for k, part in enumerate("qkv"):
        rows = diff[k * dim:(k + 1) * dim]
        assert (rows > 0).all() if part in qkv else (rows == 0).all(), part


def test_bf16_autocast_cpu(ckpt):
    torch.manual_seed(6)
    model = build_msam("tiny", TASKS, checkpoint=ckpt).train()
    _randomise_deltas(model, std=0.05)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    for name, c in TASKS.items():
        assert out[name].shape == (2, c, 96, 128) and torch.isfinite(out[name]).all()
        scale = ref[name].abs().max()
        assert (out[name].float() - ref[name]).abs().max() < 0.1 * scale + 0.1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(ckpt, tmp_path):
    torch.manual_seed(7)
    model = build_msam("tiny", TASKS, checkpoint=ckpt, decomp="tucker")
    opt = _step(model, torch.rand(2, 3, 96, 128))
    opt.step()
    _randomise_deltas(model)
    save_msam(model, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "msam_config.json").read_text())
    assert meta["saved"] == "trainable" and meta["msam_config"]["tasks"] == TASKS
    loaded = load_msam(tmp_path / "run")
    assert isinstance(loaded, MultiTaskSAM) and loaded.msam_config == model.msam_config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        o1, o2 = model.eval()(x), loaded.eval()(x)
    assert all(torch.equal(o1[k], o2[k]) for k in o1)

    # another base checkpoint is refused, naming it
    other = tmp_path / "other.pth"
    torch.save(build_sam("tiny").state_dict(), other)
    with pytest.raises(ValueError, match="other.pth"):
        load_msam(tmp_path / "run", checkpoint=other)


def test_save_load_include_frozen_without_checkpoint(tmp_path):
    torch.manual_seed(8)
    model = build_msam("tiny", SMALL, decomp="lora", qkv="qv")
    _randomise_deltas(model)
    save_msam(model, tmp_path / "m", include_frozen=True)
    loaded = load_msam(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # trainable-only without a base checkpoint cannot restore random frozen weights: a clear error
    save_msam(model, tmp_path / "t")
    with pytest.raises(ValueError, match="frozen weights"):
        load_msam(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="msam_config.json"):
        load_msam(tmp_path / "missing")


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"model_type": "vit_x"}, ValueError, "model_type"),
        ({"tasks": {}}, ValueError, "tasks"),
        ({"tasks": {"a.b": 2}}, ValueError, "task names"),
        ({"tasks": {"a": 0}}, ValueError, r"tasks\['a'\]"),
        ({"decomp": "svd"}, ValueError, "decomp"),
        ({"decomp": "full", "ranks": 8}, ValueError, "ranks"),
        ({"decomp": "tucker", "ranks": (4, 8)}, ValueError, "ranks"),
        ({"decomp": "lora", "ranks": 999}, ValueError, "ranks"),
        ({"qkv": "qq"}, ValueError, "qkv"),
        ({"qkv": ""}, ValueError, "qkv"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"init": "xavier"}, ValueError, "init"),
        ({"image_size": 100}, ValueError, "image_size"),
    ],
)
def test_build_errors(kwargs, exc, pattern):
    args = {"model_type": "tiny", "tasks": SMALL, **kwargs}
    with pytest.raises(exc, match=pattern):
        build_msam(**args)


def test_forward_errors():
    model = build_msam("tiny", SMALL)
    with pytest.raises(KeyError, match="unknown task"):
        model(torch.rand(1, 3, 32, 32), tasks=["depth"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="twice"):
        model(torch.rand(1, 3, 32, 32), tasks=["a", "a"])


def test_merged_encoder(ckpt):
    """Merged single-task inference matches the factored path; a multi-task forward on it is refused."""
    torch.manual_seed(10)
    model = build_msam("tiny", SMALL, checkpoint=ckpt).eval()
    _randomise_deltas(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x, tasks=["c"])["c"]
        merge_adapters(model, 2)
        torch.testing.assert_close(model(x, tasks=["c"])["c"], ref, atol=1e-4, rtol=1e-4)
        with pytest.raises(RuntimeError, match="merged"):
            model(x)
        unmerge_adapters(model)
        assert model(x)["c"].shape == (2, 2, 96, 128)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    from tensoradapt import task_deltas
    from tensoradapt.sam import build_msam

    tasks = {"semantic": 3, "depth": 1}
    models = []
    for recompute in (False, True):
        torch.manual_seed(0)
        m = build_msam("tiny", tasks, decomp="tucker", dropout=0.0, grad_checkpointing=recompute).train()
        with torch.no_grad():
            for _, d in task_deltas(m):
                for p in d.parameters():
                    p.normal_(0, 0.05)
        models.append(m)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    outs = []
    for m in models:
        out = m(x)
        sum(o.pow(2).mean() for o in out.values()).backward()
        outs.append(out)
    for k in tasks:
        torch.testing.assert_close(outs[0][k], outs[1][k])
    grads = [[p.grad for p in m.parameters() if p.requires_grad] for m in models]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_patch_embedding_runs_once_for_all_task_passes():
    from tensoradapt.sam import build_msam

    m = build_msam("tiny", {"semantic": 3, "depth": 1, "normal": 3}, decomp="tucker").eval()
    seen = []
    m.image_encoder.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    m.image_encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64))
    assert seen == [2, 6]  # patch embedding on B images, blocks on the T*B mixed-task batch
