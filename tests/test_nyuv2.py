"""The NYUv2 .npy reader and its augmentation."""
import numpy as np
import pytest
import torch

from tensoradapt.data import NYUv2, crop_resize, generate_synthetic, hflip, random_scale_crop_flip, resize_sample, \
    scale_crop

H, W = 48, 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("nyu") / "syn", n_train=4, n_val=2, seed=2, height=H,
                              width=W, workers=1)


def test_reads_the_generator_output(root):
    train, val = NYUv2(root, "train"), NYUv2(root, "val")
    assert len(train) == 4 and len(val) == 2
    assert (train.height, train.width) == (H, W)
    s = val[1]
    assert set(s) == {"image", "semantic", "depth", "normal", "index"}
    assert s["index"] == 1
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["semantic"].shape == (H, W) and s["semantic"].dtype == torch.int64
    assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
    assert s["normal"].shape == (3, H, W) and s["normal"].dtype == torch.float32
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), np.load(root / "val/image/1.npy"))
    np.testing.assert_array_equal(s["semantic"].numpy(), np.load(root / "val/label/1.npy"))
    np.testing.assert_array_equal(s["depth"][0].numpy(), np.load(root / "val/depth/1.npy")[..., 0])
    np.testing.assert_array_equal(s["normal"].permute(1, 2, 0).numpy(), np.load(root / "val/normal/1.npy"))
    assert NYUv2(root, "val", with_instance=True)[0]["instance"].shape == (H, W)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["semantic"].shape == (2, H, W)


def test_float_labels_and_2d_depth_are_accepted(tmp_path, root):
    # the commonly distributed preprocessed NYUv2 stores labels as floats; depth may lack its channel axis
    for key in ("image", "label", "depth", "normal"):
        (tmp_path / "train" / key).mkdir(parents=True)
    np.save(tmp_path / "train/image/0.npy", np.load(root / "train/image/0.npy"))
    np.save(tmp_path / "train/label/0.npy", np.load(root / "train/label/0.npy").astype(np.float32))
    np.save(tmp_path / "train/depth/0.npy", np.load(root / "train/depth/0.npy")[..., 0])
    np.save(tmp_path / "train/normal/0.npy", np.load(root / "train/normal/0.npy"))
    s = NYUv2(tmp_path, "train")[0]
    ref = NYUv2(root, "train")[0]
    assert torch.equal(s["semantic"], ref["semantic"]) and torch.equal(s["depth"], ref["depth"])


def test_missing_or_malformed_root_errors(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="Expected the preprocessed NYUv2 layout.*ensure_synthetic"):
        NYUv2(tmp_path / "nowhere")
    (tmp_path / "train" / "image").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing folder.*train/label/"):
        NYUv2(tmp_path)
    with pytest.raises(ValueError, match="split"):
        NYUv2(root, "test")
    with pytest.raises(ValueError, match="size"):
        NYUv2(root, size=(0, 5))
    # a sample missing from one folder (an interrupted copy)
    bad = tmp_path / "bad"
    for key in ("image", "label", "depth", "normal"):
        (bad / "train" / key).mkdir(parents=True)
        for i in range(2):
            np.save(bad / "train" / key / f"{i}.npy", np.load(root / "train" / key / f"{i}.npy"))
    (bad / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(ValueError, match="different sample numbers"):
        NYUv2(bad)
    np.save(bad / "train" / "depth" / "1.npy", np.zeros((5, 5, 1), np.float32))
    np.save(bad / "train" / "depth" / "0.npy", np.zeros((5, 5, 1), np.float32))
    with pytest.raises(ValueError, match=r"depth/0.npy: shape \(5, 5, 1\)"):
        NYUv2(bad)


def _block_sample(h=40, w=56, block=8, seed=0):
    """Piecewise-constant maps with an exact relation between image, label, depth and normal per block."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 13, ((h + block - 1) // block, (w + block - 1) // block), generator=g)
    lab = labels.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    table = torch.nn.functional.normalize(torch.randn(13, 3, generator=g), dim=1)
    image = torch.stack([lab / 12.0, 1 - lab / 12.0, torch.full((h, w), 0.5)])
    return {"image": image, "semantic": lab.long(), "depth": (1.0 + lab.float())[None],
            "normal": table[lab].permute(2, 0, 1).contiguous()}, table


def _check_aligned(s, table, depth_div):
    lab = s["semantic"]
    h, w = lab.shape
    # pixels whose 3x3 neighbourhood has one label: resampling cannot mix blocks there
    inner = torch.ones(h - 2, w - 2, dtype=torch.bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            inner &= lab[1 + di:h - 1 + di, 1 + dj:w - 1 + dj] == lab[1:-1, 1:-1]
    assert inner.float().mean() > 0.4
    c = lab[1:-1, 1:-1][inner].float()
    img = s["image"][:, 1:-1, 1:-1][:, inner]
    torch.testing.assert_close(img[0], c / 12.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s["depth"][0, 1:-1, 1:-1][inner], (1.0 + c) / depth_div, atol=1e-5, rtol=0)
    return s["normal"][:, 1:-1, 1:-1][:, inner].T, table[c.long()]


@pytest.mark.parametrize("scale,top,left", [(1.5, 3, 10), (1.2, 0, 9), (1.0, 0, 0)])
def test_scale_crop_keeps_maps_aligned(scale, top, left):
    s, table = _block_sample()
    out = scale_crop(s, scale, top, left)
    assert out["image"].shape == s["image"].shape
    n, ref = _check_aligned(out, table, scale)
    torch.testing.assert_close(n, ref, atol=1e-5, rtol=0)
    # straight to a smaller size (as the dataset does with `size`)
    small = scale_crop(s, scale, top, left, size=(20, 28))
    assert small["semantic"].shape == (20, 28)
    assert set(small["semantic"].unique().tolist()) <= set(s["semantic"].unique().tolist())


def test_pure_crop_divides_depth_by_the_scale():
    s, _ = _block_sample()
    ch, cw = int(40 / 1.5), int(56 / 1.5)
    out = crop_resize(s, 5, 7, ch, cw, (ch, cw), depth_scale=1.5)
    torch.testing.assert_close(out["depth"], s["depth"][:, 5:5 + ch, 7:7 + cw] / 1.5)
    assert torch.equal(out["semantic"], s["semantic"][5:5 + ch, 7:7 + cw])


def test_flip_negates_normal_x_and_twice_is_identity(root):
    s = NYUv2(root, "train")[2]
    del s["index"]
    f = hflip(s)
    assert torch.equal(f["semantic"], s["semantic"].flip(-1))
    assert torch.equal(f["image"], s["image"].flip(-1))
    assert torch.equal(f["depth"], s["depth"].flip(-1))
    assert torch.equal(f["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(f["normal"][1:], s["normal"][1:].flip(-1))
    ff = hflip(f)
    for k in s:
        assert torch.equal(ff[k], s[k]), k


def test_random_augmentation_is_seeded_and_aligned():
    s, table = _block_sample(seed=1)
    a = random_scale_crop_flip(s, generator=torch.Generator().manual_seed(7))
    b = random_scale_crop_flip(s, generator=torch.Generator().manual_seed(7))
    for k in a:
        assert torch.equal(a[k], b[k])
    flipped = random_scale_crop_flip(s, scales=(1.0,), flip_prob=1.0)
    for k in s:
        assert torch.equal(flipped[k], hflip(s)[k])
    for seed in range(6):
        out = random_scale_crop_flip(s, generator=torch.Generator().manual_seed(seed))
        # depth / scale = (1 + label) / scale tells the scale that was drawn
        lab = out["semantic"]
        ratio = ((1.0 + lab.float()) / out["depth"][0]).median()
        scale = min((1.0, 1.2, 1.5), key=lambda v: abs(v - float(ratio)))
        n, ref = _check_aligned(out, table, scale)
        # a flip negates x: the normal matches the table either as is or with x negated
        plain = (n - ref).abs().max() < 1e-4
        mirrored = (n - ref * torch.tensor([-1.0, 1.0, 1.0])).abs().max() < 1e-4
        assert plain or mirrored


def test_size_resizes_consistently(root):
    ds = NYUv2(root, "train", augment=True, size=(24, 32))
    torch.manual_seed(0)
    stored = NYUv2(root, "train")
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 24, 32) and s["semantic"].shape == (24, 32)
        assert s["depth"].shape == (1, 24, 32) and s["normal"].shape == (3, 24, 32)
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        valid = s["depth"] > 0
        assert valid.float().mean() > 0.99
        norms = s["normal"].norm(dim=0)
        assert torch.allclose(norms[valid[0]], torch.ones(()), atol=1e-4)
        assert set(s["semantic"].unique().tolist()) <= set(stored[i]["semantic"].unique().tolist())
    r = resize_sample({k: v for k, v in stored[0].items() if k != "index"}, (24, 32))
    # downsampling by 2 keeps the depth of flat regions and the mean depth
    assert abs(float(r["depth"].mean()) - float(stored[0]["depth"].mean())) < 0.05
