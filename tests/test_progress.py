"""``fv progress``: a learner's own notebooks, run as a grader would, reported per function.

Notebook 01 (the cheapest). Most tests need no kernel: a function still equal to its stub is
``not started`` without running anything, and an unreadable file never reaches a kernel. One test
runs a kernel (marked ``notebook``): a filled function passes, a planted bug fails with the
check's own first line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat
import pytest

from fv_exercises import progress
from fv_exercises.__main__ import main
from fv_exercises.course import RELEASE, SOURCE

from test_nbgrader_roundtrip import PLANTED_BUGS, _fill_solutions, _plant

NAME = "01_task_vectors"


def _release() -> nbformat.NotebookNode:
    return nbformat.read(RELEASE / NAME / f"{NAME}.ipynb", as_version=4)


def _place(folder: Path, nb: nbformat.NotebookNode | str) -> Path:
    """Put a learner's notebook (or raw text) where ``fv progress --dir folder`` looks."""
    path = folder / NAME / f"{NAME}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        path.write_text(nb)
    else:
        nbformat.write(nb, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cell_index(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells)
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_release_notebook_is_not_started_without_running(tmp_path, capsys):
    path = _place(tmp_path, _release())
    before = _digest(path)
    assert main(["progress", "01", "--dir", str(tmp_path)]) == 1  # not everything passes
    out = capsys.readouterr().out
    assert f"{NAME}  (nothing to run yet)" in out
    for name in ("find_task_vector", "mean_task_vector"):
        assert any(line.split() == [name, "not", "started"] for line in out.splitlines()), out
    assert "0 of 2 graded functions pass." in out
    assert "02_layer_sweep" not in out, "`progress 01` checked other notebooks"
    assert _digest(path) == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("text, says", [
    ('{"cells": [', "is not valid JSON (line 1, column 12"),
    ('{"cells": 5, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "is not a valid notebook"),
    (None, "not found"),
])
def test_unreadable_notebook_gives_one_clear_line(tmp_path, capsys, text, says):
    if text is not None:
        path = _place(tmp_path, text)
        before = _digest(path)
    assert main(["progress", "01", "--dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    line = next(l for l in captured.out.splitlines() if l.startswith(NAME))
    assert line.startswith(f"{NAME}  cannot check: ") and says in line, line
    assert "Traceback" not in captured.out + captured.err
    if text is not None:
        assert _digest(path) == before


def test_edited_and_deleted_check_cells_are_replaced_by_the_courses_in_the_copy():
    learner = _release()
    learner.cells[_cell_index(learner, "test_mean_task_vector")].source = "pass  # no check for me"
    del learner.cells[_cell_index(learner, "test_find_task_vector")]
    before = nbformat.writes(learner)
    graded = progress.course_graded(NAME)
    prep = progress.prepare(learner, graded)
    assert nbformat.writes(learner) == before, "prepare() changed the learner's notebook"
    for g in graded:
        check = prep.checks[g.name]
        assert prep.nb.cells[check].source == g.check_source
        assert check == _cell_index(prep.nb, g.name) + 1, "the check must follow its function"
    assert "missing" in prep.notes["find_task_vector"] and "edited" in prep.notes["mean_task_vector"]
    assert prep.stubs == {"find_task_vector", "mean_task_vector"}


def test_course_checks_are_the_released_ones():
    # The check cells progress restores are those nbgrader released (hidden tests removed).
    release = _release()
    graded = progress.course_graded(NAME)
    assert [g.name for g in graded] == ["find_task_vector", "mean_task_vector"]
    for g in graded:
        cell = release.cells[_cell_index(release, g.check_id)]
        assert cell.source.strip() == g.check_source and progress.as_released(cell)
        assert "hidden" not in g.check_source.lower()


def test_pick_notebooks():
    assert progress.pick(["01", "3"]) == ["01_task_vectors", "03_heads"]
    assert progress.pick(["layer_sweep"]) == ["02_layer_sweep"]
    assert len(progress.pick([])) == 9
    with pytest.raises(SystemExit, match="no notebook '42'"):
        progress.pick(["42"])


@pytest.mark.notebook
def test_filled_function_passes_and_planted_bug_fails_with_the_checks_message(tmp_path, capsys):
    source = nbformat.read(SOURCE / NAME / f"{NAME}.ipynb", as_version=4)
    cell_id, old, new, _ = PLANTED_BUGS[NAME]  # mean_task_vector: sum instead of mean
    nb = _plant(_fill_solutions(_release(), source), cell_id, old, new)
    # a learner's exploration cell that raises, and a deleted check cell
    nb.cells.insert(_cell_index(nb, "find_task_vector"),
                    nbformat.v4.new_code_cell("raise ValueError('my experiment')"))
    del nb.cells[_cell_index(nb, "test_find_task_vector")]
    path = _place(tmp_path, nb)
    before = _digest(path)
    assert main(["progress", "01", "--dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    print(captured.out)  # the report, for the record
    assert any(l.split() == ["find_task_vector", "pass"] for l in lines), captured.out
    failing = next(l for l in lines if l.strip().startswith("mean_task_vector"))
    assert "fails: `mean_task_vector` gives the wrong task vector" in failing, failing
    assert any("check cell is missing" in l for l in lines)
    assert any("not graded) raised ValueError: my experiment" in l for l in lines)
    assert "1 of 2 graded functions pass." in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert _digest(path) == before, "the learner's notebook was written to"
