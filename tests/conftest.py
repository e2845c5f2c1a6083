"""Shared fixtures: one embedded model per test session."""

from __future__ import annotations

import pytest


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
