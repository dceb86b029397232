"""The cached pretrained checkpoint: reused only when its report shows the same recipe and config and its
bytes match; rebuilt otherwise; other configs never overwrite the default one."""
import json

import pytest

import tensoradapt.train.pretrain.build as build
import tensoradapt.train.pretrain.loop as loop
from tensoradapt.train.pretrain import (
    PRETRAIN_VERSION,
    PretrainConfig,
    checkpoint_mismatch,
    default_tiny_sam_path,
    ensure_tiny_sam_checkpoint,
)

SMALL = PretrainConfig(steps=1, n_scenes=2, n_heldout=1, batch_size=1, masks_per_image=2, eval_masks_per_scene=2)


@pytest.fixture
def builds(tmp_path, monkeypatch):
    """The configs `ensure` trained, in order (the real, small build runs)."""
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = build.pretrain_tiny_sam

    def counted(path, config, progress=True):
        calls.append(config)
        return real(path, config, progress=False)

    monkeypatch.setattr(build, "pretrain_tiny_sam", counted)
    return calls


def test_default_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path))
    path = default_tiny_sam_path()
    assert path == tmp_path / "sam" / f"tiny_sam_synthetic_v{PRETRAIN_VERSION}.pth"
    assert default_tiny_sam_path(PretrainConfig()) == path
    longer = default_tiny_sam_path(PretrainConfig(steps=6000))
    assert longer != path and longer.parent == path.parent and f"_v{PRETRAIN_VERSION}_" in longer.name
    assert default_tiny_sam_path(PretrainConfig(steps=6000)) == longer           # stable
    assert default_tiny_sam_path(PretrainConfig(seed=1)) not in (path, longer)


def test_ensure_builds_once_then_reuses(builds, tmp_path):
    path = ensure_tiny_sam_checkpoint(config=SMALL, progress=False)
    assert path.is_file() and str(path).startswith(str(tmp_path / "cache")) and builds == [SMALL]
    assert path == default_tiny_sam_path(SMALL)
    stamp = path.stat().st_mtime_ns
    assert ensure_tiny_sam_checkpoint(config=SMALL, progress=False) == path       # found: not rebuilt
    assert builds == [SMALL] and path.stat().st_mtime_ns == stamp
    assert ensure_tiny_sam_checkpoint(path, PretrainConfig(**SMALL.to_dict()), progress=False) == path
    assert len(builds) == 1                                                      # an equal config is the same


def test_ensure_rebuilds_on_a_config_change(builds, tmp_path):
    path = tmp_path / "m.pth"
    ensure_tiny_sam_checkpoint(path, SMALL, progress=False)
    other = SMALL.replace(seed=1)
    why = checkpoint_mismatch(path, other)
    assert why is not None and "seed: 0 -> 1" in why
    ensure_tiny_sam_checkpoint(path, other, progress=False)
    assert builds == [SMALL, other]
    assert json.loads(path.with_suffix(".json").read_text())["pretrain_config"] == other.to_dict()
    assert checkpoint_mismatch(path, other) is None
    ensure_tiny_sam_checkpoint(path, other, progress=False)
    assert len(builds) == 2
    # a report written before the `masks` option existed names the same config (it meant masks="all")
    report = json.loads(path.with_suffix(".json").read_text())
    del report["pretrain_config"]["masks"]
    path.with_suffix(".json").write_text(json.dumps(report))
    assert checkpoint_mismatch(path, other) is None
    why = checkpoint_mismatch(path, other.replace(masks="objects"))
    assert why is not None and "masks: 'all' -> 'objects'" in why


def test_ensure_rebuilds_what_it_cannot_vouch_for(builds, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    ensure_tiny_sam_checkpoint(path, SMALL, progress=False)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))                          # corrupt: sha256 differs
    assert "sha256" in checkpoint_mismatch(path, SMALL)
    ensure_tiny_sam_checkpoint(path, SMALL, progress=False)
    assert len(builds) == 2 and path.read_bytes() == good                         # the same bytes again
    path.with_suffix(".json").unlink()                                            # no report
    assert "report" in checkpoint_mismatch(path, SMALL)
    ensure_tiny_sam_checkpoint(path, SMALL, progress=False)
    assert len(builds) == 3
    for module in (build, loop):                                                  # the recipe's code changed
        monkeypatch.setattr(module, "PRETRAIN_VERSION", PRETRAIN_VERSION + 1)
    assert "version" in checkpoint_mismatch(path, SMALL)
    ensure_tiny_sam_checkpoint(path, SMALL, progress=False)
    assert len(builds) == 4 and checkpoint_mismatch(path, SMALL) is None
    path.unlink()                                                                 # gone
    assert checkpoint_mismatch(path, SMALL) == "not there"
