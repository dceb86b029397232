"""The task-shared trunk (`build_msam(..., shared_blocks=k)`): the first k blocks carry no delta and run once for
the B images, the rest run per task; equal to a hand-run of the blocks, to per-task passes, and to today's
model at k = 0."""
import pytest
import torch

from tensoradapt.inject import task_linears
from tensoradapt.routing import task_scope
from tensoradapt.sam import MSamConfig, build_msam, get_model_config, load_msam, save_msam

TASKS = {"semantic": 4, "depth": 1, "normal": 3}


def _model(k, decomp="tucker", seed=0):
    torch.manual_seed(seed)
    model = build_msam("tiny", TASKS, decomp=decomp, shared_blocks=k, dropout=0.0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".delta." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_the_trunk_has_no_delta_and_the_rest_has_one():
    model = _model(2)
    adapted = sorted(name for name, _ in task_linears(model.image_encoder))
    assert adapted == ["blocks.2.attn.qkv", "blocks.3.attn.qkv"]
    full = _model(0)
    per_block = sum(p.numel() for n, p in full.named_parameters() if ".delta." in n) // 4
    assert sum(p.numel() for n, p in model.named_parameters() if ".delta." in n) == 2 * per_block


def test_encode_equals_the_blocks_run_by_hand():
    model = _model(2)
    images = torch.rand(2, 3, 96, 128)
    x, _ = model.preprocess(images)
    enc = model.image_encoder
    with torch.no_grad():
        for t, name in enumerate(TASKS):
            tokens = enc.patch_embed(x) + enc.pos_embed
            for block in enc.blocks[:2]:
                tokens = block(tokens)  # no delta in these blocks: nothing to route
            with task_scope(enc, t):
                for block in enc.blocks[2:]:
                    tokens = block(tokens)
            want = enc.neck(tokens.permute(0, 3, 1, 2))
            assert torch.allclose(model.encode(images, name), want, atol=1e-5), name


def test_the_trunk_runs_once_for_all_tasks_and_the_mixed_batch_equals_per_task_passes():
    model = _model(2)
    images = torch.rand(2, 3, 96, 128)
    seen = []
    hooks = [model.image_encoder.blocks[i].register_forward_hook(
        lambda m, args, out, i=i: seen.append((i, args[0].shape[0]))) for i in range(4)]
    with torch.no_grad():
        out = model(images)
    for h in hooks:
        h.remove()
    assert seen == [(0, 2), (1, 2), (2, 6), (3, 6)]  # B images in the trunk, T*B samples after it
    with torch.no_grad():
        for name in TASKS:
            alone = model(images, tasks=[name])[name]
            assert torch.allclose(out[name], alone, atol=1e-5), name


def test_k0_is_todays_model_and_k_survives_save_load(tmp_path):
    a, b = _model(0), build_msam("tiny", TASKS, decomp="tucker", dropout=0.0)
    assert a.msam_config.shared_blocks == 0 and MSamConfig.from_json(a.msam_config.to_json()) == a.msam_config
    b.load_state_dict(a.state_dict())
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert all(torch.equal(a(images)[t], b.eval()(images)[t]) for t in TASKS)
    model = _model(3)
    save_msam(model, tmp_path / "m", include_frozen=True)
    again = load_msam(tmp_path / "m")
    assert again.msam_config.shared_blocks == 3
    with torch.no_grad():
        assert all(torch.allclose(model(images)[t], again.eval()(images)[t]) for t in TASKS)


def test_bad_shared_blocks_are_refused():
    with pytest.raises(ValueError, match="shared_blocks must be below the encoder depth 4"):
        build_msam("tiny", TASKS, shared_blocks=4)
    with pytest.raises(ValueError, match="shared_blocks must be an int >= 0"):
        build_msam("tiny", TASKS, shared_blocks=-1)
    with pytest.raises(ValueError, match="SAM 2's Hiera"):
        MSamConfig(sam=get_model_config("sam2_cpu"), tasks=TASKS, shared_blocks=1)
