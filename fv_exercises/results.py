"""The main job: the course's headline numbers, section by section, and the task table.

Each section's numbers come from a ``headline(ctx)`` function beside the notebook's topic code
(:mod:`fv_exercises.task_vectors` for notebooks 01-02, :mod:`fv_exercises.heads` for 03, ...).
This module only calls them in order, repeats them over seeds, and prints the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from fv_exercises.evaluation import top1_accuracy
from fv_exercises.report import N_TEST, Context, Row
from fv_exercises.stats import mean_and_spread
from fv_exercises.tasks import ICLDataset, task_names


def _sections() -> list[tuple[str, Callable[[Context], list[Row]]]]:
    """(title, headline function) of every notebook, in course order (imported lazily)."""
    from fv_exercises import (ablation, arithmetic, exercises, generation, heads, nnsight_model,
                              sycophancy, task_vectors)

    return [
        ("task vectors (notebooks 01-02)", task_vectors.headline),
        ("function-vector heads (notebook 03)", heads.headline),
        ("function-vector arithmetic (notebook 04)", arithmetic.headline),
        ("ablation (notebook 05)", ablation.headline),
        ("generation and steering (notebook 06)", generation.headline),
        ("nnsight vs TransformerLens (notebook 07)", nnsight_model.headline),
        ("sycophancy capstone (notebook 08)", sycophancy.headline),
        ("the seed's exercises: minimal heads (notebook 09)", exercises.headline),
    ]


#: Column widths of the table: those of the whole default job (``fv run``: task antonym, the
#: embedded model, all sections; the widest name is notebook 06's steering row, the widest
#: interval ``[+40%, +70%]``), fixed so that rows printed section by section, before the later
#: sections' rows exist, line up exactly as in the one table printed at the end before. A longer
#: name or interval (another model or task) widens only its own section.
NAME_WIDTH, INTERVAL_WIDTH = 90, 12

Section = tuple[str, Callable[[Context], list[Row]]]


@dataclass(frozen=True)
class SectionResult:
    """One section as printed: its header row ``-- title`` then its rows; ``seconds`` is the wall
    time it took (over all seeds)."""

    title: str
    rows: list[Row]
    seconds: float


def select_sections(notebooks: list[str] | None = None,
                    sections: list[Section] | None = None) -> list[Section]:
    """The sections of ``notebooks`` (e.g. ``["01", "03"]``; default all), in course order.
    ``sections`` replaces the course's list (tests use cheap fakes)."""
    sections = _sections() if sections is None else sections
    if not notebooks:
        return sections
    unknown = [n for n in notebooks if not any(n in t for t, _ in sections)]
    if unknown:
        raise SystemExit(f"no section for notebook(s) {unknown}; sections: "
                         + "; ".join(t for t, _ in sections))
    return [(t, f) for t, f in sections if any(n in t for n in notebooks)]


def _rng_state() -> tuple:
    """torch's global random state (CPU, and CUDA when present)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def run_sections(model, task: str = "antonym", out_dir: str | Path | None = None,
                 progress: bool = True, seeds: Sequence[int] = (0,),
                 notebooks: list[str] | None = None,
                 sections: list[Section] | None = None) -> Iterator[SectionResult]:
    """Compute the sections one at a time and yield each as soon as it is done, so the caller
    can print it while the next one computes.

    Vectors come from the train draw of each of ``seeds``, accuracies from the (fixed) test
    queries, layers and heads chosen on train queries. With several seeds, a section runs for
    every seed before it is yielded, its numeric rows merged into mean and spread
    (:func:`over_seeds`); figures are written for the first seed only. Each seed keeps its own
    torch random state across sections, so every seed's numbers are those of a run of that seed
    alone (``torch.manual_seed(seed)``, then the sections in order).
    """
    chosen = select_sections(notebooks, sections)  # an unknown notebook fails before any work
    out = Path(out_dir) if out_dir is not None else None
    contexts, states = [], []
    for i, seed in enumerate(seeds):
        contexts.append(Context(model, task, seed, out if i == 0 else None, progress))
        torch.manual_seed(seed)
        states.append(_rng_state())
    for title, section in chosen:
        start = time.perf_counter()
        runs = []
        for i, ctx in enumerate(contexts):
            _set_rng_state(states[i])
            runs.append([Row(f"-- {title}")] + section(ctx))
            states[i] = _rng_state()
        rows = runs[0] if len(runs) == 1 else over_seeds(runs)
        yield SectionResult(title, rows, time.perf_counter() - start)


def headline_results(model, task: str = "antonym", out_dir: str | Path | None = None,
                     progress: bool = True, seed: int = 0,
                     notebooks: list[str] | None = None) -> list[Row]:
    """Every section's rows for ``task`` and the train draw ``seed``, as one list (header rows
    ``-- title`` included). ``notebooks`` (e.g. ``["01", "03"]``) keeps only those sections."""
    return [row for result in run_sections(model, task, out_dir, progress, (seed,), notebooks)
            for row in result.rows]


def over_seeds(runs: list[list[Row]]) -> list[Row]:
    """Rows of several seeds merged: numeric rows become ``mean ± sd`` over seeds (range noted)."""
    merged = []
    for rows in zip(*runs):
        first = rows[0]
        numbers = [r.number for r in rows]
        if first.number is None or any(n is None for n in numbers):
            merged.append(first)
            continue
        mean, sd = mean_and_spread(numbers)
        as_pct = first.value.endswith("%")
        fmt = (lambda x: f"{x:.0%}") if as_pct else (lambda x: f"{x:.1f}")
        merged.append(Row(first.name, fmt(mean), f"sd {fmt(sd)}",
                          f"min {fmt(min(numbers))}, max {fmt(max(numbers))} over {len(rows)} seeds",
                          mean))
    return merged


def table_widths(rows: list[Row]) -> tuple[int, int]:
    """(name, interval) column widths that fit every one of ``rows``."""
    return (max(len(r.name) for r in rows),
            max([len(r.interval) for r in rows] + [8]))


def format_row(row: Row, widths: tuple[int, int]) -> str:
    """One line of the table; a header row ``-- title`` is printed as it is."""
    width, ival = widths
    if row.name.startswith("-- "):
        return row.name
    return f"{row.name:<{width}}  {row.value:>6}  {row.interval:<{ival}}  {row.note}".rstrip()


def print_header(title: str, widths: tuple[int, int] = (NAME_WIDTH, INTERVAL_WIDTH)) -> None:
    """The table's title, column names and rule (before any section is computed)."""
    width, ival = widths
    print(title, flush=True)
    print(f"{'':<{width}}  {'value':>6}  {'95% interval':<{ival}}  note", flush=True)
    print("-" * (width + ival + 30), flush=True)


def print_section(result: SectionResult,
                  widths: tuple[int, int] = (NAME_WIDTH, INTERVAL_WIDTH)) -> None:
    """A section's rows, the time it took in its header row's note column. Flushed: when stdout is a
    pipe or a file the rows must not wait in a buffer for the rest of the job."""
    widths = tuple(max(w, f) for w, f in zip(widths, table_widths(result.rows[1:] or result.rows)))
    header, *rows = result.rows
    note_column = widths[0] + widths[1] + 12  # name, value (6), interval, three 2-space gaps
    print(f"{format_row(header, widths):<{note_column}}took {result.seconds:.0f} s", flush=True)
    for row in rows:
        print(format_row(row, widths), flush=True)


def print_table(rows: list[Row], title: str) -> None:
    """Print rows as one aligned plain-text table: name, value, interval, note."""
    widths = table_widths(rows)
    print_header(title, widths)
    for r in rows:
        print(format_row(r, widths))


def accuracy_table(model, n_test: int = N_TEST) -> list[tuple[str, float, float, float]]:
    """(task, few-shot, shuffled-label, zero-shot) top-1 accuracy on ``n_test`` test prompts."""
    table = []
    for task in task_names():
        test = ICLDataset.build(task, n_test, seed=1, split="test")
        table.append((task,
                      top1_accuracy(model, test.prompts, test.answers),
                      top1_accuracy(model, test.corrupted_prompts, test.answers),
                      top1_accuracy(model, test.zero_shot_prompts, test.answers)))
    return table


def write_accuracy_table(output: str | Path = "docs/task_accuracy.md") -> str:
    """Measure the table on the embedded model and write it as Markdown; return the text."""
    from fv_exercises import load_model

    rows = accuracy_table(load_model())
    lines = [
        "# Task accuracy on the embedded model",
        "",
        "Generated by `python -m fv_exercises table` (SmolLM2-135M-Instruct, float32, CPU).",
        f"Top-1 accuracy of the answer's first token on {N_TEST} test prompts per task",
        "(5 demonstrations from train pairs, queries from test pairs, seed 1, no BOS token).",
        "`tests/test_tasks.py` keeps few-shot accuracy above a floor chosen from this table.",
        "",
        "| task | few-shot | shuffled labels | zero-shot |",
        "|---|---:|---:|---:|",
    ] + [f"| {t} | {a:.0%} | {s:.0%} | {z:.0%} |" for t, a, s, z in rows]
    text = "\n".join(lines) + "\n"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    return text
