"""experiments/sam_mtl.py and the fine-tuning recipe behind it (tensoradapt.train.finetune): bad arguments
fail fast with one line; every --decomp trains; outputs are written; resume; DDP."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import ROOT, load_script

from tensoradapt import DECOMPS as DELTA_DECOMPS
from tensoradapt.sam import DECOMPS
from tensoradapt.train import finetune
from tensoradapt.train.finetune import FinetuneConfig

sam_mtl = load_script("experiments/sam_mtl.py")


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
    (["--decomp", "svd"], "--decomp must be one of ['cp', 'tucker', 'tt', 'lora', 'shared-lora', 'full', 'frozen'"),
    (["--decomp", "tucker", "--ranks", "4,32"], "ranks for tucker must be 3 value(s)"),
    (["--decomp", "cp", "--ranks", "4,4"], "ranks for cp must be 1 value(s)"),
    (["--decomp", "tt", "--ranks", "a,b"], "--ranks"),
    (["--decomp", "lora", "--ranks", "0"], "positive"),
    (["--decomp", "frozen", "--ranks", "4"], "--ranks does not apply to decomp='frozen'"),
    (["--model", "vit_xl"], "--model must be one of"),
    (["--data", "kitti"], "--data must be one of"),
    (["--data", "nyuv2"], "--data nyuv2 needs --data-root"),
    (["--data", "nyuv2", "--data-root", "/nonexistent/nyu"], "--data-root /nonexistent/nyu does not exist"),
    (["--checkpoint", "/nonexistent/sam_vit_b.pth"], "--checkpoint /nonexistent/sam_vit_b.pth does not exist"),
    (["--epochs", "0"], "--epochs must be a positive int"),
    (["--lr-scale", "head=2"], "--lr-scale names unknown parameter group(s) ['head']"),
    (["--lr-scale", "delta=0"], "--lr-scale['delta'] must be a finite float > 0"),
    (["--lr", "-1"], "--lr"),
    (["--qkv", "qx"], "--qkv"),
    (["--task-weights", "semantic=1,sky=2"], "unknown task(s) ['sky']"),
    (["--task-weights", "semantic"], "--task-weights: expected name=number"),
    (["--tasks", "semantic,semantic"], "--tasks"),
    (["--baseline", "/nonexistent/results.json"], "--baseline"),
    (["--batch-size", "x"], "--batch-size"),
    (["--train-modules", "patch_embedding"], "--train-modules: the image encoder has no submodule or parameter 'patch_embedding'"),
    (["--train-modules", "blocks.0.attn"], "--train-modules: 'blocks.0.attn' holds a task delta"),
    (["--decomp", "full", "--train-modules", "neck"], "--train-modules does not apply to decomp='full'"),
    (["--train-modules", "neck,,neck"], "--train-modules must be distinct dotted module names"),
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


def test_config_round_trips_and_resolves_default_ranks():
    cfg = FinetuneConfig(image_size=(48, 64)).updated(decomp="tt", task_weights={"depth": 2})
    assert cfg.msam.ranks is None and cfg.msam_config().ranks == (4, 8)  # build_msam's default for tiny
    assert cfg.updated(model="vit_b", decomp="tucker").msam_config().ranks == (4, 32, 32)  # the paper's
    assert cfg.updated(ranks="2,3").msam.ranks == (2, 3)  # CLI text, normalised
    again = FinetuneConfig.from_dict(json.loads(json.dumps(cfg.updated(ranks="2,3").to_dict())))
    assert again == cfg.updated(ranks="2,3")
    assert cfg.updated(decomp="full").msam_config().ranks is None


def test_config_composes_the_train_config_and_the_model_options():
    """No field is declared twice: the run's, the model's and the training's names are disjoint, every
    option is reachable through `updated`, and each is validated where it is defined."""
    import dataclasses

    from tensoradapt.train import TrainConfig
    from tensoradapt.train.finetune import MSamOptions

    own = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"msam", "train"}
    model = {f.name for f in dataclasses.fields(MSamOptions)}
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not (own & model) and not (own & train) and not (model & train)
    cfg = FinetuneConfig().updated(epochs=2, dropout=0.0, val_size=3, find_unused_parameters=True)
    assert (cfg.train.epochs, cfg.msam.dropout, cfg.val_size) == (2, 0.0, 3)
    assert cfg.train.find_unused_parameters and not FinetuneConfig().train.find_unused_parameters
    assert FinetuneConfig().train.epochs == 5 and TrainConfig().epochs == 10  # the recipe's own defaults
    with pytest.raises(TypeError, match="unknown fine-tuning option 'epoch'"):
        FinetuneConfig().updated(epoch=2)
    with pytest.raises(finetune.UsageError, match=r"--dropout must be a number in \[0, 1\)"):
        FinetuneConfig(msam=MSamOptions(dropout=1.5))


def test_resume_differences_ignore_tolerant_fields_only():
    cfg = FinetuneConfig().updated(decomp="cp", ranks=2)
    stored = json.loads(json.dumps(cfg.to_dict()))
    later = cfg.updated(out="elsewhere", num_figures=0, threads=2, progress=False, num_workers=2,
                        ckpt_every_steps=3, device="cpu", attention="sam", grad_checkpointing=True,
                        flush_denormal=False)
    assert later.resume_differences(stored) == {}  # kernel, checkpointing, subnormal flag: float noise only
    changed = cfg.updated(ranks=3, lr=0.5, image_size=(48, 64))
    assert changed.resume_differences(stored) == {
        "ranks": (2, 3), "lr": (FinetuneConfig().train.lr, 0.5), "image_size": (None, [48, 64])}
    # a record from before a model option existed had that option's default (here: deltas in qkv only)
    del stored["msam"]["targets"]
    assert later.resume_differences(stored) == {}
    flat = {k: v for k, v in stored.items() if k != "msam"}  # the oldest records: no model section to compare
    assert cfg.resume_differences(flat) == {}
    assert cfg.resume_differences({**stored, "msam": {**stored["msam"], "targets": "qkv"}}) == {}  # as typed
    assert cfg.updated(targets="mlp,qkv").resume_differences(stored) == {"targets": (["qkv"], ["qkv", "mlp"])}


# ---------------------------------------------------------------------------- runs with the real tiny mSAM
# Random-init tiny SAM (--checkpoint none) on a few tiny synthetic scenes: the pipeline, not the numbers.
@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    from tensoradapt.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("mini"), n_train=8, n_val=4, height=48, width=64, workers=1)


def base_args(mini: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", "none", "--data", "nyuv2", "--data-root", str(mini), "--image-size", "48,64",
            "--train-size", "4", "--val-size", "2", "--batch-size", "2", "--epochs", "1", "--num-figures", "0",
            "--no-progress", "--out", str(out), *extra]


@pytest.mark.parametrize("decomp", DECOMPS)
def test_every_decomp_trains_two_steps(decomp, mini, tmp_path):
    import torch

    from tensoradapt.train import load_checkpoint

    out = tmp_path / decomp
    assert sam_mtl.main(base_args(mini, out, "--decomp", decomp, "--orth-weight", "0.01")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 2 and res["skipped_steps"] == 0
    assert res["config"]["msam"]["decomp"] == decomp == res["msam_config"]["decomp"]
    assert set(res["metrics"]) == {"semantic", "depth", "normal"}
    assert all(math.isfinite(v) for m in res["metrics"].values() for v in m.values())
    assert (res["params"]["delta"] > 0) == (decomp in DELTA_DECOMPS)
    assert not res["config"]["train"]["find_unused_parameters"]
    # the trained state moved away from the freshly built model's
    cfg = FinetuneConfig.from_dict(res["config"])
    fresh = finetune.build_model(cfg, None).state_dict()
    trained = load_checkpoint(out / "last.pt")["model"]
    assert any(not torch.equal(v, fresh[k]) for k, v in trained.items())
    assert (out / "loss_curves.png").exists()


def test_results_figures_and_delta_m(mini, tmp_path):
    base, run = tmp_path / "lora", tmp_path / "tucker"
    assert sam_mtl.main(base_args(mini, base, "--decomp", "lora", "--ranks", "2")) == 0
    argv = base_args(mini, run, "--decomp", "tucker", "--ranks", "2,4,4", "--baseline", str(base / "results.json"))
    argv[argv.index("--num-figures") + 1] = "2"
    assert sam_mtl.main(argv) == 0
    res = json.loads((run / "results.json").read_text())
    dm = res["delta_m"]
    assert dm["baseline_decomp"] == "lora" and (dm["value"] is None) == ("error" in dm)
    for key in ("metrics", "params", "wall_time_s", "train_time_s", "median_step_time_s", "config", "best"):
        assert res[key] is not None, key
    assert res["params"]["trainable"] < res["params"]["total"]
    # provenance: the code and the CPU a cell's figures came from (pairs are only formed on one machine)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", res["code_revision"]), res["code_revision"]
    assert isinstance(res["cpu"], str) and res["cpu"] and isinstance(res["cpu_capability"], str)
    for fig in ("loss_curves.png", "predictions.png"):
        assert (run / fig).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "run_config.json").read_text())["msam"]["ranks"] == [2, 4, 4]


def test_checkpoint_of_another_size_fails_before_training(capsys, mini, tmp_path):
    import torch

    from tensoradapt.sam import build_sam, get_sam_config

    other = get_sam_config("tiny").replace(encoder_embed_dim=64, encoder_num_heads=2)
    path = tmp_path / "sam_other.pth"
    torch.save(build_sam(other).state_dict(), path)
    argv = base_args(mini, tmp_path / "r")
    argv[argv.index("--checkpoint") + 1] = str(path)
    line = fail_line(capsys, argv)
    assert "sam_other.pth" in line
    assert not (tmp_path / "r" / "last.pt").exists()


class _Kill(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(mini, tmp_path):
    import torch

    from tensoradapt.train import load_checkpoint

    args = ["--epochs", "2", "--ckpt-every", "1", "--dropout", "0.1"]  # augmentation + dropout draw RNG
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert sam_mtl.main(base_args(mini, ref, *args)) == 0

    def kill(trainer):
        if trainer.step == 3:
            raise _Kill

    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(base_args(mini, run, *args)))
    with pytest.raises(_Kill):
        finetune.run(cfg, callbacks=[kill])
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert sam_mtl.main(base_args(mini, run, *args)) == 2  # no silent overwrite without --resume
    assert sam_mtl.main(base_args(mini, run, *args, "--resume")) == 0

    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref, run))
    assert ra["metrics"] == rb["metrics"]
    # the record says which part of the run its wall time covers: the resumed process began at step 2
    assert ra["resumed_at_step"] == 0 and rb["resumed_at_step"] == 2


def test_resume_with_other_settings_is_refused(capsys, mini, tmp_path):
    out = tmp_path / "r"
    assert sam_mtl.main(base_args(mini, out, "--decomp", "cp", "--ranks", "2")) == 0
    capsys.readouterr()
    line = fail_line(capsys, base_args(mini, out, "--decomp", "cp", "--ranks", "3", "--resume"))
    assert "ranks 2 -> 3" in line


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(mini, tmp_path):
    """`torchrun --nproc_per_node 2 sam_mtl.py` (gloo DDP) = one process with the combined batch."""
    import torch

    from tensoradapt.train import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # depth and normals are valid at every pixel of these scenes, so per-process means average exactly to
    # the combined batch's mean (the semantic loss averages over a varying number of labelled pixels).
    # SGD: Adam's update is ~lr * sign(grad), which turns the rounding differences of near-zero gradients
    # (summed in another order across processes) into O(lr) parameter differences; SGD keeps them linear.
    # the tiny model and one learning rate for every group, as the tolerances below were set for: the recipe's
    # x10 on the embeddings (and tiny_p8's 4x longer sums) turn the same rounding into larger differences
    common = ["--dropout", "0", "--no-augment", "--max-grad-norm", "1", "--tasks", "depth,normal",
              "--optimizer", "sgd", "--lr", "0.05", "--lr-scale", "embed=1,delta=1,encoder=1", "--model", "tiny"]
    one = base_args(mini, tmp_path / "one", *common)          # 1 process x batch 2: two steps
    two = list(one)
    two[two.index("--out") + 1] = str(tmp_path / "two")
    two[two.index("--batch-size") + 1] = "1"                 # 2 processes x batch 1: two steps
    script = str(ROOT / "experiments" / "sam_mtl.py")
    for argv in ([sys.executable, script, *one],
                 [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *two]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert len(b["rng"]) == 2 and a["step"] == b["step"] == 2
    # compared tensor by tensor in RMS, not element by element: an entry whose gradient sums terms that nearly
    # cancel keeps the summation order's rounding at full size (an AMD EPYC put one of the 256 entries of a
    # Tucker core, -0.00128 against -0.00127, 1.06e-5 apart against an element-wise bound of 1.01e-5), while a
    # real fault (gradients summed instead of averaged, a sample dropped) moves whole tensors by their update
    for k in a["model"]:
        x, y = a["model"][k].double(), b["model"][k].double()
        bound = 1e-5 * x.numel() ** 0.5 + 1e-4 * y.norm()
        assert (x - y).norm() <= bound, f"{k}: |one - two| = {float((x - y).norm()):.3g} > {float(bound):.3g}"
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert rb["world_size"] == 2
    # a share of pixels under a threshold (normal "within_22.5") may flip one pixel of the 2 x 48 x 64 validation
    # pixels: weights equal to 1e-5 put one pixel on the other side of 22.5 degrees on an Intel Xeon
    one_pixel = 100 / (2 * 48 * 64)
    for t, metrics in ra["metrics"].items():
        for m, v in metrics.items():
            tol = 1.01 * one_pixel if m.startswith("within_") else 1e-3
            assert rb["metrics"][t][m] == pytest.approx(v, rel=1e-3, abs=tol), (t, m)


def test_nonfinite_loss_stops_with_one_line_naming_step_and_task(capsys, mini, tmp_path, monkeypatch):
    import torch

    from tensoradapt.mtl.tasks import DepthTask

    real = DepthTask.loss
    monkeypatch.setattr(DepthTask, "loss", lambda self, logits, target: real(self, logits, target) * torch.nan)
    assert sam_mtl.main(base_args(mini, tmp_path / "r")) == 3
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "non-finite loss at step 1" in err[0] and "depth = nan" in err[0]
    out = tmp_path / "s"
    assert sam_mtl.main(base_args(mini, out, "--skip-nonfinite")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["skipped_steps"] == res["steps"] == 2


def test_lr_scale_reaches_the_optimizer_of_the_recipe(mini, tmp_path):
    from tensoradapt.inject import task_deltas

    seen = {}

    def capture(trainer):
        lr = {id(p): g["initial_lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
        model = trainer.model
        seen["delta"] = {lr[id(p)] for _, d in task_deltas(model) for p in d.parameters()}
        seen["embed"] = {lr[id(p)] for p in model.no_mask_embeds.values()}
        seen["decoder"] = {lr[id(p)] for p in model.decoders.parameters() if p.requires_grad}

    args = base_args(mini, tmp_path / "r", "--lr", "1e-3", "--lr-scale", "delta=0.5,embed=10")
    finetune.run(sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(args)), callbacks=[capture])
    assert {k: sorted(v) for k, v in seen.items()} == {
        "delta": [pytest.approx(5e-4)], "embed": [pytest.approx(1e-2)], "decoder": [pytest.approx(1e-3)],
    }
    # the deltas sit under the encoder's names: scaling the encoder alone must not reach them
    args = base_args(mini, tmp_path / "e", "--lr", "1e-3", "--lr-scale", "encoder=0.25,delta=1")
    finetune.run(sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(args)), callbacks=[capture])
    assert sorted(seen["delta"]) == [pytest.approx(1e-3)]
    # without --lr-scale: the recipe's defaults; a group given replaces its default only
    defaults = FinetuneConfig().train.lr_scale
    args = base_args(mini, tmp_path / "d", "--lr", "1e-3", "--lr-scale", "delta=2")
    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(args))
    assert cfg.train.lr_scale == {**defaults, "delta": 2.0}
    args = base_args(mini, tmp_path / "d", "--lr", "1e-3")
    assert sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(args)).train.lr_scale == defaults


def test_targets_flag_reaches_the_model(mini, tmp_path):
    args = base_args(mini, tmp_path / "t", "--targets", "mlp,qkv")
    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(args))
    assert cfg.msam.targets == ("qkv", "mlp") and cfg.msam_config().targets == ("qkv", "mlp")
    with pytest.raises(finetune.UsageError, match="^--targets must be"):
        sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(base_args(mini, tmp_path / "t", "--targets", "ffn")))


def test_results_name_the_code_revision_the_run_started_on(mini, tmp_path, monkeypatch):
    """The revision is read before training: a commit made while a run trains is not the run's code."""
    from tensoradapt.train.pretrain import artifact

    tree = {"rev": "a" * 40}
    monkeypatch.setattr(artifact, "code_revision", lambda: tree["rev"])
    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(base_args(mini, tmp_path / "r")))
    results = finetune.run(cfg, callbacks=[lambda trainer: tree.update(rev="b" * 40)])
    assert tree["rev"] == "b" * 40 and results["code_revision"] == "a" * 40


@pytest.mark.parametrize("extra, flushed", [((), True), (("--no-flush-denormal",), False)])
def test_the_run_flushes_subnormals_while_it_trains_and_restores_the_flag(mini, tmp_path, extra, flushed):
    from tensoradapt._utils import denormals_flushed

    seen = []
    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(base_args(mini, tmp_path / "r", *extra)))
    assert cfg.flush_denormal is flushed
    results = finetune.run(cfg, callbacks=[lambda trainer: seen.append(denormals_flushed())])
    assert seen and set(seen) == {flushed}  # every optimiser step ran under the requested flag
    assert not denormals_flushed()  # and this thread gets torch's default back
    assert results["config"]["flush_denormal"] is flushed and results["denormals_flushed"] is flushed


_TWO_THREADS = """
import sys, torch
sys.path.insert(0, {experiments!r})
import sam_mtl
from tensoradapt.train import finetune
seen = []
def check(trainer):  # made in the run: a big op before it would start the threads unflushed
    # float32 subnormals made from their bits (a float fill would already flush them on this thread); 2 chunks
    # of torch's elementwise grain, so both threads compute the product
    subnormals = torch.full((1 << 16,), 1 << 20, dtype=torch.int32).view(torch.float32)
    seen.append(bool(((subnormals * 1.0) == 0).all()))
def build(cfg, checkpoint):  # as loading real weights does, start the thread pool before training
    torch.ones(1 << 20).add_(1.0)
    return finetune.build_model(cfg, checkpoint)
cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args({argv!r}))
finetune.run(cfg, callbacks=[check], model_builder=build)
print(len(seen), all(seen))
"""


def test_every_intra_op_thread_of_a_fresh_run_flushes(mini, tmp_path):
    # The flag is per thread and threads inherit it when created: `run` must set it before its first
    # multi-threaded op, or half of each parallel op keeps the slow subnormals.
    argv = base_args(mini, tmp_path / "r", "--threads", "2")
    code = _TWO_THREADS.format(experiments=str(ROOT / "experiments"), argv=argv)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    steps, all_flushed = out.stdout.split()[-2:]
    assert int(steps) > 0 and all_flushed == "True"


def test_flush_denormal_must_be_a_bool():
    with pytest.raises(finetune.UsageError, match="^flush_denormal must be True or False; got 'yes'"):
        finetune.FinetuneConfig(flush_denormal="yes")


def test_the_readmes_paper_command_parses_into_the_papers_setting(tmp_path):
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "runs/paper-tucker" in b)
    argv = shlex.split(block.replace("\\\n", " "))
    argv = argv[argv.index("experiments/sam_mtl.py") + 1:]
    ckpt = tmp_path / "sam_vit_l_0b3195.pth"
    ckpt.touch()
    (tmp_path / "nyu" / "train" / "image").mkdir(parents=True)
    (tmp_path / "nyu" / "val" / "image").mkdir(parents=True)
    argv[argv.index("--checkpoint") + 1] = str(ckpt)
    argv[argv.index("--data-root") + 1] = str(tmp_path / "nyu")
    cfg = sam_mtl.config_from_args(sam_mtl.build_parser().parse_args(argv))
    assert cfg.model == "vit_l" and cfg.msam.ranks == (4, 32, 32) and cfg.train.lr == 1e-3
    assert set(cfg.train.lr_scale.values()) == {1.0}  # the paper has one learning rate
    assert cfg.train.orth_weight == 1 and cfg.train.orth_terms == "paper" and cfg.train.epochs == 200


def test_load_run_gives_back_the_trained_model(mini, tmp_path, capsys):
    """`load_run` rebuilds a finished run's model with its trained weights: evaluating it again reproduces the
    run's own depth metric (a fresh model would not), and depth_error.py reports that same number."""
    depth_error = load_script("experiments/depth_error.py")
    out = tmp_path / "run"
    assert sam_mtl.main(base_args(mini, out, "--decomp", "tucker", "--ranks", "2,4,4")) == 0
    want = json.loads((out / "results.json").read_text())["metrics"]["depth"]["abs_err"]
    cfg, model, val = finetune.load_run(out, "last")
    assert not model.training and len(val) == 2 and cfg.msam.decomp == "tucker"
    capsys.readouterr()
    assert depth_error.main([str(out), "--checkpoint", "last"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert float(row[2]) == pytest.approx(want, abs=1e-4)
    fresh = finetune.build_model(cfg, None).eval()
    from tensoradapt.train.distributed import DistInfo
    from tensoradapt.train.evaluation import evaluate_tasks

    other = evaluate_tasks(fresh, cfg.task_specs(), val, batch_size=2, dist_info=DistInfo())["depth/abs_err"]
    assert other != pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="checkpoint"):
        finetune.load_run(out, "final")
    res = json.loads((out / "results.json").read_text())
    assert res["checkpoint_sha256"] is None  # --checkpoint none
    res["checkpoint_sha256"] = "0" * 64      # as if trained on another foundation model than its config gives now
    (out / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="trained on the SAM checkpoint with sha256 0000"):
        finetune.load_run(out, "last")
    with pytest.raises(FileNotFoundError, match="run_config"):
        finetune.load_run(tmp_path / "nothing")
    assert depth_error.main([str(tmp_path / "nothing")]) == 2


def test_checkpoint_sha256_names_a_file_or_a_folder_by_its_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    first = finetune.checkpoint_sha256(str(folder))
    assert finetune.checkpoint_sha256(None) is None
    assert finetune.checkpoint_sha256(str(tmp_path / "a.bin")) == __import__("hashlib").sha256(b"weights").hexdigest()
    assert first == finetune.checkpoint_sha256(str(folder)) and len(first) == 64
    (folder / "config.json").write_text('{"changed": 1}')
    assert finetune.checkpoint_sha256(str(folder)) != first  # any file of the folder counts
