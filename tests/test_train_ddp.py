"""2-process gloo DDP (through torchrun) equals one process on the combined batch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tensoradapt.train import load_checkpoint, read_jsonl

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, torch
    from tensoradapt import adapt, mark_trainable
    from tensoradapt.train import TrainConfig, Trainer, init_distributed, cleanup_distributed
    from toy import ToyDataset, ToyMultiTaskNet, toy_tasks

    out, batch, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    info = init_distributed("cpu")
    if kind == "mtl":  # the real task table (tensor-state meters), on toy images
        from tensoradapt.mtl import get_tasks

        class Data(ToyDataset):
            def __getitem__(self, i):
                img = self.images[i]
                lab = (img.sum(0) * 5).long() % 13
                lab[0, 0] = -1
                n = img - 0.5
                return {"image": img, "semantic": lab, "depth": img.mean(0, keepdim=True) + 0.5,
                        "normal": n / n.norm(dim=0, keepdim=True)}

        tasks, train_set, val_set = get_tasks(), Data(16), Data(7, seed=1)
    else:  # with random flips: per-sample seeding makes them independent of the process count
        tasks, train_set, val_set = toy_tasks(), ToyDataset(16, augment=True), ToyDataset(7, seed=1)
    torch.manual_seed(0)
    model = ToyMultiTaskNet({name: spec.channels for name, spec in tasks.items()})
    adapt(model, ["fc1", "fc2"], decomp="tucker", num_tasks=len(tasks), ranks=(2, 3, 3), init="orthonormal")
    mark_trainable(model, [model.heads, model.norm])
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-2, progress=False, orth_weight=0.1,
                      max_grad_norm=0.5, warmup_steps=0)
    # 16 samples: 2 steps of 8 (one process) or 2 steps of 2 x 4 (two processes).
    summary = Trainer(model, tasks, train_set, val_set, cfg, out_dir=out,
                      dist_info=info).fit()
    if info.is_main:
        print("SUMMARY", summary["steps"], summary["world_size"])
    cleanup_distributed()
""")


def run(args: list[str], tmp_path: Path) -> str:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])  # tests/toy.py
    env = {**os.environ, "PYTHONPATH": path,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("kind", ["toy", "mtl"])
def test_two_process_ddp_step_equals_one_process_on_the_combined_batch(tmp_path, kind):
    script = tmp_path / "ddp_toy.py"
    script.write_text(SCRIPT)
    one = run([sys.executable, str(script), str(tmp_path / "one"), "8", kind], tmp_path)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path / "two"), "4", kind], tmp_path)
    assert "SUMMARY 2 1" in one and "SUMMARY 2 2" in two
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert len(b["rng"]) == 2  # each rank's RNG state is kept for resumption
    # Sharded evaluation (7 samples over 2 ranks, no padding) reduces to the single-process metrics.
    ea = [r for r in read_jsonl(tmp_path / "one" / "log.jsonl") if r["event"] == "eval"][-1]
    eb = [r for r in read_jsonl(tmp_path / "two" / "log.jsonl") if r["event"] == "eval"][-1]
    keys = [k for k in ea if k not in ("event", "step", "epoch")]
    assert len(keys) > 3 and set(keys) == set(eb) - {"event", "step", "epoch"}
    for k in keys:
        assert eb[k] == pytest.approx(ea[k], rel=1e-4, abs=1e-5), k
