"""2-process gloo DDP: through torchrun it equals one process on the combined batch; mSAM as built needs no
`find_unused_parameters`."""
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------- mSAM under DDP, as built
def _msam_ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str, extra_trainable: bool) -> None:
    import torch.distributed as dist

    from tensoradapt.mtl import get_tasks, task_losses
    from tensoradapt.sam import build_msam
    from tensoradapt.train import TrainConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        tasks = get_tasks()
        torch.manual_seed(0)  # the same model on both ranks
        model = build_msam("tiny", {n: s.channels for n, s in tasks.items()}, decomp="tucker", dropout=0.0)
        with torch.no_grad():  # a non-zero delta, so that the factors get gradients too
            for name, p in model.named_parameters():
                if ".delta." in name:
                    p.normal_(0, 0.02)
        if extra_trainable:  # a head mSAM never reads: what find_unused_parameters=True would be for
            model.decoders["depth"].iou_prediction_head.requires_grad_(True)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=TrainConfig().find_unused_parameters)
        g = torch.Generator().manual_seed(rank)
        batch = {"image": torch.rand(1, 3, 24, 32, generator=g),
                 "semantic": torch.randint(0, 13, (1, 24, 32), generator=g),
                 "depth": torch.rand(1, 1, 24, 32, generator=g) + 0.1,
                 "normal": torch.randn(1, 3, 24, 32, generator=g)}
        grads = []
        for _ in range(2):  # DDP reports unused parameters of one step at the next one's forward
            ddp.zero_grad(set_to_none=True)
            sum(task_losses(ddp(batch["image"]), batch, tasks).values()).backward()
            grads.append({n: None if p.grad is None else p.grad.clone()
                          for n, p in model.named_parameters() if p.requires_grad})
        torch.save({"grads": grads[-1], "ok": True}, f"{out_dir}/rank{rank}.pt")
    except Exception as e:  # reported to the test, which asserts on it
        torch.save({"ok": False, "error": f"{type(e).__name__}: {e}"}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_msam_ddp(tmp_path: Path, extra_trainable: bool) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_msam_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), extra_trainable), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_msam_trains_under_ddp_without_find_unused_parameters(tmp_path):
    """The default (find_unused_parameters=False) suffices for mSAM as built: two DDP steps on 2 gloo
    processes, every trainable tensor gets a finite gradient, the same on both ranks (all-reduced)."""
    from tensoradapt.train import TrainConfig

    assert TrainConfig().find_unused_parameters is False
    a, b = _run_msam_ddp(tmp_path, extra_trainable=False)
    assert a["ok"] and b["ok"], (a.get("error"), b.get("error"))
    missing = [n for n, g in a["grads"].items() if g is None]
    assert not missing, missing
    assert any(".delta." in n for n in a["grads"]) and any("decoders." in n for n in a["grads"])
    for n, g in a["grads"].items():
        assert torch.isfinite(g).all(), n
        torch.testing.assert_close(g, b["grads"][n], rtol=1e-5, atol=1e-7, msg=n)
    # The guard is real: a trainable tensor without a gradient makes the second DDP step fail.
    (tmp_path / "init").unlink(missing_ok=True)
    bad = _run_msam_ddp(tmp_path, extra_trainable=True)
    assert not bad[0]["ok"] and "finished reduction in the prior iteration" in bad[0]["error"], bad[0]
