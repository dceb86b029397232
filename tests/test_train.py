"""The training engine on a toy multi-task model: steps, accumulation, resume, checkpoints, NaN handling."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tensoradapt import DECOMPS, adapt, mark_trainable
from tensoradapt.train import (
    CheckpointError, NonFiniteLossError, TrainConfig, Trainer, load_checkpoint, load_trainable_state_dict, lr_factor,
    read_jsonl, save_checkpoint, trainable_state_dict,
)
from toy import ToyDataset, ToyMultiTaskNet, ToyRegTask, toy_tasks

TASKS = {"seg": 3, "reg": 1}
RANKS = {"cp": 3, "tucker": (2, 3, 3), "tt": (2, 3), "lora": 2, "shared-lora": 2}


def make_model(decomp: str | None = "tucker", seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ToyMultiTaskNet(TASKS)
    if decomp is not None:
        adapt(model, ["fc1", "fc2"], decomp=decomp, num_tasks=len(TASKS), ranks=RANKS[decomp], dropout=dropout,
              init="orthonormal")
        mark_trainable(model, [model.heads, model.norm])
    return model


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=1e-2, progress=False, warmup_steps=1, schedule="cosine")
    base.update(kw)
    return TrainConfig(**base)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")), ("optimizer", "lbfgs"),
    ("schedule", "step"), ("amp", "fp8"), ("grad_accum", 0), ("warmup_ratio", 1.5),
    ("orth_weight", -1.0), ("max_grad_norm", 0.0), ("best_metric", "acc"), ("min_lr_ratio", 2.0),
    ("orth_terms", "some"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_json_round_trip(tmp_path):
    c = cfg(task_weights={"seg": 2.0}, betas=(0.8, 0.9), max_grad_norm=1.0)
    c.save_json(tmp_path / "c.json")
    assert TrainConfig.load_json(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochs": 1, "lrr": 1})


def test_schedule_warmup_then_decay():
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:])) and f[-1] > 0.1
    assert lr_factor(10, 10, 2, "linear") == pytest.approx(0.0)
    assert lr_factor(5, 10, 0, "constant") == 1.0


# -------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_damage_is_detected(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"w": torch.arange(1000.0), "meta": {"epoch": 3}})
    assert load_checkpoint(p)["meta"] == {"epoch": 3}
    assert not [f for f in tmp_path.iterdir() if f.name != "c.pt"], "temp file left behind"
    raw = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt.*truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    flipped = bytearray(raw)
    flipped[-100] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"flip\.pt.*sha256"):
        load_checkpoint(tmp_path / "flip.pt")
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"v": 1})
    with pytest.raises(Exception):
        save_checkpoint(p, {"v": lambda: 0})  # not picklable
    assert load_checkpoint(p)["v"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("decomp", DECOMPS)
def test_two_steps_train_only_the_trainable_parameters(decomp, tmp_path):
    model = make_model(decomp)
    before = params(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    t = Trainer(model, toy_tasks(), ToyDataset(8), ToyDataset(4, seed=1), cfg(epochs=1, orth_weight=0.1),
                out_dir=tmp_path)
    out = t.fit()
    assert out["steps"] == 2 and out["skipped_steps"] == 0
    after = params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not (changed & frozen)
    assert any(".delta." in k for k in changed)
    assert math.isfinite(out["metrics"]["loss"]) and set(out["metrics"]) >= {"seg/acc", "reg/abs_err"}
    recs = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in recs if r["event"] == "train"] == [1, 2]
    assert "loss/orthogonality" in recs[1]
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    assert json.loads((tmp_path / "train_config.json").read_text())["orth_weight"] == 0.1


@pytest.mark.parametrize("terms", ["paper", "all"])
def test_orth_terms_choose_the_penalty_the_trainer_adds(terms, tmp_path):
    from tensoradapt.regularizers import orthogonality_penalty

    model = make_model("tucker")
    t = Trainer(model, toy_tasks(), ToyDataset(4), ToyDataset(4, seed=1), cfg(epochs=1, orth_weight=0.1,
                orth_terms=terms), out_dir=tmp_path)
    want = float(orthogonality_penalty(model, terms=terms).detach())
    assert float(orthogonality_penalty(model, "all").detach()) != float(orthogonality_penalty(model, "paper").detach())
    assert float(t.penalty_fn(t.model).detach()) == pytest.approx(want)


def test_training_lowers_the_loss(tmp_path):
    model = make_model(None)
    t = Trainer(model, toy_tasks(), ToyDataset(32), ToyDataset(16, seed=1), cfg(epochs=1, lr=3e-2))
    first = t.evaluate()["loss"]
    t.config = t.config  # same config; train 8 epochs' worth through a fresh trainer on the same model
    t2 = Trainer(model, toy_tasks(), ToyDataset(32), ToyDataset(16, seed=1), cfg(epochs=8, lr=3e-2))
    assert t2.fit()["metrics"]["loss"] < 0.8 * first


def test_gradient_accumulation_matches_the_big_batch():
    m1, m2 = make_model("tucker"), make_model("tucker")
    data = ToyDataset(16)
    Trainer(m1, toy_tasks(), data, config=cfg(epochs=1, batch_size=8, warmup_steps=0)).fit()
    Trainer(m2, toy_tasks(), data, config=cfg(epochs=1, batch_size=4, grad_accum=2, warmup_steps=0)).fit()
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_task_weights_change_the_update():
    m1, m2 = make_model("cp"), make_model("cp")
    data = ToyDataset(8)
    Trainer(m1, toy_tasks(), data, config=cfg(epochs=1)).fit()
    Trainer(m2, toy_tasks(), data, config=cfg(epochs=1, task_weights={"reg": 0.0})).fit()
    assert not torch.equal(m1.heads["reg"].weight, m2.heads["reg"].weight)
    assert torch.equal(m2.heads["reg"].weight, make_model("cp").heads["reg"].weight)  # weight 0: no grad
    with pytest.raises(ValueError, match=r"task_weights names unknown task\(s\) \['depth'\]"):
        Trainer(make_model("cp"), toy_tasks(), data, config=cfg(task_weights={"depth": 1.0}))


def test_lr_scale_gives_named_parameter_groups_their_own_lr():
    model = make_model("tucker")
    rules = {"heads": lambda name, p: name.startswith("heads."), "never": lambda name, p: False}
    t = Trainer(model, toy_tasks(), ToyDataset(8), config=cfg(lr=1e-3, lr_scale={"heads": 10.0}),
                param_groups_by=rules)
    lr_of = {id(p): g["initial_lr"] for g in t.optimizer.param_groups for p in g["params"]}
    for name, p in t.trainable:
        assert lr_of[id(p)] == pytest.approx(1e-2 if name.startswith("heads.") else 1e-3), name
    assert any(name.startswith("heads.") for name, _ in t.trainable)
    with pytest.raises(ValueError, match=r"lr_scale names unknown parameter group\(s\) \['decoder'\]"):
        Trainer(make_model("tucker"), toy_tasks(), ToyDataset(8), config=cfg(lr_scale={"decoder": 2.0}),
                param_groups_by=rules)


def test_msam_parameter_groups_cover_its_trainable_parameters():
    from tensoradapt.sam import MSAM_PARAM_GROUPS, build_msam, msam_param_groups

    model = build_msam("tiny", {"a": 2, "b": 1}, decomp="tucker")
    rules = msam_param_groups(model)
    assert tuple(rules) == MSAM_PARAM_GROUPS
    first = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            first[name] = next(g for g, pred in rules.items() if pred(name, p))
    assert {g for g in first.values()} == set(MSAM_PARAM_GROUPS)  # LayerNorms train: "encoder" is not empty
    assert all(first[n] == "delta" for n in first if ".delta." in n)
    assert all(first[n] == "embed" for n in first if n.startswith("no_mask_embeds."))


def test_best_checkpoint_follows_the_chosen_metric(tmp_path):
    t = Trainer(make_model("lora"), toy_tasks(), ToyDataset(16), ToyDataset(8, seed=1),
                cfg(epochs=3, eval_every=2, best_metric="reg/abs_err"), out_dir=tmp_path)
    out = t.fit()
    evals = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["event"] == "eval"]
    assert [r["epoch"] for r in evals] == [2, 3]  # every 2 epochs + always the last
    best = min(evals, key=lambda r: r["reg/abs_err"])
    assert out["best"]["epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "best.pt")["metrics"]["reg/abs_err"] == best["reg/abs_err"]
    with pytest.raises(ValueError, match="best_metric"):
        Trainer(make_model("lora"), toy_tasks(), ToyDataset(16), config=cfg(best_metric="seg/miou"))


# --------------------------------------------------------------------------------------------- resume
class Kill(Exception):
    pass


def kill_at(step: int):
    def cb(trainer):
        if trainer.step == step:
            raise Kill
    return cb


@pytest.mark.parametrize("kill_step,ckpt_every,workers,sample_seeds", [
    (5, 2, 0, True), (6, 0, 0, True), (5, 2, 0, False), (5, 2, 1, True)])
def test_resume_after_a_kill_is_bit_identical(tmp_path, kill_step, ckpt_every, workers, sample_seeds):
    """Dropout, random augmentation and accumulation all consume RNG: resumption must restore it."""
    c = cfg(epochs=3, grad_accum=2, max_grad_norm=0.5, ckpt_every_steps=ckpt_every, orth_weight=0.01,
            num_workers=workers, sample_seeds=sample_seeds)
    ref_model = make_model("tucker", dropout=0.2)
    ref = Trainer(ref_model, toy_tasks(), ToyDataset(24, augment=True), ToyDataset(8, seed=1), c,
                  out_dir=tmp_path / "ref").fit()

    killed = Trainer(make_model("tucker", dropout=0.2), toy_tasks(), ToyDataset(24, augment=True),
                     ToyDataset(8, seed=1), c, out_dir=tmp_path / "run", callbacks=[kill_at(kill_step)])
    with pytest.raises(Kill):
        killed.fit()
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert 0 < ck["step"] < kill_step  # the kill lost unsaved steps
    # A fresh process: a new model (same frozen base, other trainable values), another global RNG state.
    resumed_model = make_model("tucker", dropout=0.2)
    with torch.no_grad():
        for p in resumed_model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    torch.manual_seed(1234)
    res = Trainer(resumed_model, toy_tasks(), ToyDataset(24, augment=True), ToyDataset(8, seed=1), c,
                  out_dir=tmp_path / "run").fit(resume=True)

    for (k, a), b in zip(ref_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert res["metrics"] == ref["metrics"] and res["steps"] == ref["steps"]
    a = load_checkpoint(tmp_path / "ref" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "last.pt")
    for k in a["optimizer"]["state"]:
        for name, v in a["optimizer"]["state"][k].items():
            assert torch.equal(v, b["optimizer"]["state"][k][name])
    # The log has no duplicated steps after the rewind.
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["event"] == "train"]
    assert steps == list(range(1, ref["steps"] + 1))
    # A finished run resumes to a no-op with the same summary.
    again = Trainer(make_model("tucker", dropout=0.2), toy_tasks(), ToyDataset(24, augment=True),
                    ToyDataset(8, seed=1), c, out_dir=tmp_path / "run").fit(resume=True)
    assert again["metrics"] == ref["metrics"]


def test_resume_guards(tmp_path):
    c = cfg(epochs=1)
    Trainer(make_model("cp"), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit()
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(make_model("cp"), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit()
    with pytest.raises(ValueError, match=r"config changed \(lr"):
        Trainer(make_model("cp"), toy_tasks(), ToyDataset(8), config=c.replace(lr=1.0),
                out_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match="does not match the model.*another decomposition"):
        Trainer(make_model("lora"), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match="frozen"):
        Trainer(make_model("cp", seed=5), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit(resume=True)
    raw = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(raw[:-10])
    model = make_model("cp")
    before = params(model)
    with pytest.raises(CheckpointError, match="last.pt"):
        Trainer(model, toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit(resume=True)
    assert all(torch.equal(before[k], v) for k, v in params(model).items()), "half-loaded"


def test_checkpoint_with_the_old_list_fingerprint_is_refused_clearly(tmp_path):
    """Checkpoints written before the per-tensor fingerprint stored a flat list of sums: a clear error."""
    c = cfg(epochs=1)
    Trainer(make_model("cp"), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert isinstance(ckpt["frozen_fingerprint"], dict) and ckpt["frozen_fingerprint"]
    ckpt["frozen_fingerprint"] = [x for pair in ckpt["frozen_fingerprint"].values() for x in pair]
    save_checkpoint(tmp_path / "last.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"last\.pt.*fingerprint in an older format \(list\)"):
        Trainer(make_model("cp"), toy_tasks(), ToyDataset(8), config=c, out_dir=tmp_path).fit(resume=True)


# ----------------------------------------------------------------------------------------- non-finite
class NaNAt(ToyRegTask):
    """The reg loss turns NaN on its `at`-th call (1-based)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def loss(self, logits, target):
        self.calls += 1
        out = super().loss(logits, target)
        return out * float("nan") if self.calls == self.at else out


def test_nonfinite_loss_stops_naming_step_and_task():
    tasks = {"seg": toy_tasks()["seg"], "reg": NaNAt(3)}
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*reg = nan.*--skip-nonfinite"):
        Trainer(make_model("tt"), tasks, ToyDataset(16), config=cfg(epochs=1)).fit()


def test_skip_nonfinite_skips_the_step(tmp_path):
    model = make_model("tt")
    tasks = {"seg": toy_tasks()["seg"], "reg": NaNAt(3)}
    out = Trainer(model, tasks, ToyDataset(16), config=cfg(epochs=1, skip_nonfinite=True), out_dir=tmp_path).fit()
    assert out["steps"] == 4 and out["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    skips = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["event"] == "skip"]
    assert len(skips) == 1 and skips[0]["step"] == 3 and "reg" in skips[0]["message"]


def test_trainable_state_holds_only_trained_params_and_buffers():
    model = make_model("tucker")
    state = trainable_state_dict(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in state.items())  # a snapshot, not views of the model
    other = make_model("tucker", seed=3)
    load_trainable_state_dict(other, state)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(CheckpointError, match="missing keys"):
        load_trainable_state_dict(make_model("lora"), state)


def test_sample_seeded_augmentation_depends_on_sample_and_epoch_only():
    from tensoradapt.train import SampleSeededDataset

    ds = SampleSeededDataset(ToyDataset(16, augment=True), seed=3)
    torch.manual_seed(0)
    a = [ds[i]["image"] for i in range(16)]
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = [ds[i]["image"] for i in reversed(range(16))][::-1]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ds.epoch = 1
    c = [ds[i]["image"] for i in range(16)]
    assert any(not torch.equal(x, y) for x, y in zip(a, c))  # another epoch, other flips
