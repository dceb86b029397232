"""Claims (tensoradapt.train.claims) and the sweep's use of them: processes sharing a sweep folder never run a
cell twice, a killed process's claim is gone with it, and a shard that finishes its share takes the rest."""
import subprocess
import sys
import time

import pytest

from tensoradapt.train import ablation as ra
from tensoradapt.train.claims import claim, holder

HOLD = """
import sys, time
from tensoradapt.train.claims import claim
with claim(sys.argv[1]) as mine:
    print("held" if mine else "refused", flush=True)
    time.sleep(60)
"""


def test_a_claim_is_exclusive_and_released_even_on_error(tmp_path):
    with claim(tmp_path / "cell") as first:
        assert first
        with claim(tmp_path / "cell") as second:  # another claim, even from this process, is refused
            assert not second
    with pytest.raises(RuntimeError), claim(tmp_path / "cell") as mine:
        assert mine
        raise RuntimeError("cell failed")
    with claim(tmp_path / "cell") as again:
        assert again


def test_another_processs_claim_is_respected_until_it_dies(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "cell")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert holder(tmp_path / "cell").startswith(f"{proc.pid} ")
        with claim(tmp_path / "cell") as mine:
            assert not mine
    finally:
        proc.kill()  # killed, as a run can be: no cleanup code runs
        proc.wait()
    with claim(tmp_path / "cell") as mine:
        assert mine


def test_the_sweep_skips_claimed_cells_and_a_shard_takes_the_others_share(tmp_path):
    grid = ra.Grid(decomps=("lora",), levels={"lora": (2,)}, references=("frozen",), seeds=(0, 1),
                   baseline_level=2, run=dict(epochs=1, progress=False))
    names = [c.name for c in grid.cells()]  # lora_r2_s0, frozen_rnone_s0, lora_r2_s1, frozen_rnone_s1
    out = tmp_path / "sweep"
    ran, logged = [], []
    with claim(out / "cells" / names[1]):  # another process runs this cell
        ra.run_grid(grid, out, log=logged.append, shard=(0, 2),
                    train_cell=lambda cfg, resume=False: ran.append(cfg.out.rsplit("/", 1)[-1]))
    # its own share (positions 0 and 2) first, then the other shard's unclaimed cell; never the claimed one
    assert ran == [names[0], names[2], names[3]]
    assert any(names[1] in line and "another process" in line for line in logged)
    assert names[1] in logged[-1]  # the end says which cells are still unfinished


RACE = """
import json, os, sys, time
from pathlib import Path
from tensoradapt.train import ablation as ra
ra.write_outputs = lambda grid, out: []  # the fake cells below have no metrics to tabulate
grid = ra.Grid(decomps=("lora",), levels={"lora": (2,)}, references=("frozen",), seeds=(0, 1, 2),
               baseline_level=2, run=dict(epochs=1, progress=False))
out = Path(sys.argv[1])
(out / f"ready-{os.getpid()}").touch()
while not (out / "go").exists():  # both processes start the sweep at the same moment
    time.sleep(0.01)

def train(cfg, resume=False):
    with open(out / "ran.txt", "a") as f:
        f.write(f"{Path(cfg.out).name} {os.getpid()}\\n")
    time.sleep(0.3)
    (Path(cfg.out) / "results.json").write_text(json.dumps({"config": cfg.to_dict()}))

ra.run_grid(grid, out, log=lambda line: None, train_cell=train)
"""


def test_two_processes_racing_for_the_same_cells_run_each_once(tmp_path):
    """Two unsharded processes walk the same cells in the same order, so they contend for every one."""
    out = tmp_path / "sweep"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(out)]) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(out.glob("ready-*"))) < 2 and time.monotonic() < deadline:  # both imported, waiting
        time.sleep(0.05)
    (out / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = [line.split() for line in (out / "ran.txt").read_text().splitlines()]
    ran = [name for name, _ in lines]
    assert len({pid for _, pid in lines}) == 2  # both processes ran cells: they did compete
    grid = ra.Grid(decomps=("lora",), levels={"lora": (2,)}, references=("frozen",), seeds=(0, 1, 2),
                   baseline_level=2)
    assert sorted(ran) == sorted(c.name for c in grid.cells())  # every cell, none twice
