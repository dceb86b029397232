"""mSAM on the tiny config: shapes, equivalence with segment_anything, what trains, errors.

Official weights: test_msam_weights.py; save / load: test_msam_serialization.py."""
from __future__ import annotations

import pytest
import torch

from tensoradapt import merge_adapters, task_deltas, task_linears, task_scope, unmerge_adapters
from tensoradapt.deltas import DECOMPS as DELTA_DECOMPS
from tensoradapt.sam import (
    DECOMPS, ENCODER_TARGETS, NO_DELTA, PAPER_RANKS, SMALL_RANKS, TASK_AGNOSTIC, MSamConfig, build_msam, default_ranks,
    get_sam_config, parameter_breakdown,
)

from msam_fixtures import SMALL, TASKS, ckpt, mixed_batch_equals_folded, randomise_deltas, sam  # noqa: F401 (fixtures)


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
    # attention="sam" runs segment-anything's attention kernel, so the comparison can be bit-exact; the
    # default fused attention equals it to float tolerance (next test, and tests/test_sam_attention.py)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp, attention="sam").eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(x * 255))
        for task in SMALL:
            assert torch.equal(model.encode(x, task), ref), task


@pytest.mark.parametrize("decomp", ["tucker", "frozen"])
def test_zero_deltas_with_fused_attention_equal_plain_encoder(sam, ckpt, decomp):
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp).eval()
    assert model.msam_config.attention == "auto"  # the chunked kernel on this CPU
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(x * 255))
        for task in SMALL:
            assert torch.allclose(model.encode(x, task), ref, atol=1e-5, rtol=1e-5), task


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


@pytest.mark.parametrize("decomp", DECOMPS)
def test_task_agnostic_means_one_encoder_for_every_task(ckpt, decomp):
    """`TASK_AGNOSTIC` is exactly the decomps whose deltas are the same for every task (or absent)."""
    torch.manual_seed(9)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp).eval()
    randomise_deltas(model)
    shared = all(torch.equal(t[0], t[2]) for t in (d.to_tensor() for _, d in task_deltas(model)))
    assert shared == (decomp in TASK_AGNOSTIC) == model.task_agnostic
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model.encode(x, "a"), model.encode(x, "c")) == shared


def test_one_list_of_decomps():
    assert DECOMPS == (*DELTA_DECOMPS, *NO_DELTA)
    assert set(TASK_AGNOSTIC) <= set(DECOMPS) and set(NO_DELTA) <= set(TASK_AGNOSTIC)
    tiny, vit_b = get_sam_config("tiny"), get_sam_config("vit_b")
    for decomp in DECOMPS:
        has_delta = decomp not in NO_DELTA
        assert (default_ranks(decomp, tiny) is not None) == has_delta
        assert (default_ranks(decomp, vit_b) is not None) == has_delta
    assert default_ranks("tucker", vit_b) == PAPER_RANKS["tucker"] == (4, 32, 32)
    assert default_ranks("tucker", tiny) == SMALL_RANKS["tucker"]
    with pytest.raises(ValueError, match="decomp must be one of"):
        default_ranks("svd", tiny)


def test_decode_equals_predict_masks_per_image(ckpt):
    torch.manual_seed(1)
    model = build_msam("tiny", SMALL, checkpoint=ckpt).eval()
    randomise_deltas(model)
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
    randomise_deltas(model)
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
    if decomp not in NO_DELTA:
        randomise_deltas(model, std=0.05)  # non-zero cores so every factor gets a gradient
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
    assert has_delta == (decomp not in NO_DELTA)
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


@pytest.mark.parametrize("shared_blocks", [0, 2])
def test_train_modules_train_those_submodules_beside_the_deltas(ckpt, shared_blocks):
    """`train_modules` unfreezes exactly the named encoder submodules, each gets a gradient in a step (also in
    a task-shared trunk, before any delta), they join the "encoder" lr group and the breakdown counts them."""
    from tensoradapt.sam import msam_param_groups

    torch.manual_seed(4)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, train_modules="patch_embed,neck.2",
                       shared_blocks=shared_blocks).train()
    randomise_deltas(model, std=0.05)
    plain = build_msam("tiny", SMALL, checkpoint=ckpt, shared_blocks=shared_blocks)
    grad = {n for n, p in model.named_parameters() if p.requires_grad}
    extra = grad - {n for n, p in plain.named_parameters() if p.requires_grad}
    assert extra == {"image_encoder.patch_embed.proj.weight", "image_encoder.patch_embed.proj.bias",
                     "image_encoder.neck.2.weight"}  # neck.2: the 3x3 conv (bias-free); nothing else
    _step(model, torch.rand(2, 3, 96, 128))
    assert all(model.get_parameter(n).grad is not None and model.get_parameter(n).grad.abs().sum() > 0
               for n in extra)
    groups = msam_param_groups(model)
    assert all(groups["encoder"](n, model.get_parameter(n)) and not groups["delta"](n, model.get_parameter(n))
               for n in extra)
    b, b0 = parameter_breakdown(model), parameter_breakdown(plain)
    assert b["encoder_other_trainable"] == sum(model.get_parameter(n).numel() for n in extra)
    assert b["trainable"] - b0["trainable"] == b["encoder_other_trainable"] and b["delta"] == b0["delta"]


@pytest.mark.parametrize("kw,match", [
    ({"train_modules": "patch_embedding"},
     r"no submodule or parameter 'patch_embedding' \(its children: \['patch_embed', 'blocks', 'neck'\]\)"),
    ({"train_modules": "blocks.0.attn.rel_pos_x"}, "no submodule or parameter 'blocks.0.attn.rel_pos_x'"),
    ({"train_modules": "blocks.1.attn.qkv.base.weight"}, "'blocks.1.attn.qkv.base.weight' holds a task delta"),
    ({"train_modules": "blocks.1.attn.qkv.delta"}, "'blocks.1.attn.qkv.delta' holds a task delta"),
    ({"train_modules": ["blocks.1"]}, "'blocks.1' holds a task delta"),
    ({"train_modules": "blocks.0.mlp", "targets": "qkv,mlp"}, "'blocks.0.mlp' holds a task delta"),
    ({"train_modules": "neck", "decomp": "full"}, "does not apply to decomp='full'"),
    ({"train_modules": "neck", "decomp": "frozen"}, "does not apply to decomp='frozen'"),
    ({"train_modules": "neck; rm"}, "distinct dotted module names"),
    ({"train_modules": 3}, "train_modules must be dotted module names"),
])
def test_train_modules_refuses_what_it_cannot_train(kw, match):
    with pytest.raises(ValueError, match=match):
        build_msam("tiny", SMALL, **kw)


@pytest.mark.parametrize("shared_blocks", [0, 2])
def test_train_modules_takes_parameter_names(ckpt, shared_blocks):
    """A parameter name ("pos_embed", a block's rel-pos table) trains exactly that tensor beside the deltas: it
    gets a gradient (also before a shared trunk) and a step changes it and no other frozen encoder weight."""
    names = ("pos_embed", "blocks.3.attn.rel_pos_h")
    torch.manual_seed(6)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, train_modules=",".join(names),
                       shared_blocks=shared_blocks).train()
    randomise_deltas(model, std=0.05)
    plain = build_msam("tiny", SMALL, checkpoint=ckpt, shared_blocks=shared_blocks)
    grad = {n for n, p in model.named_parameters() if p.requires_grad}
    extra = grad - {n for n, p in plain.named_parameters() if p.requires_grad}
    assert extra == {f"image_encoder.{n}" for n in names}
    assert not model.image_encoder.blocks[3].attn.rel_pos_w.requires_grad  # the sibling table stays frozen
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: model.get_parameter(n).detach().clone() for n in extra}
    _step(model, torch.rand(2, 3, 96, 128)).step()
    assert all(not torch.equal(model.get_parameter(n), before[n]) for n in extra)
    assert all(torch.equal(model.get_parameter(n), v) for n, v in frozen.items())
    assert parameter_breakdown(model)["encoder_other_trainable"] == sum(model.get_parameter(n).numel() for n in extra)


def test_train_modules_without_a_delta_in_that_module_is_accepted():
    """A block's LayerNorm under a shared trunk, or the MLP of a block whose deltas sit in qkv only: allowed."""
    model = build_msam("tiny", SMALL, train_modules=("blocks.0.mlp", "blocks.1.norm1"), shared_blocks=1)
    assert all(p.requires_grad for p in model.image_encoder.blocks[0].mlp.parameters())
    assert not any(p.requires_grad for p in model.image_encoder.blocks[1].mlp.parameters())


@pytest.mark.parametrize("qkv", ["q", "k", "v", "qv", "kv", "qkv"])
def test_qkv_subsets_adapt_exactly_those_rows(qkv):
    torch.manual_seed(5)
    model = build_msam("tiny", SMALL, qkv=qkv, dropout=0.0)
    randomise_deltas(model)
    layer = model.image_encoder.blocks[0].attn.qkv
    dim = model.config.encoder_embed_dim
    assert layer.delta.d_out == dim * len(qkv)
    x = torch.randn(2, 8, dim)
    with torch.no_grad(), task_scope(model, 1):
        diff = (layer(x) - layer.base(x)).abs().amax(dim=(0, 1))
    for k, part in enumerate("qkv"):
        rows = diff[k * dim:(k + 1) * dim]
        assert (rows > 0).all() if part in qkv else (rows == 0).all(), part


BLOCK_LINEARS = {"qkv": ("attn.qkv",), "proj": ("attn.proj",), "mlp": ("mlp.lin1", "mlp.lin2")}


@pytest.mark.parametrize("decomp", ["tucker", "lora"])
@pytest.mark.parametrize("targets,shared", [(("mlp",), 0), (("qkv", "proj", "mlp"), 0), (("proj", "qkv"), 1)])
def test_targets_adapt_exactly_those_linears_and_each_is_live(ckpt, decomp, targets, shared):
    """Each named linear of each adapted block gets a delta, nothing else does, and every one of them changes
    the encoder's output per task when its delta alone is non-zero (no delta built but bypassed)."""
    torch.manual_seed(3)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp, targets=targets, shared_blocks=shared,
                       qkv="qv" if "qkv" in targets else "qkv", dropout=0.0).eval()
    assert model.msam_config.targets == tuple(t for t in ENCODER_TARGETS if t in targets)
    expected = {f"image_encoder.blocks.{i}.{n}" for i in range(shared, model.config.encoder_depth)
                for t in targets for n in BLOCK_LINEARS[t]}
    layers = dict(task_linears(model))
    assert set(layers) == expected
    dim = model.config.encoder_embed_dim
    for name, layer in layers.items():  # the qkv rows option applies to the fused qkv only
        assert layer.delta.d_out == (2 * dim if name.endswith("qkv") else layer.base.out_features), name
    x = torch.rand(2, 3, 64, 64)
    for name, layer in layers.items():
        with torch.no_grad():
            for p in layer.delta.parameters():
                p.normal_(0.0, 0.3)
            diff = (model.encode(x, "a") - model.encode(x, "b")).abs().max()
            for p in layer.delta.parameters():
                p.zero_()
        assert diff > 1e-3, name


@pytest.mark.parametrize("decomp", ["tucker", "lora", "cp"])
def test_every_target_routes_each_sample_to_its_task(ckpt, decomp):
    """The mixed T*B batch with deltas in qkv, proj and both MLP linears (inside and outside the attention
    windows) equals, task by task, the encoder with that task's deltas folded into its weights."""
    torch.manual_seed(4)
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp, targets=ENCODER_TARGETS).eval()
    randomise_deltas(model, std=0.2)
    (mixed,) = mixed_batch_equals_folded(model, torch.rand(3, 3, 96, 128))
    assert (mixed[:3] - mixed[3:6]).abs().max() > 1e-2


def test_bf16_autocast_cpu(ckpt):
    torch.manual_seed(6)
    model = build_msam("tiny", TASKS, checkpoint=ckpt).train()
    randomise_deltas(model, std=0.05)
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
        ({"targets": "qkv,ffn"}, ValueError, "targets"),
        ({"targets": ()}, ValueError, "targets"),
        ({"targets": ("mlp", "mlp")}, ValueError, "targets"),
        ({"targets": 3}, ValueError, "targets"),
        ({"decomp": "frozen", "targets": "mlp"}, ValueError, "targets does not apply"),
        ({"targets": "mlp", "qkv": "qv"}, ValueError, "qkv 'qv' picks rows"),
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
    randomise_deltas(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x, tasks=["c"])["c"]
        merge_adapters(model, 2)
        torch.testing.assert_close(model(x, tasks=["c"])["c"], ref, atol=1e-4, rtol=1e-4)
        with pytest.raises(RuntimeError, match="merged"):
            model(x)
        unmerge_adapters(model)
        assert model(x)["c"].shape == (2, 2, 96, 128)


@pytest.mark.parametrize("targets,shared", [("qkv", 0), ("qkv,proj,mlp", 1)])
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(targets, shared):
    """Recomputed blocks keep the forward's per-sample routing, for deltas in every target linear too."""
    from tensoradapt import task_deltas
    from tensoradapt.sam import build_msam

    tasks = {"semantic": 3, "depth": 1}
    models = []
    for recompute in (False, True):
        torch.manual_seed(0)
        m = build_msam("tiny", tasks, decomp="tucker", dropout=0.0, grad_checkpointing=recompute, targets=targets,
                       shared_blocks=shared).train()
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
    assert all(p.grad.abs().max() > 0 for _, d in task_deltas(models[1]) for p in d.parameters())


def test_the_patch_embedding_runs_once_for_all_task_passes():
    from tensoradapt.sam import build_msam

    m = build_msam("tiny", {"semantic": 3, "depth": 1, "normal": 3}, decomp="tucker").eval()
    seen = []
    m.image_encoder.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    m.image_encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64))
    assert seen == [2, 6]  # patch embedding on B images, blocks on the T*B mixed-task batch
