"""One source of truth: generated files are fresh, and the release holds no solution."""

from __future__ import annotations

from pathlib import Path

import nbformat

from fv_exercises.course import RELEASE, ROOT, SOURCE, assignments, stale_files


def test_generated_files_are_up_to_date():
    stale = stale_files()
    assert not stale, f"stale (run `python -m fv_exercises.course build`): {stale}"


def test_every_assignment_released_and_exported():
    assert assignments(), "no assignments found in solutions/"
    for name in assignments():
        assert (RELEASE / name / f"{name}.ipynb").is_file()


def test_release_has_stubs_and_no_hidden_tests_or_solutions():
    for name in assignments():
        release = nbformat.read(RELEASE / name / f"{name}.ipynb", as_version=4)
        text = "\n".join(c.source for c in release.cells)
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        assert "hidden=True" not in text
        assert "raise NotImplementedError()" in text
        source = nbformat.read(SOURCE / name / f"{name}.ipynb", as_version=4)
        graded = [c for c in source.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert graded, f"{name} has no graded cells"


def test_no_non_notebook_files_in_source_folders():
    """nbgrader copies them into the release verbatim: a solution must never sit in one."""
    extra = [p for p in SOURCE.rglob("*") if p.is_file() and p.suffix != ".ipynb"
             and ".ipynb_checkpoints" not in p.parts]
    assert not extra, extra


def test_no_if_main_guards_in_notebooks():
    for path in list(SOURCE.rglob("*.ipynb")) + list(RELEASE.rglob("*.ipynb")):
        assert "if MAIN" not in Path(path).read_text()
