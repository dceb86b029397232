"""The benchmarks run end to end (tiny sizes, one repeat) and write the JSON they promise.

They measure; nothing here asserts a time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_bench_deltas_runs(tmp_path):
    from experiments.benchmarks import bench_deltas

    out = tmp_path / "deltas.json"
    bench_deltas.main(["--d-in", "32", "--d-out", "96", "--tokens", "64", "--repeats", "1", "--malloc", "system",
                       "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["decomp"] for r in rows} == {"tucker", "cp", "tt", "lora", "shared-lora"}
    assert all(r["delta_speedup"] > 0 and r["mixed_vs_split"] > 0 for r in rows)


def test_bench_attention_runs_and_the_fused_attention_holds_no_more(tmp_path):
    from experiments.benchmarks import bench_attention

    out = tmp_path / "attention.json"
    bench_attention.main(["--model", "tiny", "--image-size", "256", "--tasks", "1", "--repeats", "0",
                          "--malloc", "system", "--out", str(out)])
    peak = {r["variant"]: r["peak MiB"] for r in json.loads(out.read_text())["rows"]}
    assert set(peak) == {"sam", "sdpa", "chunked", "sam+ckpt", "sdpa+ckpt", "chunked+ckpt"}
    for kind in ("sdpa", "chunked"):  # replayed tensor bytes: deterministic, no timing involved
        assert peak[kind] <= peak["sam"]
        assert peak[kind + "+ckpt"] < peak[kind] and peak["sam+ckpt"] < peak["sam"]


def test_bench_tasks_runs_and_counts_what_the_trunk_and_the_task_axis_save(tmp_path):
    from experiments.benchmarks import bench_tasks

    out = tmp_path / "tasks.json"
    bench_tasks.main(["--model", "tiny", "--batch", "1", "--tasks", "1,3", "--methods", "tucker,lora",
                      "--repeats", "1", "--malloc", "system", "--out", str(out)])
    rows = {(r["method"], r["T"], r["k"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 8 and all(r["train s"] > 0 for r in rows.values())
    # counts, not times: the trunk (k = 2 of 4 blocks) halves the deltas; LoRA-STL's grow with T, Tucker's barely
    assert rows[("tucker", 3, 2)]["delta"] * 2 == rows[("tucker", 3, 0)]["delta"]
    assert rows[("lora", 3, 0)]["delta"] == 3 * rows[("lora", 1, 0)]["delta"]
    assert rows[("tucker", 3, 0)]["delta"] - rows[("tucker", 1, 0)]["delta"] == 4 * 2 * 4  # r_task per task, layer
    assert rows[("tucker", 3, 2)]["bound"] == pytest.approx(4 / 6)


def test_bench_tensorly_runs(tmp_path):
    pytest.importorskip("tltorch")
    from experiments.benchmarks import bench_tensorly

    out = tmp_path / "tl.json"
    bench_tensorly.main(["--fit-dims", "40,40", "--tokens", "16", "--repeats", "1", "--malloc", "system",
                         "--out", str(out)])
    payload = json.loads(out.read_text())
    for row in payload["fit"]:  # our wrapper and tensorly fit the same tensor equally well
        assert row["err ours"] == pytest.approx(row["err tensorly"], rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_bench_msam_runs(tmp_path):
    """Both precisions run end to end, and `--amp bf16` reaches the model: what autograd saves changes
    (bf16 activations, plus bf16 copies of the weights, which outweigh them at this toy size)."""
    from experiments.benchmarks import bench_msam

    saved = {}
    for amp in ("none", "bf16"):
        out = tmp_path / f"msam_{amp}.json"
        bench_msam.main(["--image-size", "64", "--batch", "1", "--repeats", "1", "--amp", amp, "--malloc", "system",
                         "--out", str(out)])
        rows = json.loads(out.read_text())["rows"]
        whats = " ".join(r["what"] for r in rows)
        assert "floor" in whats and "merged" in whats and "activations saved" in whats
        saved[amp] = next(r["MiB"] for r in rows if r["what"].startswith("activations saved for backward, tucker"))
        if amp == "none":  # recomputing the blocks in backward must lower the step's peak
            peak = {r["what"].split(", ")[-1]: r["ratio"] for r in rows if r["what"].startswith("peak memory")}
            assert peak["tucker + activation checkpointing vs floor"] < peak["tucker vs floor"]
    assert saved["bf16"] != saved["none"]


@pytest.mark.slow
def test_bench_compile_runs_without_graph_breaks_and_matches_eager(tmp_path):
    """The whole mSAM (task routing included) traces into one graph and the compiled model computes
    what the eager one does. aot_eager traces forward and backward like inductor, without a C++ build."""
    from experiments.benchmarks import bench_compile

    out = tmp_path / "compile.json"
    bench_compile.main(["--image-size", "64", "--batch", "1", "--repeats", "1", "--backend", "aot_eager",
                        "--malloc", "system", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["graph_breaks"] == 0
    assert payload["max_abs_diff"] <= 1e-4 * max(payload["output_scale"], 1.0)
    assert {r["what"].split()[0] for r in payload["rows"]} == {"train", "infer"}


def test_peak_tensor_bytes_replays_allocations_in_order():
    """4 MB and 2 MB live together, then 4 MB is freed before 1 MB more: the peak is 6 MB, not 7 MB."""
    from experiments.benchmarks.common import peak_tensor_bytes

    def fn():
        a = torch.ones(1_000_000)
        b = torch.ones(500_000)
        del a
        c = torch.ones(250_000)
        return b, c

    assert peak_tensor_bytes(fn) == 6_000_000
    assert peak_tensor_bytes(lambda: torch.ones(10) + 1) >= 40
