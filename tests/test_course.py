"""One source of truth: generated files are fresh, and the release holds no solution."""

from __future__ import annotations

import re
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


_REGION = re.compile(r"^\s*### BEGIN (SOLUTION|HIDDEN TESTS)\s*$(.*?)^\s*### END \1\s*$",
                     re.MULTILINE | re.DOTALL)


def _secret_lines(source: nbformat.NotebookNode) -> set[str]:
    """Code lines that exist only inside solution or hidden-test regions of the source.

    A line that also appears elsewhere in the source (an exploration cell, a docstring) is
    public anyway and is not counted.
    """
    inside, outside = set(), set()
    for cell in source.cells:
        if cell.cell_type != "code":
            continue
        for match in _REGION.finditer(cell.source):
            inside |= {line.strip() for line in match.group(2).splitlines()}
        outside |= {line.strip() for line in _REGION.sub("", cell.source).splitlines()}
    trivial = {"", "pass", "return", "else:", "try:", "finally:", ")", "]", "}"}
    return {line for line in inside - outside
            if line not in trivial and not line.startswith("#")}


def test_release_contains_no_solution_or_hidden_test_line():
    """Scan every release notebook (sources, outputs, metadata) for any line of a solution or a
    hidden test, and for nbgrader's markers: nbgrader must have removed all of them."""
    for name in assignments():
        source = nbformat.read(SOURCE / name / f"{name}.ipynb", as_version=4)
        secrets = _secret_lines(source)
        assert secrets, f"{name}: no solution found in the source notebook"
        release_text = (RELEASE / name / f"{name}.ipynb").read_text()
        release = nbformat.reads(release_text, as_version=4)
        lines = {line.strip() for cell in release.cells for line in cell.source.splitlines()}
        leaked = sorted(secrets & lines)
        assert not leaked, f"{name}: solution / hidden-test lines in the release: {leaked[:5]}"
        assert not re.search(r"### (BEGIN|END) (SOLUTION|HIDDEN TESTS)", release_text), name
        with_outputs = [i for i, c in enumerate(release.cells)
                        if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not with_outputs, f"{name}: release cells with outputs (may show answers): {with_outputs}"
        for folder in (RELEASE / name).rglob("*"):
            assert folder.is_dir() or folder.suffix == ".ipynb", f"non-notebook file {folder}"


def test_written_answers_are_released_empty():
    """Manually graded answer cells (markdown, solution and grade): the source holds the
    reference answer, the release only nbgrader's stub, so no reference answer is released."""
    for name in assignments():
        source = nbformat.read(SOURCE / name / f"{name}.ipynb", as_version=4)
        release = nbformat.read(RELEASE / name / f"{name}.ipynb", as_version=4)
        released = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells
                    if c.metadata.get("nbgrader", {}).get("grade_id")}
        for cell in source.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "markdown" and meta.get("solution") and meta.get("grade"):
                assert meta.get("points", 0) > 0, meta["grade_id"]
                assert released[meta["grade_id"]].strip() == "YOUR ANSWER HERE", meta["grade_id"]
                assert len(cell.source) > 200, f"{meta['grade_id']}: no reference answer in the source"


def test_no_non_notebook_files_in_source_folders():
    """nbgrader copies them into the release verbatim: a solution must never sit in one."""
    extra = [p for p in SOURCE.rglob("*") if p.is_file() and p.suffix != ".ipynb"
             and ".ipynb_checkpoints" not in p.parts]
    assert not extra, extra


def test_no_if_main_guards_in_notebooks():
    for path in list(SOURCE.rglob("*.ipynb")) + list(RELEASE.rglob("*.ipynb")):
        assert "if MAIN" not in Path(path).read_text()
