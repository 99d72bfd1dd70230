"""Every ```python block of README.md and docs/*.md runs: the blocks of one file in order, one namespace.

API listings that are not programs are fenced as ```text. Files whose examples train for minutes
run in the slow tier.
"""
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SLOW = {"gfn.md", "vi.md"}  # GFlowNet / VI training examples: minutes on 2 cores


def python_blocks(path: Path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _param(path):
    marks = [pytest.mark.slow] if path.name in SLOW else []
    return pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in FILES if python_blocks(p)])
def test_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_snippet__"}
    for i, block in enumerate(python_blocks(path)):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message names the block
            raise AssertionError(f"{path.name}, python block {i} failed: {type(e).__name__}: {e}") from e
