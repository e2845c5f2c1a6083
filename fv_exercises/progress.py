"""Self-study progress: ``fv progress [01 03 ...] [--dir FOLDER]``.

Runs a learner's own notebooks the way ``nbgrader validate`` does (every cell in order, in a
fresh kernel, ``NBGRADER_EXECUTION`` set so that exploration cells do less, the per-cell time
limit of ``nbgrader_config.py``) and prints, per notebook, each graded function: ``pass``,
``not started`` (still the stub), or the first line of the first failing check's message.

What makes it quick enough to run often:

- a function still equal to its stub (nbgrader's checksum says so) is ``not started`` without
  running anything, and a notebook is run only up to the check of its last started function;
- exploration cells shrink under ``NBGRADER_EXECUTION`` (:mod:`fv_exercises.grading`).

What makes it safe: the notebook is read, never written (it runs from a copy in memory); a
check cell the learner edited or deleted is replaced, in that copy, by the course's own (as
nbgrader autograde restores locked cells); an unreadable notebook, a cell that raises, a dead
kernel or a time-out each become one plain line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
from nbgrader.utils import compute_checksum

from fv_exercises.course import RELEASE, ROOT, SOURCE, assignments, tool_env

_HIDDEN = re.compile(r"^\s*### (BEGIN|END) HIDDEN TESTS\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOT_IMPLEMENTED = "is not implemented yet"  # fv_exercises.checks.core.call_learner's message


# --------------------------------------------------------------------------------------------
# What the course grades in a notebook
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graded:
    """One graded function of a notebook: its solution cell's id (the function's name) and its
    check cell: id and the course's source (hidden tests removed, as in the learner release)."""

    name: str
    check_id: str
    check_source: str


def strip_hidden_tests(source: str) -> str:
    """``source`` without its hidden-test regions, markers included (as nbgrader releases it)."""
    kept, hidden = [], False
    for line in source.splitlines():
        if _HIDDEN.match(line):
            hidden = "BEGIN" in line
        elif not hidden:
            kept.append(line)
    return "\n".join(kept).strip()


def course_graded(assignment: str) -> list[Graded]:
    """The autograded functions of ``assignment`` in notebook order, from the nbgrader source
    (``solutions/``): each check cell pairs with the solution code cell just above it. Written
    answers (markdown, graded by hand) are not included."""
    nb = nbformat.read(SOURCE / assignment / f"{assignment}.ipynb", as_version=4)
    graded, last_solution = [], None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code":
            continue
        if meta.get("solution"):
            last_solution = meta["grade_id"]
        elif meta.get("grade") and last_solution is not None:
            graded.append(Graded(last_solution, meta["grade_id"], strip_hidden_tests(cell.source)))
            last_solution = None
    return graded


# --------------------------------------------------------------------------------------------
# Reading the learner's notebook, and the copy that runs
# --------------------------------------------------------------------------------------------


class Unreadable(Exception):
    """The learner's file is not a notebook we can run; the message says why, in one line."""


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``, or :class:`Unreadable` with a one-line reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Unreadable(f"not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"cannot read {path}: {exc}") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}); was it edited outside Jupyter? Undo that edit, or "
                         "restore the file from your last good copy") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns, then we validate ourselves
            nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several types for a malformed notebook
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"{path} is not a valid notebook ({first})") from None
    return nb


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def as_released(cell) -> bool:
    """True when a cell is unchanged since release: nbgrader's checksum of it matches the one
    ``generate_assignment`` stored in its metadata (what ``nbgrader validate`` compares). For a
    solution cell that means it is still the stub."""
    stored = cell.metadata.get("nbgrader", {}).get("checksum")
    return stored is not None and compute_checksum(cell) == stored


@dataclass
class Prepared:
    """The copy of a learner's notebook that runs: ``nb`` (checks restored), for each graded
    function the index of its check cell in ``nb`` (``checks``), which are stubs, and notes."""

    nb: nbformat.NotebookNode
    checks: dict[str, int]
    stubs: set[str]
    notes: dict[str, str] = field(default_factory=dict)


def prepare(learner: nbformat.NotebookNode, graded: list[Graded]) -> Prepared:
    """A copy of ``learner`` in which every graded function's check cell is the course's: an
    edited one is replaced, a deleted one inserted after the function's cell (or after the last
    cell that defines it, or at the end). ``learner`` itself is not modified."""
    nb = nbformat.from_dict(json.loads(json.dumps(learner)))
    notes, stubs = {}, set()
    for g in graded:
        solution = next((i for i, c in enumerate(nb.cells) if _grade_id(c) == g.name), None)
        if solution is not None and as_released(nb.cells[solution]):
            stubs.add(g.name)
        check = next((i for i, c in enumerate(nb.cells) if _grade_id(c) == g.check_id), None)
        if check is not None and (as_released(nb.cells[check])
                                  or nb.cells[check].source.strip() == g.check_source):
            continue
        if check is not None:
            nb.cells[check].source = g.check_source
            notes[g.name] = "its check cell was edited; the course's check ran instead"
            continue
        cell = nbformat.v4.new_code_cell(g.check_source)
        cell.metadata["nbgrader"] = {"grade": True, "grade_id": g.check_id, "solution": False}
        defines = [i for i, c in enumerate(nb.cells)
                   if c.cell_type == "code" and f"def {g.name}(" in c.source]
        where = solution if solution is not None else (defines[-1] if defines else len(nb.cells) - 1)
        nb.cells.insert(where + 1, cell)
        notes[g.name] = "its check cell is missing from your notebook; the course's check ran"
    checks = {g.name: next(i for i, c in enumerate(nb.cells) if _grade_id(c) == g.check_id)
              for g in graded}
    return Prepared(nb, checks, stubs, notes)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def course_config() -> tuple[int, int]:
    """(per-cell timeout, iopub timeout) in seconds, from the course's ``nbgrader_config.py``."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    return int(config.Execute.get("timeout", 300)), int(config.Execute.get("iopub_timeout", 30))


@dataclass
class Execution:
    """What running cells ``0..stop`` gave: each cell's error (``index -> (ename, evalue)``),
    how far it got, and a problem that ended the run early (dead kernel, no kernel), if any."""

    errors: dict[int, tuple[str, str]]
    cells_run: int  # code cells that ran
    upto: int  # every cell of the notebook before this index ran (or is not code)
    problem: str = ""


def execute(nb: nbformat.NotebookNode, stop: int, cwd: Path,
            on_cell: Callable[[int, int], None] = lambda i, n: None) -> Execution:
    """Run code cells ``0..stop`` of ``nb`` (in place: ``nb`` is the runnable copy) in a fresh
    ``python3`` kernel started in ``cwd``, with ``NBGRADER_EXECUTION=validate``; a cell that
    raises does not stop the run (as in nbgrader). ``on_cell(k, n)`` reports the k-th of n."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    timeout, iopub = course_config()
    client = NotebookClient(
        nb, timeout=timeout, iopub_timeout=iopub, kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True, resources={"metadata": {"path": str(cwd)}},
        error_on_timeout={"ename": "CellTimeoutError",
                          "evalue": f"the cell ran longer than {timeout} s and was stopped",
                          "traceback": []})
    env = tool_env() | {"NBGRADER_EXECUTION": "validate"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see README: spinning threads on shared cores
    code = [i for i in range(stop + 1) if nb.cells[i].cell_type == "code"]
    errors: dict[int, tuple[str, str]] = {}
    done = 0

    def upto() -> int:
        return code[done - 1] + 1 if done else 0

    try:
        # the kernel's own stderr (its start-up warnings) would land between our lines
        with client.setup_kernel(env=env, stderr=subprocess.DEVNULL):
            for k, index in enumerate(code):
                on_cell(k + 1, len(code))
                client.execute_cell(nb.cells[index], index)
                done = k + 1
                error = next((o for o in nb.cells[index].get("outputs", [])
                              if o.output_type == "error"), None)
                if error is not None:
                    errors[index] = (error.ename, _ANSI.sub("", error.evalue))
    except DeadKernelError:
        where = code[done] if done < len(code) else stop
        return Execution(errors, done, upto(), f"the kernel died while running cell {where + 1} "
                         "(out of memory?); nothing after it was checked")
    except Exception as exc:  # a kernel that cannot start, a lost connection: one line
        return Execution(errors, done, upto(),
                         f"could not run the notebook: {type(exc).__name__}: {first_line(str(exc))}")
    return Execution(errors, done, upto())


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One graded function: ``status`` is ``pass``, ``not started``, ``fails`` or
    ``not checked``; ``message`` the first line of what its check (or its own cell) said."""

    name: str
    status: str
    message: str = ""
    note: str = ""


@dataclass
class Report:
    """One notebook's progress: its verdicts, a notebook-wide problem or note, and the cost."""

    assignment: str
    path: Path
    verdicts: list[Verdict] = field(default_factory=list)
    problem: str = ""
    notes: list[str] = field(default_factory=list)
    cells_run: int = 0
    cells: int = 0
    seconds: float = 0.0


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (a check's message starts with what is wrong)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _verdict(g: Graded, prep: Prepared, run: Execution) -> Verdict:
    """The verdict of one graded function after ``run`` (see :class:`Verdict`)."""
    note = prep.notes.get(g.name, "")
    if g.name in prep.stubs:
        return Verdict(g.name, "not started", note=note)
    check = prep.checks[g.name]
    if check >= run.upto:
        return Verdict(g.name, "not checked", "the run stopped before its check", note)
    if check not in run.errors:
        return Verdict(g.name, "pass", note=note)
    ename, evalue = run.errors[check]
    if _NOT_IMPLEMENTED in evalue or ename == "NotImplementedError":
        return Verdict(g.name, "not started", note=note)
    solution = next((i for i, c in enumerate(prep.nb.cells) if _grade_id(c) == g.name), None)
    if solution in run.errors:  # its own cell raised: that is the first thing to fix
        own_name, own_value = run.errors[solution]
        return Verdict(g.name, "fails", f"its cell raised {own_name}: {first_line(own_value)}", note)
    if ename in ("CheckFailure", "AssertionError"):
        return Verdict(g.name, "fails", first_line(evalue), note)
    return Verdict(g.name, "fails", f"the check raised {ename}: {first_line(evalue)}", note)


def check_notebook(assignment: str, path: Path,
                   on_cell: Callable[[int, int], None] = lambda k, n: None) -> Report:
    """Progress of the learner's notebook ``path`` of ``assignment`` (never written to)."""
    start = time.perf_counter()
    report = Report(assignment, path)
    try:
        learner = read_notebook(path)
    except Unreadable as exc:
        report.problem = str(exc)
        return report
    graded = course_graded(assignment)
    prep = prepare(learner, graded)
    started = [prep.checks[g.name] for g in graded if g.name not in prep.stubs]
    report.cells = sum(c.cell_type == "code" for c in prep.nb.cells)
    run = Execution({}, 0, 0)
    if started:  # run only as far as the last started function's check
        run = execute(prep.nb, max(started), path.parent, on_cell)
        report.problem = run.problem
    report.cells_run = run.cells_run
    report.verdicts = [_verdict(g, prep, run) for g in graded]
    checks_and_solutions = set(prep.checks.values()) | {
        i for i, c in enumerate(prep.nb.cells) if c.metadata.get("nbgrader", {}).get("solution")}
    for index, (ename, evalue) in sorted(run.errors.items()):
        if index not in checks_and_solutions:  # an exploration cell raised: later ones may too
            start_of = first_line(prep.nb.cells[index].source)[:40]
            report.notes.append(f"cell {index + 1} ({start_of!r}, not graded) raised {ename}: "
                                f"{first_line(evalue)}")
            break
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------------------------
# Which notebooks, and printing
# --------------------------------------------------------------------------------------------


def pick(selectors: list[str]) -> list[str]:
    """Assignments matching ``selectors`` (``01``, ``1``, ``01_task_vectors``, ``heads``;
    default all); SystemExit naming the known ones for a selector that matches none."""
    names = assignments()
    if not selectors:
        return names
    chosen = []
    for s in selectors:
        match = [n for n in names if n == s or n.split("_", 1)[0] == s.zfill(2) or s in n]
        if not match:
            raise SystemExit(f"fv progress: no notebook {s!r}; the notebooks are "
                             + ", ".join(names))
        chosen += [m for m in match if m not in chosen]
    return sorted(chosen)


def notebook_in(folder: Path, assignment: str) -> Path:
    """The learner's copy of ``assignment`` in ``folder``: ``folder/NAME/NAME.ipynb`` (the course
    layout) or ``folder/NAME.ipynb``."""
    nested = folder / assignment / f"{assignment}.ipynb"
    flat = folder / f"{assignment}.ipynb"
    return flat if flat.is_file() and not nested.is_file() else nested


def format_report(report: Report) -> list[str]:
    """The lines printed for one notebook: a head line, one line per graded function (the
    message only for the first that fails), then notes."""
    head = report.assignment
    if report.problem and not report.verdicts:
        return [f"{head}  cannot check: {report.problem}"]
    if report.cells_run:
        head += f"  (ran {report.cells_run} of {report.cells} code cells in {report.seconds:.0f} s)"
    elif all(v.status == "not started" for v in report.verdicts):
        head += "  (nothing to run yet)"
    lines = [head]
    width = max(len(v.name) for v in report.verdicts)
    first_failure = True
    for v in report.verdicts:
        line = f"  {v.name:<{width}}  {v.status}"
        if v.status in ("fails", "not checked") and first_failure:
            line += f": {v.message}"
            first_failure = v.status != "fails"
        lines.append(line)
        if v.note:
            lines.append(f"  {'':<{width}}  ({v.note})")
    lines += [f"  note: {n}" for n in report.notes]
    if report.problem:
        lines.append(f"  problem: {report.problem}")
    return lines


def _say_running(assignment: str) -> Callable[[int, int], None]:
    """A progress callback: ``NAME  cell k of n`` on one rewritten stderr line at a terminal."""
    if not sys.stderr.isatty():
        return lambda k, n: None
    start = time.perf_counter()

    def show(k: int, n: int) -> None:
        sys.stderr.write(f"\r{assignment}  running cell {k} of {n} "
                         f"({time.perf_counter() - start:.0f} s) \x1b[K")
        sys.stderr.flush()

    return show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fv progress", description="Run your notebooks as a grader would (nothing is "
        "written into them) and say, per notebook, which graded functions pass.")
    parser.add_argument("notebooks", nargs="*", metavar="NN",
                        help="which notebooks, e.g. 01 03 (default: all)")
    parser.add_argument("--dir", type=Path, default=RELEASE, metavar="FOLDER",
                        help="folder holding your notebooks, as NN_name/NN_name.ipynb or "
                        f"NN_name.ipynb (default: {RELEASE})")
    args = parser.parse_args(argv)
    names = pick(args.notebooks)
    print(f"Your notebooks in {args.dir}: each runs in a fresh kernel, exploration cells reduced "
          "as while grading, and only as far as your last started function.", flush=True)
    reports = []
    try:
        for name in names:
            report = check_notebook(name, notebook_in(args.dir, name), _say_running(name))
            if sys.stderr.isatty():
                sys.stderr.write("\r\x1b[K")
            print("\n".join(format_report(report)), flush=True)
            reports.append(report)
    except KeyboardInterrupt:  # Ctrl-C: the kernel is shut down on the way out
        print("\ninterrupted", flush=True)
        return 130
    verdicts = [v for r in reports for v in r.verdicts]
    passed = sum(v.status == "pass" for v in verdicts)
    print(f"{passed} of {len(verdicts)} graded functions pass.", flush=True)
    return 0 if verdicts and passed == len(verdicts) and not any(r.problem for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
