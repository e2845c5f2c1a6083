"""Grading benchmark: what autograding a class costs, with and without the grading reduction.

    python -m fv_exercises.bench grade                          # every notebook, 5 submissions
    python -m fv_exercises.bench grade --assignments 01_task_vectors --submissions 5
    python -m fv_exercises.bench grade --submissions 5 --full-submissions 1   # about 45 min

For each assignment it builds a scratch course (its own gradebook, in a temporary folder), places
``--submissions`` copies of the reference solution in ``submitted/`` and runs the instructor's
``nbgrader autograde`` on the batch, twice:

- ``graded``: as an instructor runs it. nbgrader sets ``NBGRADER_EXECUTION`` and exploration
  cells shrink their work (:func:`fv_exercises.grading.size`); grade cells run in full.
- ``full``: the same command, but the kernel sees ``NBGRADER_EXECUTION=""``: a ``python3``
  kernelspec whose ``env`` blanks the variable is put first on ``JUPYTER_PATH`` for this run only.
  Every cell then does its full work, as when a learner runs the notebook; nbgrader's own work
  (sanitising, the gradebook, writing files) is the same in both.

It prints the seconds per notebook submission (batch wall time / submissions) in each mode, the
slowest grade cell and the slowest cell (from nbclient's per-cell timing in the autograded
notebooks: what ``Execute.timeout`` in ``nbgrader_config.py`` must exceed), and checks that every
submission scored full marks in both modes (a reduction must never change what is graded).
Goal (issue 9): at most 30 s per notebook submission on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

GOAL_SECONDS = 30.0
MODES = ("graded", "full")


@dataclass
class BatchTiming:
    """One autograde batch: wall time, and the slowest cells over its submissions."""

    assignment: str
    mode: str
    submissions: int
    seconds: float
    slowest_grade_cell: tuple[str, float]
    slowest_cell: tuple[str, float]
    lost_points: list[str]

    @property
    def per_submission(self) -> float:
        return self.seconds / self.submissions


def full_size_kernel(folder: Path) -> dict[str, str]:
    """Environment for nbgrader whose ``python3`` kernel sees ``NBGRADER_EXECUTION=""``.

    Writes ``folder/kernels/python3/kernel.json`` (this interpreter, ``env`` blanking the
    variable) and puts ``folder`` first on ``JUPYTER_PATH``, where kernelspecs are looked up first.
    """
    from fv_exercises.course import tool_env

    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (full size while grading)", "language": "python",
        "env": {"NBGRADER_EXECUTION": ""},
    }))
    env = tool_env()
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(folder), env.get("JUPYTER_PATH")]))
    return env


def grade_batch(workdir: Path, name: str, n: int, mode: str) -> BatchTiming:
    """Autograde ``n`` copies of the reference submission of ``name`` in a scratch course."""
    from fv_exercises.autograding import (
        cell_scores, cell_seconds, nbgrader, notebook_path, reference_submission, scratch_course,
        submit)
    from fv_exercises.course import tool_env

    root = workdir / f"{name}-{mode}"
    scratch_course(root, [name])
    reference = reference_submission(root, name)
    students = [f"student{i:03d}" for i in range(1, n + 1)]
    for student in students:
        submit(root, name, student, reference)
    env = full_size_kernel(workdir / "full-size-kernel") if mode == "full" else tool_env()
    start = time.perf_counter()
    result = nbgrader(root, "autograde", name, "--create", check=False, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"nbgrader autograde failed for {name} ({mode}):\n{result.stderr[-3000:]}")
    grade_ids = set()
    slowest_grade, slowest = ("-", 0.0), ("-", 0.0)
    lost = []
    for student in students:
        scores = cell_scores(root, name, student)
        grade_ids |= set(scores)
        lost += [f"{student}:{cell}" for cell, (s, m) in scores.items() if s != m]
        nb = nbformat.read(notebook_path(root, "autograded", student, name), as_version=4)
        for label, secs in cell_seconds(nb):
            if secs > slowest[1]:
                slowest = (label, secs)
            if label in grade_ids and secs > slowest_grade[1]:
                slowest_grade = (label, secs)
    return BatchTiming(name, mode, n, seconds, slowest_grade, slowest, lost)


def bench_grade(args: argparse.Namespace) -> None:
    """Autograde a batch of reference submissions per notebook: seconds per submission, with and
    without the grading reduction (``NBGRADER_EXECUTION``)."""
    from fv_exercises.course import assignments

    names = args.assignments or assignments()
    unknown = sorted(set(names) - set(assignments()))
    if unknown:
        raise SystemExit(f"unknown assignment(s) {unknown}; known: {assignments()}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - set(MODES):
        raise SystemExit(f"--modes takes {','.join(MODES)}")
    full_n = args.full_submissions or args.submissions
    print(f"[grade] {len(names)} notebook(s) x {args.submissions} submissions"
          + (f" ({full_n} in full)" if "full" in modes and full_n != args.submissions else "")
          + f", modes {modes}; "
          "seconds per notebook submission = batch wall time / submissions")
    rows: dict[str, dict[str, BatchTiming]] = {}
    with tempfile.TemporaryDirectory(prefix="fv-grade-bench-") as tmp:
        for name in names:
            for mode in modes:
                n = full_n if mode == "full" else args.submissions
                t = grade_batch(Path(tmp), name, n, mode)
                rows.setdefault(name, {})[mode] = t
                print(f"  {name:24} {mode:6} {t.per_submission:6.1f} s/submission  "
                      f"slowest grade cell {t.slowest_grade_cell[0]} {t.slowest_grade_cell[1]:.1f} s, "
                      f"slowest cell {t.slowest_cell[0]} {t.slowest_cell[1]:.1f} s"
                      + (f"  LOST POINTS: {t.lost_points[:4]}" if t.lost_points else ""),
                      flush=True)
    print()
    print(f"{'notebook':24} {'graded':>9} {'full':>9} {'full/graded':>11}  goal <= {GOAL_SECONDS:.0f} s")
    for name, by_mode in rows.items():
        g, f = by_mode.get("graded"), by_mode.get("full")
        ratio = f"{f.per_submission / g.per_submission:10.1f}x" if g and f else f"{'-':>11}"
        ok = "" if not g else ("ok" if g.per_submission <= GOAL_SECONDS else "OVER")
        print(f"{name:24} {_secs(g):>9} {_secs(f):>9} {ratio}  {ok}")
    timings = [t for by_mode in rows.values() for t in by_mode.values()]
    worst = max(timings, key=lambda t: t.slowest_grade_cell[1])
    print(f"slowest grade cell: {worst.assignment} {worst.slowest_grade_cell[0]} "
          f"{worst.slowest_grade_cell[1]:.1f} s ({worst.mode})")
    if any(t.lost_points for t in timings):
        raise SystemExit("some reference submissions lost points: see LOST POINTS above")


def _secs(t: BatchTiming | None) -> str:
    return "-" if t is None else f"{t.per_submission:.1f} s"


def add_grade_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("grade")
    g.add_argument("--assignments", nargs="+", metavar="NAME", default=None,
                   help="notebooks to grade (default: all)")
    g.add_argument("--submissions", type=int, default=5, help="submissions per batch (default 5)")
    g.add_argument("--full-submissions", type=int, default=None, metavar="N",
                   help="submissions per batch in the full mode (default: --submissions; the full "
                        "mode takes 2-5x longer)")
    g.add_argument("--modes", default="graded,full",
                   help="graded (NBGRADER_EXECUTION set, as nbgrader runs) and/or full (hidden "
                        "from the kernel); default both")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (also ``python -m fv_exercises.bench grade``)."""
    parser = argparse.ArgumentParser(prog="python -m fv_exercises.grading_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grade_options(parser)
    bench_grade(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
