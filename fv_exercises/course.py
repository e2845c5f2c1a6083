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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fv_exercises.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("assignments", nargs="*", help="build only these (default: all)")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.assignments)
        print(f"regenerated {len(args.assignments or assignments())} assignment(s) into {RELEASE} "
              f"and {REFERENCE}")
        return 0
    stale = stale_files()
    if stale:
        print("stale generated files (run `python -m fv_exercises.course build`):")
        print("\n".join(f"  {s}" for s in stale))
        return 1
    print("generated files are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
