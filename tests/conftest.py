"""Shared fixtures: one embedded model per test session; the round trips' grading times."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Each nbgrader round trip (tests/test_nbgrader_roundtrip.py, possibly on another xdist worker)
# writes how long one submission took to grade, in full and with the grading reduction; the
# controller prints them at the end of the run (a measurement, not an assertion).
_TIMES = Path(os.environ.get("FV_GRADING_TIMES", Path(tempfile.gettempdir()) / "fv_grading_times"))


def record_grading_time(assignment: str, full: float, reduced: float) -> None:
    _TIMES.mkdir(parents=True, exist_ok=True)
    (_TIMES / f"{assignment}.json").write_text(json.dumps({"full": full, "reduced": reduced}))


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        for old in _TIMES.glob("*.json") if _TIMES.is_dir() else []:
            old.unlink()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput") or not _TIMES.is_dir():
        return
    rows = sorted(_TIMES.glob("*.json"))
    if not rows:
        return
    tr = terminalreporter
    tr.section("seconds to autograde one submission (nbgrader round trips, this run)")
    tr.write_line(f"{'assignment':20} {'in full':>8} {'with the reduction':>19}")
    for path in rows:
        t = json.loads(path.read_text())
        tr.write_line(f"{path.stem:20} {t['full']:8.0f} {t['reduced']:19.0f}")


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M-Instruct bridge, loaded once (converted on first use)."""
    from fv_exercises import load_model

    return load_model()


@pytest.fixture(autouse=True)
def _no_hooks_left(request):
    """Every test leaves the shared model without hooks (a leaked hook poisons later tests)."""
    yield
    if "model" in request.fixturenames:
        m = request.getfixturevalue("model")
        leaked = [name for name, hp in m.hook_dict.items() if hp._forward_hooks]
        m.reset_hooks()
        assert not leaked, f"hooks left registered on the shared model: {leaked[:5]}"


def pytest_collection_modifyitems(config, items):
    """Long tests (marked ``notebook``) first: with several workers (``pytest -n 2``, as
    scripts/test.sh runs) the short ones then fill the gaps instead of a long one running alone
    at the end. The order is deterministic, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("notebook") is None)
