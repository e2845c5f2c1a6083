"""Course build: one source of truth per solution, and everything generated from it.

The nbgrader *source* notebooks in ``solutions/<assignment>/<assignment>.ipynb`` are the only
place a reference solution is written. From them we generate:

- ``notebooks/<assignment>/<assignment>.ipynb``: the learner release, by
  ``nbgrader generate_assignment`` (solutions replaced by stubs, hidden tests removed);
- ``fv_exercises/reference/<module>.py``: the cells tagged ``export`` (imports and reference
  functions, nbgrader markers stripped), importable so that checks compare a learner's function
  with the reference on the same model and inputs.

``python -m fv_exercises.course build`` regenerates both; ``... course check`` fails when any
generated file is stale (a test runs it).

For instructors (``docs/instructors.md``): ``... course autograde ASSIGNMENT [--student ID]``
grades submissions (:mod:`fv_exercises.autograding`; each in a sandbox, judged outside it:
:mod:`fv_exercises.judge`), ``... course similarity ASSIGNMENT`` reports how alike submissions
are (:mod:`fv_exercises.similarity`), and ``... course nbgrader ARGS`` runs any
nbgrader command with this environment's tools on ``PATH``. They work on the current directory
when it holds an ``nbgrader_config.py`` (as nbgrader does), else on this clone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "solutions"
RELEASE = ROOT / "notebooks"
REFERENCE = ROOT / "fv_exercises" / "reference"
_MARKERS = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)\s*$")


def assignments() -> list[str]:
    """Assignment names: the folders of ``solutions/`` holding a notebook of the same name."""
    return sorted(p.name for p in SOURCE.iterdir() if (p / f"{p.name}.ipynb").is_file())


def reference_module_name(assignment: str) -> str:
    """``01_task_vectors`` -> ``task_vectors`` (module names cannot start with a digit)."""
    return re.sub(r"^\d+_", "", assignment)


def export_reference(assignment: str) -> str:
    """Python source of the reference module for one assignment."""
    nb = nbformat.read(SOURCE / assignment / f"{assignment}.ipynb", as_version=4)
    parts = [
        f'"""Reference solutions for {assignment}.\n\n'
        f"GENERATED from solutions/{assignment}/{assignment}.ipynb (cells tagged `export`) by\n"
        f'`python -m fv_exercises.course build`. Do not edit: edit the notebook."""\n'
    ]
    for cell in nb.cells:
        if cell.cell_type == "code" and "export" in cell.metadata.get("tags", []):
            lines = [line for line in cell.source.splitlines() if not _MARKERS.match(line)]
            parts.append("\n".join(lines).strip() + "\n")
    return "\n\n".join(parts)


def tool_env() -> dict[str, str]:
    """Environment for nbgrader subprocesses: this interpreter's bin folder first on PATH.

    nbgrader shells out to ``alembic`` and jupyter kernels by name; inside a virtual environment
    that is not activated they would otherwise not be found (or be the system's).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _release_into(release_dir: Path, names: list[str] | None = None) -> None:
    """Run ``nbgrader generate_assignment`` for ``names`` (default: all) into ``release_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or assignments():
            cmd = [
                sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force",
                f"--CourseDirectory.root={ROOT}",
                f"--CourseDirectory.release_directory={release_dir}",
                f"--CourseDirectory.db_url=sqlite:///{tmp}/gradebook.db",
                "--log-level=WARN",
            ]
            subprocess.run(cmd, check=True, cwd=ROOT, env=tool_env())


def build(names: list[str] | None = None) -> None:
    """Regenerate the learner notebooks and the reference modules (of ``names``, default all)."""
    names = names or assignments()
    unknown = sorted(set(names) - set(assignments()))
    if unknown:
        raise SystemExit(f"unknown assignment(s) {unknown}; known: {assignments()}")
    REFERENCE.mkdir(exist_ok=True)
    for name in names:
        (REFERENCE / f"{reference_module_name(name)}.py").write_text(export_reference(name))
    _release_into(RELEASE, names)


def _normalized(path: Path) -> str:
    return json.dumps(json.loads(path.read_text()), sort_keys=True, indent=1)


def stale_files() -> list[str]:
    """Generated files that differ from what ``build()`` would write now (empty when fresh)."""
    stale = []
    for name in assignments():
        ref = REFERENCE / f"{reference_module_name(name)}.py"
        if not ref.is_file() or ref.read_text() != export_reference(name):
            stale.append(str(ref.relative_to(ROOT)))
    with tempfile.TemporaryDirectory() as tmp:
        _release_into(Path(tmp))
        for fresh in sorted(Path(tmp).rglob("*")):
            if fresh.is_dir():
                continue
            committed = RELEASE / fresh.relative_to(tmp)
            same = committed.is_file() and (
                _normalized(committed) == _normalized(fresh)
                if fresh.suffix == ".ipynb"
                else committed.read_bytes() == fresh.read_bytes()
            )
            if not same:
                stale.append(str(committed.relative_to(ROOT)))
    return stale


def _nbgrader_passthrough(args: list[str]) -> int:
    """``nbgrader ARGS`` in the course directory, with this environment's tools on PATH."""
    from fv_exercises.autograding import course_dir

    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course_dir(),
                          env=tool_env()).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["nbgrader"]:  # everything after it goes to nbgrader untouched
        return _nbgrader_passthrough(argv[1:])
    if argv[:1] == ["similarity"]:  # its own options (fv_exercises.similarity)
        from fv_exercises.similarity import main as similarity_main

        return similarity_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fv_exercises.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="regenerate the learner notebooks and reference modules")
    p.add_argument("assignments", nargs="*", help="build only these (default: all)")
    sub.add_parser("check", help="fail if a generated file is stale")
    p = sub.add_parser(
        "autograde", help="instructor: nbgrader autograde, unreadable submissions scored zero, "
        "one line per student (see docs/instructors.md)")
    p.add_argument("assignment")
    p.add_argument("--student", action="append", metavar="ID",
                   help="grade only this student (repeatable; default: every submitted/ folder)")
    p.add_argument("--force", action="store_true",
                   help="grade again submissions that were autograded before")
    p.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="per-cell limit for this run (default: nbgrader_config.py)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="grade without the bubblewrap sandbox (only submissions you trust: their "
                   "code then runs with your rights; the verdict is still computed outside them)")
    p = sub.add_parser("similarity", add_help=False,
                       help="instructor: how alike submissions' graded functions are, and which "
                       "call the course's own implementation (a report to read, never a grade)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("nbgrader", help="instructor: run `nbgrader ARGS...` with this environment's "
                   "tools on PATH (no need to activate .venv)")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.assignments)
        print(f"regenerated {len(args.assignments or assignments())} assignment(s) into {RELEASE} "
              f"and {REFERENCE}")
        return 0
    if args.command == "autograde":
        from fv_exercises.autograding import autograde, course_dir, print_outcomes

        from fv_exercises.sandbox import SandboxUnavailable, check_available

        extra = [f"--Execute.timeout={args.timeout}"] if args.timeout else []
        if args.no_sandbox:
            extra.append("--SecureExecute.sandbox=False")
        else:
            try:
                check_available()
            except SandboxUnavailable as exc:
                print(f"autograde refused: {exc}", file=sys.stderr)
                return 2
        outcomes = autograde(course_dir(), args.assignment, args.student, force=args.force,
                             extra=extra)
        print_outcomes(args.assignment, outcomes)
        # Nonzero only when nbgrader itself failed on a readable submission: look at its log.
        return 1 if any(o.problem.startswith(("nbgrader failed", "not graded")) for o in outcomes) else 0
    stale = stale_files()
    if stale:
        print("stale generated files (run `python -m fv_exercises.course build`):")
        print("\n".join(f"  {s}" for s in stale))
        return 1
    print("generated files are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
