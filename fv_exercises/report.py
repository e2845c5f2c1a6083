"""Rows of the main job's table, and the context every section computes them from.

Each notebook's topic module has a ``headline(ctx) -> list[Row]`` function next to its code
(task vectors in :mod:`fv_exercises.task_vectors`, heads in :mod:`fv_exercises.heads`, ...);
:mod:`fv_exercises.results` only calls them in order and prints the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fv_exercises.stats import Accuracy, Difference
from fv_exercises.tasks import ICLDataset

N_TRAIN, N_TEST = 32, 40


@dataclass(frozen=True)
class Row:
    """One line of the results table: ``name  value  interval  note``.

    ``number`` is the value as a float, for ``fv run --seeds N`` (mean and spread over draws);
    ``None`` for rows that are not numbers (a layer list, a figure's path).
    """

    name: str
    value: str = ""
    interval: str = ""
    note: str = ""
    number: float | None = None


def accuracy_row(name: str, acc: Accuracy, note: str = "") -> Row:
    """A row for an accuracy with its 95% Wilson interval."""
    return Row(name, f"{acc.value:.0%}", acc.interval, note, acc.value)


def difference_row(name: str, diff: Difference, note: str = "") -> Row:
    """A row for a paired difference between two conditions, with its bootstrap interval."""
    return Row(name, f"{diff.value:+.0%}", f"[{diff.lo:+.0%}, {diff.hi:+.0%}]", note, diff.value)


@dataclass
class Context:
    """What every section of the main job works from.

    ``seed`` selects the draw of **train** prompts the vectors are built from (0 is the course's
    default); the test prompts are the same for every seed, so draws are compared on equal terms.
    """

    model: object
    task: str = "antonym"
    seed: int = 0
    out_dir: Path | None = None
    progress: bool = False

    @cached_property
    def train(self) -> ICLDataset:
        return ICLDataset.build(self.task, N_TRAIN, seed=self.seed, split="train")

    @cached_property
    def test(self) -> ICLDataset:
        return ICLDataset.build(self.task, N_TEST, seed=1, split="test")

    def figure_path(self, name: str) -> Path | None:
        """``out_dir / f"{task}_{name}.png"`` (folder created), or None when figures are off."""
        if self.out_dir is None:
            return None
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out / f"{self.task}_{name}.png"
