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
- ``unsandboxed`` (on request): ``graded`` without the grading sandbox
  (``--SecureExecute.sandbox=False``); the table prints what the sandbox costs.

With ``--shards K`` (default 2, one per core of the course's 2-core reference machine) the batch
is split across ``K`` scratch courses autograded side by side, each kernel with one torch thread
(``OMP_NUM_THREADS=1``): the way docs/instructors.md section 7 grades a class on one machine.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

GOAL_SECONDS = 30.0
MODES = ("graded", "full", "unsandboxed")


@dataclass
class BatchTiming:
    """One autograde batch (all its shards): wall time, and the cells' seconds over its submissions."""

    assignment: str
    mode: str
    submissions: int
    seconds: float
    slowest_grade_cell: tuple[str, float]
    slowest_cell: tuple[str, float]
    lost_points: list[str]
    grade_seconds: float = 0.0  # summed over the submissions' grade cells
    grade_cells: dict[str, float] = field(default_factory=dict)  # grade_id -> mean seconds
    other_seconds: float = 0.0  # summed over the submissions' other code cells

    @property
    def per_submission(self) -> float:
        return self.seconds / self.submissions

    @property
    def grade_share(self) -> float:
        """Share of the kernels' cell time spent in grade cells."""
        total = self.grade_seconds + self.other_seconds
        return self.grade_seconds / total if total else float("nan")


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


def shard_sizes(n: int, shards: int) -> list[int]:
    """``n`` submissions over at most ``shards`` shards, as evenly as possible (no empty shard)."""
    shards = max(1, min(shards, n))
    return [n // shards + (i < n % shards) for i in range(shards)]


def grade_batch(workdir: Path, name: str, n: int, mode: str, shards: int = 1) -> BatchTiming:
    """Autograde ``n`` copies of the reference submission of ``name``, split over ``shards``
    scratch courses graded side by side (each kernel one torch thread when ``shards > 1``)."""
    from fv_exercises.autograding import (
        cell_scores, cell_seconds, nbgrader, notebook_path, reference_submission, scratch_course,
        submit)
    from fv_exercises.course import tool_env

    sizes = shard_sizes(n, shards)
    roots, students = [], []
    for i, size in enumerate(sizes):
        root = workdir / f"{name}-{mode}-shard{i}"
        scratch_course(root, [name])
        reference = reference_submission(root, name)
        names = [f"student{i}{j:03d}" for j in range(1, size + 1)]
        for student in names:
            submit(root, name, student, reference)
        roots.append(root)
        students.append(names)
    env = full_size_kernel(workdir / "full-size-kernel") if mode == "full" else tool_env()
    if len(sizes) > 1:
        # two kernels with two OpenMP threads each on two cores spin-wait for each other
        env = dict(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    extra = ["--SecureExecute.sandbox=False"] if mode == "unsandboxed" else []
    start = time.perf_counter()
    with ThreadPoolExecutor(len(roots)) as pool:
        results = list(pool.map(lambda root: nbgrader(
            root, "autograde", name, "--create", *extra, check=False, env=env), roots))
    seconds = time.perf_counter() - start
    for result in results:
        if result.returncode != 0:
            raise SystemExit(f"nbgrader autograde failed for {name} ({mode}):\n{result.stderr[-3000:]}")
    slowest_grade, slowest = ("-", 0.0), ("-", 0.0)
    grade_total = other_total = 0.0
    per_cell: dict[str, float] = {}
    lost = []
    for root, names in zip(roots, students):
        for student in names:
            scores = cell_scores(root, name, student)
            lost += [f"{student}:{cell}" for cell, (s, m) in scores.items() if s != m]
            nb = nbformat.read(notebook_path(root, "autograded", student, name), as_version=4)
            for label, secs in cell_seconds(nb):
                if secs > slowest[1]:
                    slowest = (label, secs)
                if label in scores:
                    grade_total += secs
                    per_cell[label] = per_cell.get(label, 0.0) + secs / n
                    if secs > slowest_grade[1]:
                        slowest_grade = (label, secs)
                else:
                    other_total += secs
    return BatchTiming(name, mode, n, seconds, slowest_grade, slowest, lost, grade_total,
                       per_cell, other_total)


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
          + f", modes {modes}, {args.shards} shard(s) side by side; "
          "seconds per notebook submission = batch wall time / submissions")
    rows: dict[str, dict[str, BatchTiming]] = {}
    with tempfile.TemporaryDirectory(prefix="fv-grade-bench-") as tmp:
        for name in names:
            for mode in modes:
                n = full_n if mode == "full" else args.submissions
                t = grade_batch(Path(tmp), name, n, mode, args.shards)
                rows.setdefault(name, {})[mode] = t
                print(f"  {name:24} {mode:6} {t.per_submission:6.1f} s/submission  "
                      f"slowest grade cell {t.slowest_grade_cell[0]} {t.slowest_grade_cell[1]:.1f} s, "
                      f"slowest cell {t.slowest_cell[0]} {t.slowest_cell[1]:.1f} s, "
                      f"grade cells {t.grade_share:.0%} of cell time ("
                      + ", ".join(f"{c} {v:.1f}" for c, v in sorted(
                          t.grade_cells.items(), key=lambda kv: -kv[1])[:3]) + ")"
                      + (f"  LOST POINTS: {t.lost_points[:4]}" if t.lost_points else ""),
                      flush=True)
    print()
    print(f"{'notebook':24} {'graded':>9} {'full':>9} {'full/graded':>11} {'unsandboxed':>11} "
          f"{'sandbox cost':>12}  goal <= {GOAL_SECONDS:.0f} s (graded, in the sandbox)")
    for name, by_mode in rows.items():
        g, f, u = by_mode.get("graded"), by_mode.get("full"), by_mode.get("unsandboxed")
        ratio = f"{f.per_submission / g.per_submission:10.1f}x" if g and f else f"{'-':>11}"
        cost = f"{g.per_submission / u.per_submission:11.2f}x" if g and u else f"{'-':>12}"
        ok = "" if not g else ("ok" if g.per_submission <= GOAL_SECONDS else "OVER")
        print(f"{name:24} {_secs(g):>9} {_secs(f):>9} {ratio} {_secs(u):>11} {cost}  {ok}")
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
    g.add_argument("--shards", type=int, default=2,
                   help="scratch courses autograded side by side, one torch thread each (default 2: "
                        "one per core of a 2-core machine; 1 grades the batch in one process)")
    g.add_argument("--modes", default="graded,full",
                   help="graded (NBGRADER_EXECUTION set, as nbgrader runs), full (hidden from the "
                        "kernel) and/or unsandboxed (graded, without the grading sandbox: what "
                        "the sandbox costs); default graded,full")


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
