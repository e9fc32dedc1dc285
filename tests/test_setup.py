"""CI installs the way README.md tells a new user to: the same set-up lines, in a fresh virtual env."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_setup() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    lines, on = [], False
    for line in block.splitlines():
        if line.startswith("# "):
            on = line.startswith("# 1. set up")
        elif on and line.strip():
            lines.append(line.strip())
    return lines


def _ci_setup() -> list[str]:
    text = (ROOT / ".ci" / "run").read_text()
    part = text.split("# --- README: set up ---\n")[1].split("# --- README: test ---")[0]
    return [line.strip() for line in part.splitlines() if line.strip()]


def test_ci_sets_up_exactly_as_the_readme_says():
    readme = _readme_setup()
    assert readme and readme[0].startswith("python -m venv ")  # a fresh virtual environment first
    assert _ci_setup() == readme
