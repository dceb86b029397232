"""notebooks/rank_ablation.ipynb executes top to bottom at the quick scale (the real tiny mSAM on the
synthetic scenes; the first run in a fresh cache also builds the scenes and the pretrained tiny SAM)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "rank_ablation.ipynb"


@pytest.mark.slow
def test_rank_ablation_notebook_runs_the_quick_grid(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "quick"
    monkeypatch.setenv("RANK_ABLATION_OUT", str(out))  # never read or write the repo's runs/
    monkeypatch.setenv("TASK_SCALING_OUT", str(ROOT / "docs" / "sweeps" / "ts15v3"))  # the committed records
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is another process: same 1 thread as the suite
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # the delta-m plot, the metric-vs-rank plot, delta-m vs the number of tasks
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert tables and "| decomp |" in tables[0]
    # the task-scaling section reads the committed records: T = 3, 5 and 8, with and without the trunk
    scaling = next(t for t in tables if "| T | k |" in t)
    for cells in ("| 3 | 0 |", "| 3 | 2 |", "| 5 | 0 |", "| 8 | 0 |"):
        assert cells in scaling, cells
    assert (out / "table.csv").exists() and (out / "delta_m_vs_params.png").exists()


def test_notebook_is_valid_nbformat_with_cell_ids():
    """Every cell carries an id (nbformat 4.5; a missing one is a warning today and an error in later nbformat)."""
    nbformat = pytest.importorskip("nbformat")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nbformat.validate(nb)
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids)
