"""experiments/sam_mtl.py: bad arguments fail fast with one line; every --decomp trains; outputs are written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import sam_mtl  # noqa: E402


def fail_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process, expect exit status 2 and exactly one stderr line; return it."""
    try:
        rc = sam_mtl.main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sam_mtl.py: error: ")
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["--decomp", "svd"], "--decomp must be one of cp, tucker, tt, lora, shared-lora, full, frozen"),
    (["--decomp", "tucker", "--ranks", "4,32"], "ranks for tucker must be 3 value(s)"),
    (["--decomp", "cp", "--ranks", "4,4"], "ranks for cp must be 1 value(s)"),
    (["--decomp", "tt", "--ranks", "a,b"], "--ranks"),
    (["--decomp", "lora", "--ranks", "0"], "positive"),
    (["--decomp", "frozen", "--ranks", "4"], "--ranks does not apply to --decomp frozen"),
    (["--model", "vit_xl"], "--model must be one of"),
    (["--data", "kitti"], "--data must be one of"),
    (["--data", "nyuv2"], "--data nyuv2 needs --data-root"),
    (["--data", "nyuv2", "--data-root", "/nonexistent/nyu"], "--data-root /nonexistent/nyu does not exist"),
    (["--checkpoint", "/nonexistent/sam_vit_b.pth"], "--checkpoint /nonexistent/sam_vit_b.pth does not exist"),
    (["--epochs", "0"], "--epochs must be a positive int"),
    (["--lr", "-1"], "--lr"),
    (["--qkv", "qx"], "--qkv"),
    (["--task-weights", "semantic=1,sky=2"], "unknown task(s) ['sky']"),
    (["--task-weights", "semantic"], "task=weight"),
    (["--tasks", "semantic,semantic"], "--tasks"),
    (["--baseline", "/nonexistent/results.json"], "--baseline"),
    (["--batch-size", "x"], "--batch-size"),
])
def test_bad_arguments_fail_with_one_clear_line(capsys, tmp_path, argv, needle):
    line = fail_line(capsys, argv + ["--out", str(tmp_path / "run")])
    assert needle in line, line
    assert not (tmp_path / "run").exists()  # nothing started


def test_nyuv2_root_without_the_layout_is_rejected(capsys, tmp_path):
    (tmp_path / "nyu" / "train").mkdir(parents=True)
    line = fail_line(capsys, ["--data", "nyuv2", "--data-root", str(tmp_path / "nyu"), "--out", str(tmp_path / "r")])
    assert "val/image" in line and "train/image" in line


def test_unknown_task_is_rejected(capsys, tmp_path):
    line = fail_line(capsys, ["--tasks", "semantic,edges", "--checkpoint", "none", "--out", str(tmp_path / "r")])
    assert "edges" in line


def test_subprocess_exit_status_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "sam_mtl.py"), "--decomp", "tucker",
                           "--ranks", "4,4", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "ranks for tucker" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_round_trips_and_fills_default_ranks():
    cfg = sam_mtl.ExperimentConfig(decomp="tt", image_size=(48, 64), task_weights={"depth": 2})
    assert cfg.ranks == sam_mtl.DEFAULT_RANKS["tt"] and cfg.parsed_ranks() == (16, 16)
    again = sam_mtl.ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert sam_mtl.ExperimentConfig(decomp="full").ranks is None
