"""Every solution notebook runs top to bottom on the embedded model, and its claims hold.

The solution notebooks are what self-study readers run and what the prose's findings rest on.
Executing each one in full (not in grading mode) proves that:

- every cell runs without an error (reference solutions pass their visible and hidden checks),
- no grade cell writes to stderr (nbgrader would score it zero),
- every finding the prose states is backed by a ``claim(...)`` that holds on this model (a
  library upgrade that changes a result fails here instead of leaving the prose wrong).
"""

from __future__ import annotations

import os
import time

import nbformat
import pytest

from fv_exercises.claims import FAILS, HOLDS
from fv_exercises.course import SOURCE, assignments, tool_env

pytestmark = pytest.mark.notebook


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    return str(output.get("data", {}).get("text/plain", ""))


@pytest.mark.parametrize("name", assignments())
def test_solution_notebook_runs_and_claims_hold(name, monkeypatch):
    from nbclient import NotebookClient

    for key, value in tool_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    path = SOURCE / name / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    timeout = int(os.environ.get("FV_CELL_TIMEOUT", "600"))  # raise it on a busy machine
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    print(f"{name}: executed in {seconds:.0f} s")

    stderr_in_grade_cells = [
        c.metadata["nbgrader"]["grade_id"] for c in nb.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
        and any(o.get("name") == "stderr" for o in c.get("outputs", []))]
    assert not stderr_in_grade_cells, f"grade cells writing to stderr: {stderr_in_grade_cells}"
    text = "\n".join(_text(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    failed = [line for line in text.splitlines() if line.startswith(FAILS)]
    assert not failed, "claims that do not hold on the embedded model:\n" + "\n".join(failed)
    assert HOLDS in text, f"{name} states no checked claim: back its findings with claim(...)"
