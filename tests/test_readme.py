"""The README's Python tour runs as written (```python blocks; ```py blocks need external files)."""
import re
from pathlib import Path


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(readme), "exec"), {})
