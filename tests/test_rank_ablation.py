"""The rank sweep (tensoradapt.train.ablation) and its CLI (experiments/rank_ablation.py): the grid, the
table with delta-m, the plots, skipping and resuming cells.

The cells here train a toy per-pixel model (the recipe's `model_builder`) on a few tiny synthetic scenes,
so the sweep machinery is tested in seconds; test_sam_mtl_cli.py and test_notebook.py run the real mSAM.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import shutil
from pathlib import Path

import pytest
from scripts import load_script

from tensoradapt.train import ablation as ra
from tensoradapt.train import finetune

cli = load_script("experiments/rank_ablation.py")


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory) -> Path:
    from tensoradapt.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("mini"), n_train=8, n_val=4, height=24, width=32, workers=1)


def toy_build_model(cfg, checkpoint):
    import torch
    from toy import ToyMultiTaskNet

    from tensoradapt import adapt, mark_trainable

    torch.manual_seed(cfg.train.seed)
    tasks = cfg.task_specs()
    model = ToyMultiTaskNet({n: s.channels for n, s in tasks.items()})
    if cfg.msam.decomp in ("full", "frozen"):
        model.requires_grad_(cfg.msam.decomp == "full")
        model.heads.requires_grad_(True)
    else:
        adapt(model, ["fc2"], decomp=cfg.msam.decomp, num_tasks=len(tasks), ranks=cfg.msam_config().ranks)
        mark_trainable(model, [model.heads, model.norm])
    return model


toy_cell = functools.partial(finetune.run, model_builder=toy_build_model)


def small_grid(data_root: Path, seeds=(0, 1)) -> ra.Grid:
    return ra.Grid(decomps=("tucker", "lora"), levels={"tucker": (2,), "lora": (2, 4)}, task_rank=2,
                   references=("frozen",), seeds=seeds, baseline_level=2,
                   run=dict(epochs=1, data="nyuv2", data_root=str(data_root), image_size=(24, 32), train_size=8,
                            val_size=4, batch_size=4, progress=False, num_figures=1, checkpoint="none",
                            tasks=("semantic", "depth")))


def test_grids_are_well_formed():
    default, full, quick = ra.default_grid(), ra.default_grid(all_ranks=True), ra.quick_grid()
    assert len(full.cells()) == 3 * (2 * 4 + 3 + 2)  # seeds x (4 decomps x 2 ranks + LoRA-STL x 3 + frozen, full)
    assert len(default.cells()) == 3 * (5 + 2)  # seeds x (5 adapters at their default rank + frozen, full)
    assert {c.name for c in default.cells()} <= {c.name for c in full.cells()}  # one folder serves both
    assert {(c.decomp, c.ranks) for c in default.cells() if c.seed == 0} == {
        ("lora", "8"), ("shared-lora", "8"), ("tucker", "4,8,8"), ("cp", "8"), ("tt", "8,8"),
        ("frozen", None), ("full", None)}
    assert default.run["epochs"] == 15 and default.run["eval_every"] == 3
    assert len(set(c.name for c in full.cells())) == len(full.cells())
    assert full.cells()[0].decomp == ra.BASELINE_DECOMP  # the baseline runs first
    for grid in (default, full, quick):
        for cell in grid.cells():  # every cell is a valid sam_mtl config
            cfg = grid.experiment_config(cell, Path("/tmp/x"))
            assert cfg.msam.decomp == cell.decomp and cfg.train.seed == cell.seed
            assert cfg.out_dir == Path("/tmp/x") / "cells" / cell.name
    assert len(quick.cells()) <= 4
    targeted = ra.default_grid(targets="mlp,qkv")  # the adapters' deltas in more linears; the references as ever
    for cell in targeted.cells():
        cfg = targeted.experiment_config(cell, Path("/tmp/x"))
        assert cfg.msam.targets == (("qkv",) if cell.decomp in ra.REFERENCES else ("qkv", "mlp")), cell.name
    with pytest.raises(ValueError, match="lora"):
        ra.Grid(decomps=("tucker",))
    with pytest.raises(ValueError, match="baseline_level"):
        ra.Grid(baseline_level=3)


def test_sweep_writes_table_and_plots_then_skips_and_resumes(tmp_path, mini_data):
    out = tmp_path / "sweep"
    grid = small_grid(mini_data)
    rows = ra.run_grid(grid, out, log=lambda *_: None, train_cell=toy_cell)
    assert len(rows) == len(grid.cells()) == 8
    for name in (ra.TABLE_CSV, ra.TABLE_JSON, ra.SUMMARY_CSV, ra.SUMMARY_MD, ra.DM_PLOT, ra.RANK_PLOT):
        assert (out / name).stat().st_size > 0, name
    assert (out / ra.DM_PLOT).read_bytes()[:4] == b"\x89PNG"
    with open(out / ra.TABLE_CSV) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert {"decomp", "ranks", "seed", "trainable_params", "semantic/mIoU", "depth/abs_err",
            "delta_m"} <= set(table[0])
    for r in ra.load_table(out):
        if r["decomp"] == "lora" and r["level"] == 2:
            assert r["delta_m"] == 0.0  # the LoRA-STL baseline of its own seed
        else:
            assert math.isfinite(r["delta_m"])
    by = {(r["decomp"], r["ranks"]): r for r in ra.load_table(out) if r["seed"] == 0}
    assert by[("lora", "4")]["trainable_params"] > by[("lora", "2")]["trainable_params"]
    for r in ra.load_table(out):  # paired against the frozen encoder of the same seed
        if r["decomp"] == "frozen":
            assert r["delta_m_vs_frozen"] == 0.0
        assert math.isfinite(r["delta_m_vs_frozen"])
    summary = list(csv.DictReader(open(out / ra.SUMMARY_CSV)))
    assert len(summary) == 4 and all(s["seeds"] == "2" for s in summary)
    tucker = [r["delta_m"] for r in ra.load_table(out) if r["decomp"] == "tucker"]
    row = next(s for s in summary if s["decomp"] == "tucker")
    assert float(row["delta_m_ci95"]) == pytest.approx(ra.t_interval(tucker))
    md = (out / ra.SUMMARY_MD).read_text().splitlines()
    assert len(md) == 2 + 4 and md[0].startswith("| decomp | ranks | seeds | trainable | semantic/mIoU")
    tucker_line = next(l for l in md if l.startswith("| tucker |"))
    assert f"{float(row['delta_m']):.2f} ± {float(row['delta_m_ci95']):.2f}" in tucker_line

    # Re-running skips every finished cell ...
    calls = []
    record = lambda cfg, resume=False: calls.append((cfg.out, resume))  # noqa: E731
    ra.run_grid(grid, out, log=lambda *_: None, train_cell=record)
    assert calls == []
    # ... and resumes an interrupted one from its last.pt.
    cell = out / "cells" / "tucker_r2-2-2_s1"
    (cell / finetune.RESULTS).unlink()
    ra.run_grid(grid, out, log=lambda *_: None, train_cell=record)
    assert calls == [(str(cell), True)]


def test_delta_m_plot_labels_its_reference_lines_inside_the_axes():
    """The frozen / full lines carry their names at the left edge, on a log x axis too (the labels were
    once placed at a data x computed before the log scale and fell outside the figure)."""
    from tensoradapt.train.plots import plot_delta_m_vs_params

    rows = [dict(decomp=d, ranks=r, level=lv, seed=s, trainable_params=p, delta_m=dm + 0.1 * s)
            for s in (0, 1) for d, r, lv, p, dm in [("lora", "8", 8, 500_000, 0.0), ("tucker", "4,8,8", 8, 480_000, 1.0),
                                                      ("frozen", "", None, 470_000, -2.0), ("full", "", None, 1_300_000, 6.0)]]
    fig = plot_delta_m_vs_params(rows)
    ax = fig.axes[0]
    fig.canvas.draw()
    box = ax.get_window_extent()
    for name, y in (("frozen", -1.95), ("full", 6.05)):
        label = next(t for t in ax.texts if t.get_text() == name)
        x_px, y_px = label.get_window_extent().x0, label.get_window_extent().y0
        assert box.x0 <= x_px <= box.x0 + 0.2 * box.width, name
        line_px = ax.transData.transform((1, y))[1]
        assert abs(y_px - line_px) < 10, name  # on its line, not somewhere else
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_cli_dry_run_and_errors(tmp_path, capsys):
    assert cli.main(["--quick", "--dry-run", "--out", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(ra.quick_grid().cells()) and all(l.endswith("todo") for l in listed)
    assert cli.main(["--quick", "--decomps", "tucker,svd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "svd" in err
    assert cli.main(["--quick", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert cli.main(["--quick", "--all-ranks", "--out", str(tmp_path)]) == 2
    assert "--all-ranks" in capsys.readouterr().err
    grid = cli.grid_from_args(cli.build_parser().parse_args(["--targets", "qkv,mlp", "--decomps", "tucker"]))
    assert grid.run["targets"] == "qkv,mlp" and grid.decomps == ("tucker", "lora")
    assert cli.main(["--targets", "qkv,ffn", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--targets" in capsys.readouterr().err


def test_per_seed_sweeps_share_one_table_and_stale_cells_are_refused(tmp_path, mini_data):
    out = tmp_path / "sweep"
    for seed in (0, 1):  # e.g. two processes, one seed each
        ra.run_grid(small_grid(mini_data, seeds=(seed,)), out, log=lambda *_: None, train_cell=toy_cell)
    assert sorted({r["seed"] for r in ra.load_table(out)}) == [0, 1]
    changed = small_grid(mini_data, seeds=(0,))
    changed.run["epochs"] = 2
    with pytest.raises(finetune.UsageError, match=r"other settings \(epochs 1 -> 2\)"):
        ra.run_grid(changed, out, log=lambda *_: None, train_cell=toy_cell)
    # the same settings on another foundation model (the shipped default changed): stale too
    cell = next(iter(small_grid(mini_data, seeds=(0,)).cells()))
    res_path = out / "cells" / cell.name / "results.json"
    res = json.loads(res_path.read_text())
    assert "checkpoint_sha256" in res and res["checkpoint_sha256"] is None  # --checkpoint none: random weights
    res["checkpoint_sha256"] = "0123456789abcdef"
    res_path.write_text(json.dumps(res))
    with pytest.raises(finetune.UsageError, match="SAM checkpoint sha256 0123456789ab -> None"):
        ra.run_grid(small_grid(mini_data, seeds=(0,)), out, log=lambda *_: None, train_cell=toy_cell)
    del res["checkpoint_sha256"]  # recorded before the field existed: not judged on it
    res_path.write_text(json.dumps(res))
    ra.run_grid(small_grid(mini_data, seeds=(0,)), out, log=lambda *_: None, train_cell=toy_cell)


def test_the_table_refuses_a_cell_of_a_task_since_renamed(tmp_path, mini_data, capsys):
    """Session 10's T = 8 cells named `curvature`, redefined as `nonplanar`: such a cell's numbers must not
    enter a table (the --table-only and --compare paths read cells without running the grid), also when it
    belongs to a seed the grid does not list (the table takes every seed on disk)."""
    out = tmp_path / "sweep"
    for seed in (0, 1):
        ra.run_grid(small_grid(mini_data, seeds=(seed,)), out, log=lambda *_: None, train_cell=toy_cell)
    grid = small_grid(mini_data, seeds=(0,))
    assert {r["seed"] for r in ra.collect_rows(grid, out)} == {0, 1}
    cell = next(c for c in small_grid(mini_data, seeds=(1,)).cells())
    res_path = out / "cells" / cell.name / "results.json"
    res = json.loads(res_path.read_text())
    res["config"]["tasks"] = ["semantic", "curvature"]
    res_path.write_text(json.dumps(res))
    for read in (ra.collect_rows, ra.write_outputs):
        with pytest.raises(finetune.UsageError, match=rf"{cell.name} .*tasks \['semantic', 'curvature'\] -> "):
            read(grid, out)
    # the command line: one line on stderr and status 2, not a traceback
    quick = tmp_path / "quick"
    name = ra.quick_grid().cells()[0].name
    (quick / "cells" / name).mkdir(parents=True)
    (quick / "cells" / name / "results.json").write_text(json.dumps({"config": {"tasks": ["curvature"]}}))
    for args in (["--table-only"], ["--compare", "tucker", "lora"]):
        assert cli.main(["--quick", "--out", str(quick), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and "curvature" in err


def test_table_reads_committed_cells_without_copying_them_and_flags_pairs_across_cpus(tmp_path, mini_data, capsys):
    """--table-only / --compare with --reuse DIR: DIR's cells fill in what --out lacks (read, never copied, so a
    later run in --out still trains them here), --out's own cell wins, and a seed whose two cells ran on two
    CPU models is starred in the comparison."""
    from tensoradapt.train import pairs

    committed, out = tmp_path / "committed", tmp_path / "out"
    grid = small_grid(mini_data)
    ra.run_grid(grid, committed, log=lambda *_: None, train_cell=toy_cell)
    before = sorted(f.relative_to(committed) for f in committed.rglob("*"))
    assert ra.collect_rows(grid, out) == []
    rows = ra.collect_rows(grid, out, also=[committed])
    assert len(rows) == len(grid.cells()) and {r["seed"] for r in rows} == {0, 1}
    # out's own record of a cell wins over the committed one
    tucker0 = next(c for c in grid.cells() if c.decomp == "tucker" and c.seed == 0)
    res = json.loads((committed / "cells" / tucker0.name / finetune.RESULTS).read_text())
    assert res["cpu"]
    res["metrics"]["semantic"]["mIoU"] *= 0.5
    res["cpu"] = "Another CPU"
    (out / "cells" / tucker0.name).mkdir(parents=True)
    (out / "cells" / tucker0.name / finetune.RESULTS).write_text(json.dumps(res))
    rows = ra.collect_rows(grid, out, also=[committed])
    mine = next(r for r in rows if r["cell"] == tucker0.name)
    assert mine["semantic/mIoU"] == res["metrics"]["semantic"]["mIoU"] and mine["cpu"] == "Another CPU"
    p = pairs.paired_delta_m(rows, ("tucker", "2,2,2"), ("lora", "2"))
    assert p["seeds"] == [0, 1] and p["two_cpus"] == [0]
    table = pairs.comparison_markdown(rows, [(("tucker", "2,2,2"), ("lora", "2"))])
    assert table.splitlines()[2].split(" | ")[3].split(" / ")[0].endswith("*")  # seed 0 starred, seed 1 not
    assert not table.splitlines()[2].split(" | ")[3].split(" / ")[1].endswith("*")
    assert "seed(s) 0 paired cells of two CPU models" in table
    # the command line reads the committed cells and writes the table into --out only
    assert cli.main(["--out", str(out), "--table-only", "--reuse", str(committed)], make_grid=lambda a: grid) == 0
    assert len(ra.load_table(out)) == len(grid.cells())
    assert sorted(f.relative_to(committed) for f in committed.rglob("*")) == before
    assert not (out / "cells" / next(c.name for c in grid.cells() if c.decomp == "lora")).exists()
    capsys.readouterr()
    assert cli.main(["--out", str(out), "--compare", "tucker", "lora:2", "--reuse", str(committed)],
                    make_grid=lambda a: grid) == 0
    assert "two CPU models" in capsys.readouterr().out
    assert cli.main(["--out", str(out), "--table-only", "--reuse", str(tmp_path / "nowhere")],
                    make_grid=lambda a: grid) == 2
    assert "--reuse" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no cells/ folder"):  # the library call too: no silently empty table
        ra.collect_rows(grid, out, also=[tmp_path / "nowhere"])
    # a committed cell that ran other settings is refused, naming the folder it is in
    stale = committed / "cells" / next(c.name for c in grid.cells() if c.decomp == "lora") / finetune.RESULTS
    rec = json.loads(stale.read_text())
    rec["config"]["train"]["epochs"] = 7
    stale.write_text(json.dumps(rec))
    with pytest.raises(finetune.UsageError, match=f"in {committed} was run with other settings"):
        ra.collect_rows(grid, out, also=[committed])


def test_t_interval_matches_the_textbook_value():
    assert ra.t_interval([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)  # t(0.975, 2 dof) sd/sqrt(n)
    assert ra.t_interval([5.0, 5.0]) == 0.0
    assert math.isnan(ra.t_interval([1.0]))


def test_task_scaling_sweep_pairs_within_a_task_set_and_against_its_own_method_without_trunk(tmp_path, mini_data):
    from tensoradapt.mtl import delta_m, get_tasks, task_table

    run = dict(epochs=1, data="nyuv2", data_root=str(mini_data), image_size=(24, 32), train_size=8, val_size=4,
               batch_size=4, progress=False, num_figures=1, checkpoint="none")
    grid = ra.task_scaling_grid(seeds=(0, 1), task_counts=(1, 4), shared_blocks=(0, 1), quick=True, **run)
    assert grid.scaling and grid.task_sets == {"T1": ("semantic",), "T4": tuple(list(task_table())[:4])}
    names = [c.name for c in grid.cells()]
    assert len(names) == len(set(names)) == 2 * 2 * (2 * 2 + 1)  # seeds x T x (k x methods + frozen)
    assert "tucker_r4-4-4_T4_k1_s1" in names and "frozen_rnone_T1_s0" in names
    cfg = grid.experiment_config(next(c for c in grid.cells() if c.name == "tucker_r4-4-4_T4_k1_s1"), tmp_path)
    assert cfg.tasks == grid.task_sets["T4"] and cfg.msam.shared_blocks == 1 and cfg.train.seed == 1

    out = tmp_path / "scaling"
    rows = ra.run_grid(grid, out, log=lambda *_: None, train_cell=toy_cell)
    assert len(rows) == len(names)
    results = {c.name: __import__("json").loads((out / "cells" / c.name / finetune.RESULTS).read_text())
               for c in grid.cells()}
    for r in rows:
        assert r["T"] == len(grid.task_sets[r["task_set"]])
        if r["decomp"] == "lora":
            assert r["delta_m"] == 0.0  # LoRA-STL of the same seed, task set and trunk
        if r["decomp"] == "frozen":
            assert r["delta_m_vs_frozen"] == 0.0
        k0 = r["cell"].replace(f"_k{r['shared_blocks']}_", "_")
        if r["decomp"] == "frozen":
            assert r["delta_m_vs_k0"] == 0.0  # its own k = 0 cell: the references have no trunk
        elif r["shared_blocks"] == 0:
            assert r["delta_m_vs_k0"] == 0.0
        else:  # against the same method, seed and task set without the trunk, computed directly
            tasks = get_tasks(grid.task_sets[r["task_set"]])
            want = delta_m(results[r["cell"]]["metrics"], results[k0]["metrics"], tasks)
            assert r["delta_m_vs_k0"] == pytest.approx(float(want))
    md = (out / ra.SUMMARY_MD).read_text().splitlines()
    assert md[0].startswith("| decomp | ranks | T | k | seeds |") and md[0].endswith("Δm vs k = 0 (95 % CI) |")
    assert len(md) == 2 + 2 * (2 * 2 + 1)
    assert (out / ra.TASKS_PLOT).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="task_counts"):
        ra.task_scaling_grid(task_counts=(0, 3))
    with pytest.raises(ValueError, match="shared_blocks must be distinct ints >= 0 including 0"):
        ra.task_scaling_grid(shared_blocks=(2,))
    with pytest.raises(ValueError, match="shared_blocks must be distinct"):
        ra.task_scaling_grid(shared_blocks=(0, 0))
    with pytest.raises(ValueError, match="letter-and-digit labels"):
        ra.Grid(task_sets={"T3_k2": ("semantic",)})
    with pytest.raises(ValueError, match=r"run must not set \['shared_blocks'\]"):
        ra.Grid(shared_blocks=(0, 1), run={**run, "shared_blocks": 1})


def test_task_scaling_cli_lists_its_cells(tmp_path, capsys):
    ts = load_script("experiments/task_scaling.py")
    assert ts.main(["--quick", "--task-counts", "1,3", "--seeds", "0", "--dry-run", "--out", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.split()
    assert "tucker_r4-4-4_T3_k2_s0" in listed and "frozen_rnone_T1_s0" in listed
    assert ts.main(["--quick", "--task-counts", "9", "--out", str(tmp_path)]) == 2
    assert "task_counts" in capsys.readouterr().err
    assert ts.main(["--all-ranks", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--all-ranks" in capsys.readouterr().err


def test_shards_divide_the_cores_unless_threads_are_given(monkeypatch):
    """N shards on a machine of C threads run their cells on C // N threads each (at least 1): N processes of
    C threads each oversubscribe the CPU (2.7x slower measured on 2 cores); --threads wins."""
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: 4)
    opts = lambda *argv: cli.grid_options(cli.build_parser().parse_args(list(argv)))[0]  # noqa: E731
    assert "threads" not in opts()
    assert opts("--shard", "0/2")["threads"] == 2
    assert opts("--shard", "1/8")["threads"] == 1
    assert opts("--shard", "0/2", "--threads", "3")["threads"] == 3


def _row(decomp, ranks, seed, miou, depth, **extra):
    return {"decomp": decomp, "ranks": ranks, "seed": seed, "semantic/mIoU": miou, "semantic/pixel_acc": 0.5,
            "depth/abs_err": depth, "depth/rel_err": 0.2, **extra}


def test_paired_delta_m_pairs_cells_of_the_same_seed_only():
    from tensoradapt.mtl import delta_m, get_tasks
    from tensoradapt.train import pairs

    rows = [_row("tucker", "4,8,8", s, 40.0 + s, 0.5 - 0.01 * s) for s in (2, 0, 1, 3)]  # seed 3: no partner
    rows += [_row("lora", "8", s, 38.0 + 2 * s, 0.52) for s in (0, 1, 2)]
    rows += [_row("lora", "32", s, 10.0, 0.9) for s in (0, 1, 2)]
    a, b = pairs.parse_config("tucker", rows), pairs.parse_config("lora:8", rows)
    assert a == ("tucker", "4,8,8") and b == ("lora", "8")
    p = pairs.paired_delta_m(rows, a, b)
    tasks = get_tasks(("semantic", "depth"))
    by = {(r["decomp"], r["ranks"], r["seed"]): r for r in rows}
    direct = [float(delta_m({"semantic": {"mIoU": by["tucker", "4,8,8", s]["semantic/mIoU"], "pixel_acc": 0.5},
                             "depth": {"abs_err": by["tucker", "4,8,8", s]["depth/abs_err"], "rel_err": 0.2}},
                            {"semantic": {"mIoU": by["lora", "8", s]["semantic/mIoU"], "pixel_acc": 0.5},
                             "depth": {"abs_err": 0.52, "rel_err": 0.2}}, tasks)) for s in (0, 1, 2)]
    assert p["seeds"] == [0, 1, 2] and p["per_seed"] == pytest.approx(direct)
    assert len(set(p["per_seed"])) == 3  # the seeds' differences differ: a mix-up of seeds would show
    assert p["mean"] == pytest.approx(sum(direct) / 3) and p["ci95"] == pytest.approx(ra.t_interval(direct))
    table = pairs.comparison_markdown(rows, [(a, b)])
    assert f"{p['mean']:+.2f} ± {p['ci95']:.2f}" in table and "tucker (4,8,8) | lora (8)" in table
    head, rule = table.splitlines()[:2]
    assert rule.count("---|") == head.count(" | ") + 1  # a valid Markdown table
    with pytest.raises(ValueError, match=r"lora.*\['32', '8'\].*lora:RANKS"):
        pairs.parse_config("lora", rows)
    with pytest.raises(ValueError, match="no 'cp' cell"):
        pairs.parse_config("cp", rows)
    with pytest.raises(ValueError, match="no cell at ranks '16'"):
        pairs.parse_config("lora:16", rows)
    with pytest.raises(ValueError, match="no seed has both"):
        pairs.paired_delta_m(rows + [_row("cp", "8", 7, 1.0, 1.0)], ("cp", "8"), b)


def test_paired_delta_m_pairs_within_a_task_set_and_trunk():
    from tensoradapt.train import pairs

    base = {("a", 0): 40.0, ("a", 2): 20.0, ("b", 0): 50.0, ("b", 2): 80.0}
    rows = [_row("lora", "8", 0, m, 0.5, task_set=ts, shared_blocks=k) for (ts, k), m in base.items()]
    rows += [_row("tucker", "8", 0, 1.1 * m, 0.5, task_set=ts, shared_blocks=k) for (ts, k), m in base.items()]
    with pytest.raises(ValueError, match="several task sets"):  # one interval over 4 conditions: refused
        pairs.paired_delta_m(rows, ("tucker", "8"), ("lora", "8"))
    table = pairs.comparison_markdown(rows, [(("tucker", "8"), ("lora", "8"))]).splitlines()
    # one line per condition, each +10 % mIoU (half of semantic's two metrics, half of the two tasks): +2.50;
    # any pairing across task sets or trunks would give another value
    assert table[0].startswith("| A | vs B | task set | k | seeds |")
    assert table[1].count("---|") == table[0].count(" | ") + 1
    assert sorted(l.split(" | ")[2:4] for l in table[2:]) == [["a", "0"], ["a", "2"], ["b", "0"], ["b", "2"]]
    assert all("| +2.50 |" in l for l in table[2:])
    assert all(l.endswith("| 1 | +2.50 | +2.50 | – |") for l in table[2:])  # one seed: no interval, no ratio


def test_cli_compare_needs_pairs_of_known_configs(tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path), "--compare", "tucker"]) == 2
    assert "pairs" in capsys.readouterr().err
    assert cli.main(["--out", str(tmp_path), "--compare", "tucker", "lora"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compare" in err and "tucker" in err


def test_reuse_adopts_only_finished_cells_that_ran_the_same_settings(tmp_path, mini_data, capsys):
    """A task-scaling grid's T = 2, k = 0 cells are the default grid's cells under other names: --reuse copies
    them (and only them) instead of training them again."""
    source = tmp_path / "default"
    base = small_grid(mini_data, seeds=(0,))
    ra.run_grid(base, source, log=lambda *_: None, train_cell=toy_cell)
    run = {k: v for k, v in base.run.items() if k != "tasks"}
    scaling = ra.Grid(decomps=("tucker", "lora"), levels={"tucker": (2,), "lora": (2,)}, task_rank=2,
                      references=("frozen",), seeds=(0,), baseline_level=2, shared_blocks=(0, 1),
                      task_sets={"T2": ("semantic", "depth"), "T1": ("semantic",)}, run=run)
    out = tmp_path / "scaling"
    (out / "cells" / "lora_r2_T2_s0").mkdir(parents=True)  # e.g. a cell another process has begun: left alone
    listed = ra.adopt_cells(scaling, out, source, log=lambda *_: None, copy=False)
    assert not (out / "cells" / "tucker_r2-2-2_T2_s0").exists()  # copy=False writes nothing
    adopted = ra.adopt_cells(scaling, out, source, log=lambda *_: None)
    assert adopted == listed
    assert sorted(adopted) == ["frozen_rnone_T2_s0", "tucker_r2-2-2_T2_s0"]  # not k = 1, not T = 1
    for name, origin in (("frozen_rnone_T2_s0", "frozen_rnone_s0"), ("tucker_r2-2-2_T2_s0", "tucker_r2-2-2_s0")):
        cell = out / "cells" / name
        assert (cell / finetune.RESULTS).read_bytes() == (source / "cells" / origin / finetune.RESULTS).read_bytes()
        assert json.loads((cell / "adopted.json").read_text())["from"].endswith(origin)
        assert not (cell / ".claim").exists()
    assert not (out / "cells" / "lora_r2_T2_s0" / finetune.RESULTS).exists()
    assert ra.adopt_cells(scaling, out, source, log=lambda *_: None) == []  # nothing twice
    # the same settings on another machine: its figures must not be paired with this machine's cells
    for edit in ({"cpu": "Another CPU"}, {"denormals_flushed": False}):
        moved = tmp_path / f"moved_{next(iter(edit))}"
        shutil.copytree(source, moved)
        res_path = moved / "cells" / "tucker_r2-2-2_s0" / finetune.RESULTS
        res = json.loads(res_path.read_text())
        assert res["cpu"] and res["denormals_flushed"] is True  # what a run on this machine records
        res_path.write_text(json.dumps({**res, **edit}))
        lines = []
        assert sorted(ra.adopt_cells(scaling, tmp_path / f"out_{next(iter(edit))}", moved, log=lines.append,
                                     copy=False)) == ["frozen_rnone_T2_s0", "lora_r2_T2_s0"]  # TA-LoRA left out
        assert any("another machine" in line and "tucker_r2-2-2_T2_s0" in line for line in lines)
    other = dataclasses.replace(scaling, run={**run, "epochs": 2})  # another setting: nothing matches
    assert ra.adopt_cells(other, tmp_path / "other", source, log=lambda *_: None) == []
    with pytest.raises(ValueError, match="no cells/ folder"):
        ra.adopt_cells(scaling, out, tmp_path / "nowhere")
    assert cli.main(["--out", str(out), "--reuse", str(tmp_path / "nowhere")]) == 2
    assert "--reuse" in capsys.readouterr().err


def test_two_shards_adopting_the_same_cell_at_once_both_go_on(tmp_path, mini_data, monkeypatch):
    """`--shard 0/2` and `--shard 1/2` with `--reuse` start together: both copy a cell, and the second rename
    meets the first one's folder. That shard must keep the first copy and go on, not crash (it did, losing its
    share of the sweep), and leave no half-copied folder behind."""
    from tensoradapt.train import finished

    source, out = tmp_path / "default", tmp_path / "out"
    ra.run_grid(small_grid(mini_data, seeds=(0,)), source, log=lambda *_: None, train_cell=toy_cell)
    real_copytree = shutil.copytree

    def copy_after_the_other_shard(src, dst, **kw):  # the other shard's copy lands while this one copies
        target = out / "cells" / Path(dst).name.split(".")[1]
        if not target.exists():
            real_copytree(src, target, **kw)
            (target / "other-shard").write_text("")
        return real_copytree(src, dst, **kw)

    monkeypatch.setattr(finished.shutil, "copytree", copy_after_the_other_shard)
    lines: list[str] = []
    adopted = ra.adopt_cells(small_grid(mini_data, seeds=(0,)), out, source, log=lines.append)
    assert sorted(adopted) == sorted(c.name for c in small_grid(mini_data, seeds=(0,)).cells())
    for name in adopted:
        assert (out / "cells" / name / "other-shard").exists()  # the first copy stays
        assert (out / "cells" / name / finetune.RESULTS).is_file()
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]
    assert sum("another process copied" in line for line in lines) == len(adopted)


def test_task_scaling_default_cells_at_t3_k0_are_the_comparison_sweeps():
    """The two default grids share a schedule, so `task_scaling.py --reuse runs/rank_ablation` finds its T = 3,
    k = 0 cells there (compared as a results.json would hold them)."""
    scaling, default = ra.task_scaling_grid(), ra.default_grid()
    for cell in scaling.cells():
        if cell.task_set != "T3" or cell.shared_blocks != 0:
            continue
        twin = [c for c in default.cells() if (c.decomp, c.ranks, c.seed) == (cell.decomp, cell.ranks, cell.seed)]
        assert len(twin) == 1, cell
        record = {"config": json.loads(json.dumps(default.experiment_config(twin[0], "x").to_dict()))}
        cfg = scaling.experiment_config(cell, "y")
        assert cfg.train.epochs == 15 and not ra.settings_differences(cfg, record), cell


def test_task_plot_labels_points_resting_on_fewer_seeds():
    """A one-seed point beside three-seed means is labelled n = 1 (it has no interval and is not a mean), and
    two lines' points at one T are drawn apart, each within a fifth of a task of it."""
    from tensoradapt.train.plots import plot_delta_m_vs_tasks

    row = dict(decomp="tucker", ranks="4,8,8", shared_blocks=0, delta_m_vs_frozen_ci95=1.0)
    summary = [dict(row, T=3, delta_m_vs_frozen=8.0, seeds=3), dict(row, T=8, delta_m_vs_frozen=5.0, seeds=1),
               dict(decomp="frozen", ranks=None, shared_blocks=0, T=3, delta_m_vs_frozen=0.0, seeds=3)]
    summary.append(dict(row, shared_blocks=2, T=3, delta_m_vs_frozen=6.0, seeds=3))
    fig = plot_delta_m_vs_tasks(summary)
    labels = [(t.get_text(), round(t.xy[0]), t.xy[1]) for t in fig.axes[0].texts]
    assert labels == [("n = 1", 8, 5.0)]
    xs = {bars.get_label(): bars.lines[0].get_xdata() for bars in fig.axes[0].containers}
    k0_at_3, k2_at_3 = xs["tucker, k = 0"][0], xs["tucker, k = 2"][0]
    assert k0_at_3 != k2_at_3 and abs(k0_at_3 - 3) < 0.2 and abs(k2_at_3 - 3) < 0.2


def test_task_plot_draws_each_rank_of_a_method_as_its_own_line():
    """Tucker at two ranks is two lines named by their ranks (not one line zig-zagging between them); a method
    at one rank keeps its plain name."""
    from tensoradapt.train.plots import plot_delta_m_vs_tasks

    row = dict(decomp="tucker", shared_blocks=0, seeds=3, delta_m_vs_frozen_ci95=1.0)
    summary = [dict(row, ranks="4,8,8", T=3, delta_m_vs_frozen=8.0),
               dict(row, ranks="4,8,8", T=5, delta_m_vs_frozen=4.0),
               dict(row, ranks="4,32,32", T=5, delta_m_vs_frozen=6.0),
               dict(row, decomp="lora", ranks="8", T=5, delta_m_vs_frozen=5.0)]
    fig = plot_delta_m_vs_tasks(summary)
    ys = {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in fig.axes[0].containers}
    assert ys == {"tucker (4,8,8), k = 0": [8.0, 4.0], "tucker (4,32,32), k = 0": [6.0], "lora, k = 0": [5.0]}


def test_task_scaling_levels_add_ranks_to_the_named_adapters_and_keep_the_baseline():
    grid = ra.task_scaling_grid(task_counts=(5,), shared_blocks=(0,), seeds=(1,), decomps=("tucker",), levels=(8, 32))
    assert [c.name for c in grid.cells()] == ["lora_r8_T5_s1", "tucker_r4-8-8_T5_s1", "tucker_r4-32-32_T5_s1",
                                              "frozen_rnone_T5_s1"]
    both = ra.task_scaling_grid(task_counts=(5,), shared_blocks=(0,), seeds=(1,), levels=(32,))
    assert both.levels == {"tucker": (32,), "lora": (8, 32)}  # LoRA-STL 8 stays: every Δm is against it
    with pytest.raises(ValueError, match="levels must be ranks >= 1"):
        ra.task_scaling_grid(levels=(0,))


def test_task_scaling_task_rank_names_tucker_cells_and_reaches_their_config():
    grid = ra.task_scaling_grid(task_counts=(5,), shared_blocks=(0,), seeds=(1,), task_rank=5)
    names = [c.name for c in grid.cells()]
    assert names == ["lora_r8_T5_s1", "tucker_r5-8-8_T5_s1", "frozen_rnone_T5_s1"]
    cell = grid.cells()[1]
    assert grid.experiment_config(cell, "x").msam.ranks == (5, 8, 8)
    assert ra.task_scaling_grid(task_rank=(5,)).task_rank == 5  # one task rank: recorded as before
    with pytest.raises(ValueError, match="task_rank must be distinct ints >= 1"):
        ra.task_scaling_grid(task_rank=0)
    with pytest.raises(ValueError, match="task_rank must be distinct ints >= 1"):
        ra.task_scaling_grid(task_rank=(4, 4))


def test_two_task_ranks_at_one_level_each_pair_with_their_own_cells(tmp_path, mini_data):
    """Tucker at task ranks 2 and 3 shares the nominal level 4: each trunk cell is paired with the k = 0 cell
    of its own ranks (pairing by level would let one overwrite the other), and --compare tells them apart."""
    from tensoradapt.mtl import delta_m, get_tasks
    from tensoradapt.train import pairs

    run = dict(epochs=1, data="nyuv2", data_root=str(mini_data), image_size=(24, 32), train_size=8, val_size=4,
               batch_size=4, progress=False, num_figures=1, checkpoint="none")
    grid = ra.task_scaling_grid(seeds=(0,), task_counts=(2,), shared_blocks=(0, 1), decomps=("tucker",),
                                task_rank=(2, 3), quick=True, **run)
    names = [c.name for c in grid.cells()]
    assert names == ["lora_r4_T2_s0", "tucker_r2-4-4_T2_s0", "tucker_r3-4-4_T2_s0", "lora_r4_T2_k1_s0",
                     "tucker_r2-4-4_T2_k1_s0", "tucker_r3-4-4_T2_k1_s0", "frozen_rnone_T2_s0"]
    out = tmp_path / "tr"
    rows = ra.run_grid(grid, out, log=lambda *_: None, train_cell=toy_cell)
    res = {n: json.loads((out / "cells" / n / finetune.RESULTS).read_text())["metrics"] for n in names}
    assert res["tucker_r2-4-4_T2_s0"] != res["tucker_r3-4-4_T2_s0"]  # so a mix-up would show
    tasks = get_tasks(grid.task_sets["T2"])
    for r in rows:
        if r["decomp"] == "tucker" and r["shared_blocks"] == 1:
            k0 = r["cell"].replace("_k1_", "_")
            assert r["delta_m_vs_k0"] == pytest.approx(float(delta_m(res[r["cell"]], res[k0], tasks)))
    a, b = pairs.parse_config("tucker:3,4,4", rows), pairs.parse_config("tucker:2,4,4", rows)
    assert (a, b) == (("tucker", "3,4,4"), ("tucker", "2,4,4"))
    with pytest.raises(ValueError, match="write tucker:RANKS"):
        pairs.parse_config("tucker", rows)
