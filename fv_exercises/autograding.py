"""Autograding a class with nbgrader: submissions, the gradebook, and what went wrong.

``python -m fv_exercises.course autograde ASSIGNMENT`` is the instructor's command. It runs
``nbgrader autograde`` with this environment's tools on ``PATH`` (nbgrader shells out to
``alembic`` and starts kernels by name), after setting aside what nbgrader cannot read, and then
prints one line per student. What nbgrader does by itself, measured on nbgrader 0.9.6:

- an edited locked cell (a grade cell, the set-up cell) is restored from the source;
- a deleted grade cell scores zero (nbgrader cannot restore a cell that is gone);
- cells in another order run in that order: a grade cell above the function it tests scores zero;
- a cell that runs longer than ``Execute.timeout`` is interrupted and scores zero (if it is a
  grade cell); the later cells still run (``interrupt_on_timeout``, nbgrader's default);
- more than ``LimitOutput.max_lines`` lines of output are cut;
- a notebook that is not valid JSON makes nbgrader fail that submission (the others are graded)
  and exit with an error; a folder without the notebook is skipped without a record.

The last two are what this module adds: :func:`autograde` grades only the readable submissions and
records a zero for every graded cell of the others, so the gradebook, ``nbgrader export`` and the
exit code tell the truth about the whole batch. Like nbgrader, it keeps submissions autograded
before unless asked to ``force``, so a re-run grades only the new ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

import nbformat

from fv_exercises.course import ROOT, tool_env

_SOLUTION_MARKER = ("### BEGIN SOLUTION", "### END SOLUTION")


# --------------------------------------------------------------------------------------------
# Running nbgrader
# --------------------------------------------------------------------------------------------


def course_dir() -> Path:
    """The course directory instructor commands work on: the current directory when it holds an
    ``nbgrader_config.py`` (as for nbgrader itself), else the clone this package is installed from.
    """
    here = Path.cwd()
    return here if (here / "nbgrader_config.py").is_file() else ROOT


def nbgrader(root: Path, *args: str, check: bool = True, quiet: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in the course directory ``root`` with this environment's tools."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}"]
    if quiet:
        cmd.append("--log-level=WARN")
    return subprocess.run(cmd, check=check, cwd=root, env=env or tool_env(),
                          capture_output=quiet, text=True)


def scratch_course(root: Path, names: Iterable[str]) -> None:
    """A course directory at ``root`` with ``names`` generated into its own gradebook.

    Copies ``nbgrader_config.py`` and the source notebooks, then runs ``generate_assignment``,
    which writes the release and records the grade cells in ``root/gradebook.db``.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "nbgrader_config.py", root)
    for name in names:
        shutil.copytree(ROOT / "solutions" / name, root / "solutions" / name, dirs_exist_ok=True)
        nbgrader(root, "generate_assignment", name, "--force")


# --------------------------------------------------------------------------------------------
# Submissions
# --------------------------------------------------------------------------------------------


def notebook_path(root: Path, folder: str, student: str | None, name: str) -> Path:
    """``root/folder/[student/]name/name.ipynb``."""
    parts = [folder, student, name] if student else [folder, name]
    return root.joinpath(*parts) / f"{name}.ipynb"


def reference_submission(root: Path, name: str) -> nbformat.NotebookNode:
    """The release notebook of ``name`` with every solution cell filled from the source."""
    release = nbformat.read(notebook_path(root, "notebooks", None, name), as_version=4)
    source = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    filled = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in filled.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in solutions:
            cell.source = "\n".join(line for line in solutions[grade_id].splitlines()
                                    if line.strip() not in _SOLUTION_MARKER)
    return filled


def submit(root: Path, name: str, student: str, nb: nbformat.NotebookNode | str | None) -> Path:
    """Place a submission as nbgrader expects it: ``submitted/<student>/<name>/<name>.ipynb``.

    ``nb`` may be a notebook, raw text (e.g. broken JSON), or ``None`` (the folder, no notebook).
    """
    path = notebook_path(root, "submitted", student, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        path.write_text(nb)
    elif nb is not None:
        nbformat.write(nb, path)
    return path


def unreadable_submissions(root: Path, name: str,
                           students: Iterable[str] | None = None) -> dict[str, str]:
    """Students whose submission folder for ``name`` holds no readable notebook, with the reason."""
    base = root / "submitted"
    folders = [base / s for s in students] if students else sorted(base.glob("*"))
    problems = {}
    for folder in folders:
        if not (folder / name).is_dir():
            continue
        path = folder / name / f"{name}.ipynb"
        if not path.is_file():
            problems[folder.name] = f"no {path.name} in the submission"
            continue
        try:
            nbformat.read(path, as_version=4)
        except Exception as exc:  # invalid JSON, not a notebook, unreadable bytes
            problems[folder.name] = f"{path.name} cannot be read: {type(exc).__name__}"
    return problems


# --------------------------------------------------------------------------------------------
# The gradebook
# --------------------------------------------------------------------------------------------


def _gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'gradebook.db'}")


def record_zero(root: Path, name: str, student: str) -> None:
    """Record ``student``'s submission of ``name`` with zero on every graded cell."""
    # nbgrader's api makes SQLAlchemy warn (SAWarning, harmless) when it creates a submission.
    with warnings.catch_warnings(), _gradebook(root) as gb:
        warnings.simplefilter("ignore")
        gb.update_or_create_student(student)
        submission = gb.update_or_create_submission(name, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0
                grade.needs_manual_grade = False
        gb.db.commit()


def cell_scores(root: Path, name: str, student: str) -> dict[str, tuple[float, float]]:
    """``{grade cell id: (score, max score)}`` of one submission (code grade cells)."""
    with _gradebook(root) as gb:
        nb = gb.find_submission_notebook(name, name, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades if g.cell_type == "code"}


def cell_seconds(nb: nbformat.NotebookNode) -> list[tuple[str, float]]:
    """``(label, seconds)`` of each executed code cell, from nbclient's timing metadata.

    The label is the cell's nbgrader ``grade_id`` or ``cell <index>``.
    """
    rows = []
    for i, cell in enumerate(nb.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if cell.cell_type != "code" or not (start and end):
            continue
        seconds = (_timestamp(end) - _timestamp(start))
        rows.append((cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i}", seconds))
    return rows


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------------
# The instructor's command
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One student's result for one assignment."""

    student: str
    score: float
    max_score: float
    problem: str = ""  # why the submission was not graded normally
    failed_cells: list[str] = field(default_factory=list)


def timed_out_cells(nb: nbformat.NotebookNode) -> list[str]:
    """Labels of cells whose output holds nbclient's ``CellTimeoutError``."""
    return [cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i}"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", []))]


def submitted_students(root: Path, name: str) -> list[str]:
    """Students with a folder ``submitted/<student>/<name>/``."""
    return sorted(p.parent.name for p in (root / "submitted").glob(f"*/{name}") if p.is_dir())


def autograde(root: Path, name: str, students: list[str] | None = None, force: bool = False,
              extra: Iterable[str] = ()) -> list[Outcome]:
    """Autograde ``name`` for ``students`` (default: every folder in ``submitted/``).

    Unreadable or missing notebooks are not handed to nbgrader (it would fail them and exit with
    an error): each gets a zero on every graded cell instead. Without ``force``, submissions
    autograded before are kept (nbgrader's default), so a re-run grades only new ones. Returns one
    outcome per student; ``Outcome.problem`` says why a submission was not graded normally.
    """
    from nbgrader.api import MissingEntry

    with _gradebook(root) as gb:
        try:
            gb.find_assignment(name)
        except MissingEntry:
            raise SystemExit(f"{name} is not in {root / 'gradebook.db'}: run "
                             f"`nbgrader generate_assignment {name} --force` first") from None
    everyone = submitted_students(root, name)
    chosen = [s for s in everyone if s in students] if students else everyone
    missing = sorted(set(students or ()) - set(everyone))
    if missing:
        raise SystemExit(f"no submission folder submitted/<student>/{name} for {missing}")
    unreadable = unreadable_submissions(root, name, chosen)
    readable = [s for s in chosen if s not in unreadable]
    if readable:
        # nbgrader's own filter: every student folder except the readable chosen ones.
        args = ["autograde", name, "--create", *extra]
        excluded = sorted(set(everyone) - set(readable))
        if excluded:
            args.append("--CourseDirectory.student_id_exclude=" + ",".join(excluded))
        if force:
            args.append("--force")
        nbgrader(root, *args, check=False, quiet=False)
    for student in unreadable:
        record_zero(root, name, student)
    outcomes = []
    with _gradebook(root) as gb:
        for student in chosen:
            try:
                submission = gb.find_submission(name, student)
            except MissingEntry:
                outcomes.append(Outcome(student, 0.0, 0.0, "not graded (see nbgrader's log above)"))
                continue
            outcome = Outcome(student, submission.score, submission.max_score,
                              problem=unreadable.get(student, ""))
            graded = notebook_path(root, "autograded", student, name)
            if not outcome.problem and not graded.is_file():
                outcome.problem = "nbgrader failed on this submission (see its log above): scored 0"
            elif graded.is_file():
                timed_out = set(timed_out_cells(nbformat.read(graded, as_version=4)))
                for notebook in submission.notebooks:
                    outcome.failed_cells += [
                        g.name + (" (timed out)" if g.name in timed_out else "")
                        for g in notebook.grades if g.score < g.max_score]
            outcomes.append(outcome)
    return outcomes


def print_outcomes(name: str, outcomes: list[Outcome]) -> None:
    """One line per student: score, and the cells that lost points or why nothing was graded."""
    print(f"{name}: {len(outcomes)} submission(s)")
    for o in outcomes:
        note = o.problem or (", ".join(o.failed_cells) and "lost points: " + ", ".join(o.failed_cells))
        print(f"  {o.student:20} {o.score:5.1f} / {o.max_score:<5.1f} {note}")
