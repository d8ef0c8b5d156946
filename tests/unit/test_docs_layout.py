"""docs/architecture.md names one module per pipeline step; each path it names exists, and the
README's layout table is the same table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
STEPS = ("request", "pipeline", "policy", "admission", "router", "cascade", "backend", "accounting")


def _rows() -> list[list[str]]:
    block = ARCHITECTURE.split("<!-- layout:start", 1)[1].split("<!-- layout:end -->", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_every_step_has_one_module_that_exists() -> None:
    rows = _rows()
    for step in STEPS:
        matching = [row for row in rows if row[0].split(" ")[0].rstrip(":") == step
                    or row[0].startswith(f"the {step}")]  # fmt: skip
        assert len(matching) == 1, step
        module = matching[0][1].strip("`")
        assert module.endswith(".py") and (ROOT / module).is_file(), module


def test_every_path_in_the_table_exists() -> None:
    paths = re.findall(r"`([\w/]+(?:\.py|/))`", "\n".join("|".join(r) for r in _rows()))
    assert len(paths) > 30
    missing = [p for p in paths if "/" in p and not (ROOT / p).exists()]
    # Bare file names in the third column are relative to the folder named before them.
    assert missing == []


def test_readme_layout_is_the_architecture_table() -> None:
    # `python docs/sync_layout.py` copies it; --check exits 1 when the README differs.
    spec = importlib.util.spec_from_file_location("sync_layout", ROOT / "docs" / "sync_layout.py")
    assert spec is not None and spec.loader is not None
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    readme = (ROOT / "README.md").read_text()
    assert sync.table(readme) == sync.table(ARCHITECTURE)
    assert sync.synced(readme, ARCHITECTURE) == readme
