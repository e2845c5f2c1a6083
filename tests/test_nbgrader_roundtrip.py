"""nbgrader round trip, nbgrader's own way: generate, submit, autograde, read the gradebook.

For every assignment, one full run and one graded batch:

- **Self-study run**: the release notebook with every solution region filled from the source,
  executed top to bottom by nbclient at full size (no ``NBGRADER_EXECUTION``), the way a learner
  who has solved every exercise runs it: check cells run in the learner's kernel, as they do for
  a self-study reader. No cell may raise, and every finding the prose states must be backed by a
  ``claim(...)`` that holds on the embedded model: a library upgrade that changes a result fails
  here instead of leaving the prose wrong. This is also the notebook-execution test, and it
  fills the course's disk cache (function vectors, scans) the graded batch then reads.
- **Graded batch**, as an instructor grades (``nbgrader autograde``: the grading reduction on,
  each submission in the sandbox, grade cells judged outside the kernel with the hidden tests):
  ``reference`` (the filled notebook) scores full marks (which proves no grade cell writes to
  stderr: nbgrader scores such a cell zero); ``bug`` (the reference with one planted, plausible
  bug in one graded function) loses exactly the points of the cell that tests the broken function
  and keeps every other point, which proves the reduced exploration cells still give the grade
  cells what they need. For the first notebook also ``untouched`` (the release as distributed:
  stubs raise NotImplementedError) scores zero on every graded cell; that every release has
  stubs and no solution or hidden test is asserted for all of them statically
  (tests/test_course.py).

(Until issue 18 the reference was graded in full by nbgrader, in a run of its own: the same
assertions, but every grade cell judged twice per notebook and one more grader per notebook. A
full-size graded run is measured by ``python -m fv_exercises.bench grade --modes full``.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from fv_exercises.claims import FAILS, HOLDS, SKIPPED
from fv_exercises.course import ROOT, assignments, tool_env

from conftest import record_grading_time

pytestmark = pytest.mark.notebook

# assignment -> (solution cell id, text to replace, replacement, grade cell id that must fail)
PLANTED_BUGS = {
    "01_task_vectors": ("mean_task_vector", "torch.stack(states).mean(0)",
                        "torch.stack(states).sum(0)", "test_mean_task_vector"),
    "02_layer_sweep": ("find_task_layer", 'icl_cache[f"blocks.{layer}.hook_resid_post"][0, -1]',
                       'icl_cache[f"blocks.{layer}.hook_resid_post"][0, 0]', "test_find_task_layer"),
    "03_heads": ("find_task_heads", "z[:, -1, head] = mean_z[layer, head]",
                 "z[:, 0, head] = mean_z[layer, head]", "test_find_task_heads"),
    "04_arithmetic": ("average_function_vector", 'cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]',
                      'cache[f"blocks.{layer}.attn.hook_z"][0, 0, head]', "test_average_function_vector"),
    "05_ablation": ("ablate_function_vector", "fv_unit = fv / fv.norm()", "fv_unit = fv",
                    "test_ablate_function_vector"),
    "06_generation": ("generate_with_function_vector", "resid[:, -1] += fv", "resid[:, 0] += fv",
                      "test_generate_with_function_vector"),
    "07_nnsight": ("nnsight_task_vector_logits", "layers[layer].output[:, -1] += h_task",
                   "layers[layer].output += h_task", "test_nnsight_task_vector_logits"),
    "08_sycophancy": ("steered_agreement", "resid[:, start:] += steer", "resid[:, -1] += steer",
                      "test_steered_agreement"),
    "09_exercises": ("find_minimal_heads", "reverse=True", "reverse=False",
                     "test_find_minimal_heads"),
}
_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def _fill_solutions(release: nbformat.NotebookNode, source: nbformat.NotebookNode):
    """The release notebook with each solution cell replaced by the source's reference code."""
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    filled = nbformat.from_dict(release)
    for cell in filled.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in solutions:
            cell.source = "\n".join(l for l in solutions[grade_id].splitlines() if not _MARKER.match(l))
    return filled


def _plant(nb: nbformat.NotebookNode, cell_id: str, old: str, new: str):
    nb = nbformat.from_dict(nb)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == cell_id)
    assert old in cell.source, f"planted bug target {old!r} not in cell {cell_id}"
    cell.source = cell.source.replace(old, new)
    return nb


def _nbgrader(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}",
                             "--log-level=WARN"], cwd=root, env=env or tool_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    return str(output.get("data", {}).get("text/plain", ""))


def _self_study_run(reference: nbformat.NotebookNode, folder: Path) -> float:
    """Execute ``reference`` at full size with nbclient in a copy of the release folder, as a
    learner runs it; write the executed notebook to ``folder / "executed.ipynb"``. Seconds."""
    from nbclient import NotebookClient

    assert "NBGRADER_EXECUTION" not in os.environ, "the self-study run must run at full size"
    nb = nbformat.from_dict(reference)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        nbformat.write(nb, folder / "executed.ipynb")
    return time.perf_counter() - start


def _graded(name: str, root: Path) -> tuple[str, Path]:
    """Run the reference as a learner would, then autograde the submissions in ``root``."""
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(ROOT / "solutions" / name, root / "solutions" / name)
    _nbgrader(root, "generate_assignment", name, "--force")
    release = nbformat.read(root / "notebooks" / name / f"{name}.ipynb", as_version=4)
    committed = nbformat.read(ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
    assert [c.source for c in release.cells] == [c.source for c in committed.cells], (
        "notebooks/ is stale: run `python -m fv_exercises.course build`")
    source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    reference = _fill_solutions(release, source)
    self_study = root / "self-study"
    shutil.copytree(root / "notebooks" / name, self_study)
    full = _self_study_run(reference, self_study)
    submissions = {"reference": reference}
    if name in PLANTED_BUGS:
        submissions["bug"] = _plant(reference, *PLANTED_BUGS[name][:3])
    if name == assignments()[0]:
        submissions["untouched"] = release
    for student, nb in submissions.items():
        folder = root / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{name}.ipynb")
    start = time.perf_counter()
    _nbgrader(root, "autograde", name, "--create")
    graded = time.perf_counter() - start
    print(f"{name}: self-study run in full {full:.0f} s; {list(submissions)} graded in "
          f"{graded:.0f} s")
    record_grading_time(name, full, graded / len(submissions))
    return name, root


def _scores(root: Path, name: str, student: str) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(name, name, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell_type == "code"}


# One test per assignment (its autograde runs are not shared between tests, so the two xdist
# workers never grade the same assignment twice).
@pytest.mark.parametrize("name", assignments())
def test_round_trip(name, tmp_path):
    graded = _graded(name, tmp_path)
    _reference_scores_full_marks_and_its_claims_hold(graded)
    _untouched_release_scores_zero(graded)
    _planted_bug_loses_exactly_its_cell(graded)


def _reference_scores_full_marks_and_its_claims_hold(graded):
    name, root = graded
    scores = _scores(root, name, "reference")
    assert scores, "no graded cells found"
    lost = {cell: s for cell, s in scores.items() if s[0] != s[1]}
    assert not lost, f"reference lost points (error or stderr output in a grade cell?): {lost}"
    nb = nbformat.read(root / "self-study" / "executed.ipynb", as_version=4)
    text = "\n".join(_text(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    errors = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"cells that raised in the full run: {errors}"
    failed = [line for line in text.splitlines() if line.startswith(FAILS)]
    assert not failed, "claims that do not hold on the embedded model:\n" + "\n".join(failed)
    assert HOLDS in text, f"{name} states no checked claim: back its findings with claim(...)"
    assert SKIPPED not in text, "the full run was made with the reduction on"


def _untouched_release_scores_zero(graded):
    name, root = graded
    if name != assignments()[0]:  # graded for the first notebook only; here, what makes it zero
        release = nbformat.read(ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
        stubs = [c.source for c in release.cells if c.metadata.get("nbgrader", {}).get("solution")
                 and c.cell_type == "code"]
        assert stubs and all("raise NotImplementedError()" in s for s in stubs), stubs
        return
    scores = _scores(root, name, "untouched")
    assert scores and all(score == 0 for score, _ in scores.values()), scores


def _planted_bug_loses_exactly_its_cell(graded):
    name, root = graded
    if name not in PLANTED_BUGS:
        pytest.fail(f"add a planted bug for {name} to PLANTED_BUGS")
    failing_cell = PLANTED_BUGS[name][3]
    scores = _scores(root, name, "bug")
    for cell, (score, max_score) in scores.items():
        expected = 0 if cell == failing_cell else max_score
        assert score == expected, f"{cell}: scored {score}/{max_score}, expected {expected}"
