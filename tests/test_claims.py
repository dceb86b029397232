"""Claim files (tensoradapt.train.claims) and the sweep's use of them: processes sharing a sweep folder never run a
cell twice, a killed process's claim is taken over, and a shard that finishes its share takes the rest."""
import subprocess
import sys

import pytest

from tensoradapt.train import ablation as ra
from tensoradapt.train.claims import CLAIM, claim


def test_a_claim_is_exclusive_and_released_even_on_error(tmp_path):
    with claim(tmp_path / "cell") as first:
        assert first and (tmp_path / "cell" / CLAIM).is_file()
        with claim(tmp_path / "cell") as second:  # this process's live claim: another taker is refused
            assert not second
        assert (tmp_path / "cell" / CLAIM).is_file()  # the refused taker did not remove it
    assert not (tmp_path / "cell" / CLAIM).exists()
    with pytest.raises(RuntimeError), claim(tmp_path / "cell") as mine:
        assert mine
        raise RuntimeError("cell failed")
    assert not (tmp_path / "cell" / CLAIM).exists()


def test_a_dead_processs_claim_is_taken_over_but_another_hosts_is_kept(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / CLAIM).write_text(f"{dead} {socket.gethostname()}\n")
    with claim(tmp_path / "a") as mine:
        assert mine
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / CLAIM).write_text(f"{dead} another-host\n")
    with claim(tmp_path / "b") as mine:
        assert not mine


def test_the_sweep_skips_claimed_cells_and_a_shard_takes_the_others_share(tmp_path):
    grid = ra.Grid(decomps=("lora",), levels={"lora": (2,)}, references=("frozen",), seeds=(0, 1),
                   baseline_level=2, run=dict(epochs=1, progress=False))
    names = [c.name for c in grid.cells()]  # lora_r2_s0, frozen_rnone_s0, lora_r2_s1, frozen_rnone_s1
    out = tmp_path / "sweep"
    busy = out / "cells" / names[1]
    busy.mkdir(parents=True)
    import os
    import socket

    (busy / CLAIM).write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process runs this cell
    ran = []
    ra.run_grid(grid, out, log=lambda *_: None, shard=(0, 2),
                train_cell=lambda cfg, resume=False: ran.append(cfg.out.rsplit("/", 1)[-1]))
    # its own share (positions 0 and 2) first, then the other shard's unclaimed cell; never the claimed one
    assert ran == [names[0], names[2], names[3]]
    assert not any((out / "cells" / n / CLAIM).exists() for n in ran)
