"""The memory-efficient encoder attentions ("sdpa": relative positions folded into q / k channels; "chunked":
exact blocks of query rows; "auto") equal segment-anything's attention: outputs and gradients, windows with
padding, every decomposition, an official size, autocast."""
import pytest
import torch

from tensoradapt.deltas import DECOMPS
from tensoradapt.sam import build_msam, get_sam_config
from tensoradapt.sam._import import sam_modeling
from tensoradapt.sam.attention import set_attention

TASKS = {"semantic": 3, "depth": 1}
KINDS = ("sdpa", "chunked", "auto")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("use_rel_pos,hw", [(True, (5, 7)), (True, (4, 4)), (False, (3, 6))])
def test_attention_module_matches_sam(kind, dtype, tol, use_rel_pos, hw):
    Attention = sam_modeling().image_encoder.Attention
    H, W = hw
    attn = Attention(32, num_heads=4, use_rel_pos=use_rel_pos, input_size=(H, W)).to(dtype)
    _randomize(attn, 0)
    x = torch.randn(2, H, W, 32, dtype=dtype, requires_grad=True)
    results = []
    for k in ("sam", kind):
        set_attention(attn, k)
        x.grad = None
        attn.zero_grad()
        out = attn(x)
        out.backward(torch.cos(out.detach()))  # a non-uniform upstream gradient
        results.append((out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in attn.named_parameters()}))
    (o1, gx1, gp1), (o2, gx2, gp2) = results
    assert torch.allclose(o1, o2, atol=tol, rtol=tol)
    assert torch.allclose(gx1, gx2, atol=tol, rtol=tol)
    for n in gp1:
        assert torch.allclose(gp1[n], gp2[n], atol=tol, rtol=tol), n


def test_set_attention_switches_every_block_and_refuses_unknown():
    cfg = get_sam_config("tiny")
    enc = cfg.build_image_encoder()
    assert set_attention(enc, "sdpa") == cfg.encoder_depth
    assert all(type(b.attn).__name__ == "SdpaAttention" for b in enc.blocks)
    assert set_attention(enc, "chunked") == cfg.encoder_depth
    assert all(type(b.attn).attention_kind == "chunked" for b in enc.blocks)
    assert set_attention(enc, "sam") == cfg.encoder_depth
    assert all(type(b.attn) is sam_modeling().image_encoder.Attention for b in enc.blocks)
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention(enc, "flash")


def _msam_grads(model, images, kind):
    set_attention(model.image_encoder, kind)
    model.zero_grad()
    out = model(images)
    loss = sum((o * torch.sin(torch.arange(o.numel()).view_as(o) * 0.1)).sum() for o in out.values())
    loss.backward()
    emb = {t: model.encode(images, t).detach() for t in model.task_names}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return emb, grads


@pytest.mark.parametrize("kind", ("sdpa", "chunked"))
@pytest.mark.parametrize("decomp", [*DECOMPS, "full"])
def test_msam_embeddings_and_gradients_match_with_window_padding(decomp, kind):
    # tiny at 96 px: a 6 x 6 token grid in windows of 4 -> padded to 8 x 8 in the windowed blocks
    torch.manual_seed(0)
    cfg = get_sam_config("tiny").replace(image_size=96, window_size=4)
    model = build_msam(cfg, TASKS, decomp=decomp, dropout=0.0)
    _randomize(model, 1)  # non-zero deltas and rel-pos tables, so every term is exercised
    images = torch.rand(2, 3, 72, 96)
    emb1, g1 = _msam_grads(model, images, "sam")
    emb2, g2 = _msam_grads(model, images, kind)
    for t in emb1:
        assert torch.allclose(emb1[t], emb2[t], atol=1e-4, rtol=1e-4), t
    assert g1.keys() == g2.keys() and g1
    for n in g1:
        scale = g1[n].abs().max().clamp_min(1e-3)
        assert (g1[n] - g2[n]).abs().max() / scale < 1e-4, n


@pytest.mark.parametrize("kind", ("sdpa", "chunked"))
def test_official_size_at_a_small_input_matches(kind):
    torch.manual_seed(0)
    cfg = get_sam_config("vit_b", image_size=160)  # 10 x 10 tokens, window 10, 12 heads of 64
    enc = cfg.build_image_encoder().eval()
    with torch.no_grad():
        for b in enc.blocks:
            b.attn.rel_pos_h.normal_(0, 0.5)
            b.attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        set_attention(enc, "sam")
        ref = enc(x)
        set_attention(enc, kind)
        out = enc(x)
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ("sdpa", "chunked", "auto"))
def test_autocast_bf16_runs_and_stays_close(kind):
    torch.manual_seed(0)
    model = build_msam("tiny", TASKS, decomp="tucker", dropout=0.0)
    _randomize(model, 2)
    images = torch.rand(2, 3, 96, 128)
    set_attention(model.image_encoder, "sam")
    with torch.no_grad():
        ref = model.encode(images, "depth")
    set_attention(model.image_encoder, kind)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.encode(images, "depth")
    assert out.dtype in (torch.bfloat16, torch.float32)
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2, err


def test_the_relative_table_equals_segment_anythings_lookup():
    from tensoradapt.sam.attention import _relative_table

    get_rel_pos = sam_modeling().image_encoder.get_rel_pos
    table = torch.randn(2 * 7 - 1, 5)
    assert torch.equal(_relative_table(7, table, get_rel_pos), get_rel_pos(7, 7, table))
    longer = torch.randn(2 * 9 - 1, 5)  # a table of another length: resampled by get_rel_pos
    assert torch.equal(_relative_table(7, longer, get_rel_pos), get_rel_pos(7, 7, longer))


@pytest.mark.parametrize("dense_max, kernel_calls", [(None, 0), (0, 1)])
def test_auto_on_cpu_is_dense_for_calls_of_one_chunk_and_chunked_above(monkeypatch, dense_max, kernel_calls):
    """"auto" runs the chunked kernel only where chunking saves memory, and equals segment-anything either way."""
    from tensoradapt.sam import attention

    if dense_max is not None:
        monkeypatch.setattr(attention, "DENSE_MAX_ELEMENTS", dense_max)
    calls = []
    real = attention.rel_pos_attention
    monkeypatch.setattr(attention, "rel_pos_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    enc = get_sam_config("tiny").build_image_encoder()
    x = torch.rand(2, 3, get_sam_config("tiny").image_size, get_sam_config("tiny").image_size)
    with torch.no_grad():
        ref = enc(x)
        set_attention(enc, "auto")
        out = enc(x)
    assert len(calls) == kernel_calls * len(enc.blocks)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_chunked_attention_is_mixed_task_and_autocast_safe_in_training():
    torch.manual_seed(0)
    model = build_msam("tiny", TASKS, decomp="tucker", dropout=0.0, attention="chunked")
    _randomize(model, 3)
    images = torch.rand(2, 3, 96, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        loss = sum(o.float().square().mean() for o in out.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
