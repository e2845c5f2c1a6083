"""Shared fixtures: one embedded model per test session; the round trips' grading times."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Each nbgrader round trip (tests/test_nbgrader_roundtrip.py, possibly on another xdist worker)
# writes how long its self-study run took (full size) and one submission took to autograde
# (with the grading reduction); the
# controller prints them at the end of the run (a measurement, not an assertion). The folder is
# $FV_GRADING_TIMES, or one made for this run (so that another pytest run at the same time, even
# a --collect-only, neither reads nor deletes this run's times).
_TIMES_ENV = "FV_GRADING_TIMES"
_ARTIFACTS_ENV = "FV_ARTIFACTS"


def _times() -> Path:
    return Path(os.environ[_TIMES_ENV])


def record_grading_time(assignment: str, full: float, reduced: float) -> None:
    _times().mkdir(parents=True, exist_ok=True)
    (_times() / f"{assignment}.json").write_text(json.dumps({"full": full, "reduced": reduced}))


def pytest_configure(config):
    # the controller (or a run without xdist), before it starts the workers: they inherit it
    if not hasattr(config, "workerinput"):
        if os.environ.get(_TIMES_ENV):
            for old in _times().glob("*.json") if _times().is_dir() else []:
                old.unlink()
        else:
            os.environ[_TIMES_ENV] = tempfile.mkdtemp(prefix="fv-grading-times-")
        # the browser tests' screenshots (tests/test_browser.py): $FV_ARTIFACTS or a fresh folder
        if not os.environ.get(_ARTIFACTS_ENV):
            os.environ[_ARTIFACTS_ENV] = tempfile.mkdtemp(prefix="fv-artifacts-")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    shots = sorted(Path(os.environ.get(_ARTIFACTS_ENV, "/nonexistent")).glob("*.png"))
    if shots:
        terminalreporter.section("browser test screenshots")
        for shot in shots:
            terminalreporter.write_line(str(shot))
    if not _times().is_dir():
        return
    rows = sorted(_times().glob("*.json"))
    if not rows:
        return
    tr = terminalreporter
    tr.section("seconds per notebook: self-study run, and one submission autograded (this run)")
    tr.write_line(f"{'assignment':20} {'self-study':>10} {'autograded':>10}")
    for path in rows:
        t = json.loads(path.read_text())
        tr.write_line(f"{path.stem:20} {t['full']:10.0f} {t['reduced']:10.0f}")


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
