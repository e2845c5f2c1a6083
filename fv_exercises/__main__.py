"""Command line: ``python -m fv_exercises <command>`` (also installed as ``fv``).

- ``run [--task antonym] [--model PATH] [--seeds N] [--notebooks 01,03]``: the main job. Reproduces the course's
  headline results on the embedded model (or another) and prints them as a table, each accuracy
  with its 95% interval, one section per notebook printed as soon as it is computed, with its
  time; ``--seeds N`` repeats it over N independent train draws (a section is printed once all
  N draws of it are done).
- ``convert [--force]``: convert the embedded model into the cache (normally automatic).
- ``table``: the per-task ICL / zero-shot accuracy table (docs/task_accuracy.md).
- ``edition [learner|instructor]``: JupyterLab's nbgrader tools (:mod:`fv_exercises.lab_edition`).
- ``progress [01 03 ...] [--dir FOLDER]``: run your own notebooks as a grader would and say which
  graded functions pass (:mod:`fv_exercises.progress`).
"""

from __future__ import annotations

import argparse
import sys
import time


def _run(args: argparse.Namespace) -> int:
    """The main job: each section printed as soon as it is computed (with --seeds N, once all N
    draws of it are), with its time; the total at the end."""
    from fv_exercises import load_model
    from fv_exercises.results import print_header, print_section, run_sections, select_sections

    start = time.time()
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    notebooks = [n.strip() for n in args.notebooks.split(",")] if args.notebooks else None
    select_sections(notebooks)  # an unknown notebook fails now, not after loading the model
    draws = "" if args.seeds == 1 else f", mean over {args.seeds} train draws"
    print_header(f"Function vectors on {args.model or 'SmolLM2-135M-Instruct'}, task "
                 f"{args.task!r}{draws}")
    model = load_model(args.model)
    loaded = time.time() - start
    for section in run_sections(model, args.task, out_dir=args.out, progress=not args.quiet,
                                seeds=range(args.seeds), notebooks=notebooks):
        print_section(section)
    print(f"total {time.time() - start:.0f} s (model loaded in {loaded:.0f} s)", flush=True)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from fv_exercises.model import convert_embedded

    start = time.time()
    path = convert_embedded(force=args.force)
    print(f"embedded model ready at {path} ({time.time() - start:.1f} s)")
    return 0


def _table(args: argparse.Namespace) -> int:
    from fv_exercises.results import write_accuracy_table

    print(write_accuracy_table(args.output))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["progress"]:  # its own options (fv_exercises.progress)
        from fv_exercises.progress import main as progress_main

        return progress_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fv_exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="reproduce the headline results for one task")
    run.add_argument("--task", default="antonym")
    run.add_argument("--model", default=None,
                     help="a local model folder or Hugging Face name (default: the embedded model)")
    run.add_argument("--seeds", type=int, default=1,
                     help="rebuild the vectors from N independent train draws; report mean and spread "
                     "(each section is printed once all N draws of it are computed)")
    run.add_argument("--out", default="fv_results", help="folder for figures")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--notebooks", default=None, metavar="01,03",
                     help="only the sections of these notebooks (default: all)")
    run.set_defaults(func=_run)
    convert = sub.add_parser("convert", help="convert the embedded GGUF into the model cache")
    convert.add_argument("--force", action="store_true", help="convert again even if cached")
    convert.set_defaults(func=_convert)
    table = sub.add_parser("table", help="write the per-task accuracy table")
    table.add_argument("--output", default="docs/task_accuracy.md")
    table.set_defaults(func=_table)
    from fv_exercises.lab_edition import add_parser as add_edition_parser

    add_edition_parser(sub)
    sub.add_parser("progress", add_help=False,
                   help="run your notebooks as a grader would (nothing written into them) and say "
                   "which graded functions pass; `progress --help` for its options")
    args = parser.parse_args(argv)
    from fv_exercises.model import ModelLoadError

    try:
        return args.func(args)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
