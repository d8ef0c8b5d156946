"""Copy the layout table of docs/architecture.md into README.md (between the layout markers).

    python docs/sync_layout.py          # rewrite README.md
    python docs/sync_layout.py --check  # exit 1 when README.md differs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- layout:start.*?-->\n(.*?)<!-- layout:end -->\n", re.S)
README_MARK = "<!-- layout:start (copied from docs/architecture.md by docs/sync_layout.py) -->\n"


def table(text: str) -> str:
    match = BLOCK.search(text)
    if match is None:
        raise SystemExit("no layout markers")
    return match.group(1)


def synced(readme: str, architecture: str) -> str:
    return BLOCK.sub(
        lambda _: README_MARK + table(architecture) + "<!-- layout:end -->\n", readme, count=1
    )


def main() -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    new = synced(readme, (ROOT / "docs" / "architecture.md").read_text())
    if "--check" in sys.argv:
        return 0 if new == readme else 1
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
