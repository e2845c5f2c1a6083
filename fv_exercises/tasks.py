"""In-context-learning tasks and the prompts built from them.

Every task is a list of (input, output) word pairs written for this course and stored in
``fv_exercises/data/tasks/<name>.json``. A prompt shows ``n_shots`` demonstrations and then a
query, in the format the embedded model handles best (measured: see docs/task_accuracy.md)::

    Q: hot
    A: cold

    Q: big
    A: small

    Q: happy
    A:

The correct continuation is `` sad`` with a leading space. **Answers are scored on their first
token** (the first token of ``" " + answer``): one forward pass per prompt, no generation. A few
answers share a first token with a wrong word (``" cold"`` vs ``" colder"``); the score is the
probability that the model *starts* the right answer, which is what a function vector steers.

Three kinds of prompt come from the same (demonstrations, query) draw:

- clean few-shot prompts (``prompts``),
- shuffled-label prompts (``corrupted_prompts``): same demonstration inputs and query, but the
  demonstration outputs are permuted so that no input keeps its own output; the format is intact,
  the input-output relation is gone,
- zero-shot prompts (``zero_shot_prompts``): the query alone, ``"Q: happy\\nA:"``.

Each task's pairs are split once, by a fixed seed, into train and test pairs. A dataset built
with ``split="train"`` draws demonstrations and queries from train pairs; ``split="test"`` draws
queries from test pairs (demonstrations still from train pairs). A vector built from a train
dataset is therefore never evaluated on a query it was built from.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, Sequence

DEMO_TEMPLATE = "Q: {x}\nA: {y}\n\n"
QUERY_TEMPLATE = "Q: {x}\nA:"
TEST_FRACTION = 0.3
_SPLIT_SEED = 1234  # fixed forever: changing it would move pairs between train and test

Pair = tuple[str, str]


@dataclass(frozen=True)
class Task:
    """A named list of (input, output) pairs."""

    name: str
    description: str
    pairs: tuple[Pair, ...]

    def split(self) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
        """Deterministic (train, test) split of the pairs; test holds ``TEST_FRACTION`` of them."""
        order = list(range(len(self.pairs)))
        random.Random(f"{_SPLIT_SEED}-{self.name}").shuffle(order)
        n_test = max(1, round(TEST_FRACTION * len(order)))
        test = tuple(self.pairs[i] for i in sorted(order[:n_test]))
        train = tuple(self.pairs[i] for i in sorted(order[n_test:]))
        return train, test


def task_names() -> list[str]:
    """Names of all tasks shipped with the course, sorted."""
    folder = resources.files("fv_exercises") / "data" / "tasks"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=None)
def load_task(name: str) -> Task:
    """Load a task by name (see ``task_names()``)."""
    path = resources.files("fv_exercises") / "data" / "tasks" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown task {name!r}. Available tasks: {', '.join(task_names())}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    pairs = tuple((str(x), str(y)) for x, y in raw["pairs"])
    return Task(name=raw["name"], description=raw["description"], pairs=pairs)


def format_prompt(demos: Sequence[Pair], query: str) -> str:
    """Few-shot prompt: the demonstrations, then ``Q: query\\nA:`` (no trailing space)."""
    return "".join(DEMO_TEMPLATE.format(x=x, y=y) for x, y in demos) + QUERY_TEMPLATE.format(x=query)


def _derangement(n: int, rng: random.Random) -> list[int]:
    """A permutation of range(n) with no fixed point (identity for n < 2)."""
    if n < 2:
        return list(range(n))
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


@dataclass(frozen=True)
class ICLDataset:
    """Parallel tuples of prompts for one task; index ``i`` of every field is the same draw."""

    task: str
    n_shots: int
    seed: int
    split: str
    queries: tuple[str, ...]
    answers: tuple[str, ...]
    demos: tuple[tuple[Pair, ...], ...]
    prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    zero_shot_prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.queries)

    @classmethod
    def build(
        cls,
        task: str | Task,
        n_prompts: int,
        n_shots: int = 5,
        seed: int = 0,
        split: Literal["train", "test"] = "train",
    ) -> "ICLDataset":
        """Draw ``n_prompts`` prompts deterministically from ``seed``.

        Queries are distinct while the split has enough pairs (then they repeat, reshuffled).
        Demonstrations never contain the query itself.
        """
        task = load_task(task) if isinstance(task, str) else task
        train, test = task.split()
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        query_pool = list(train if split == "train" else test)
        if len(train) <= n_shots:
            raise ValueError(f"task {task.name!r} has too few train pairs for {n_shots} shots")
        rng = random.Random(f"{task.name}-{split}-{n_shots}-{seed}")
        queries: list[Pair] = []
        while len(queries) < n_prompts:
            batch = query_pool[:]
            rng.shuffle(batch)
            queries.extend(batch[: n_prompts - len(queries)])

        demos_all, prompts, corrupted, zero_shot = [], [], [], []
        for x, _ in queries:
            demos = tuple(rng.sample([p for p in train if p[0] != x], n_shots))
            perm = _derangement(n_shots, rng)
            shuffled = tuple((demos[i][0], demos[perm[i]][1]) for i in range(n_shots))
            demos_all.append(demos)
            prompts.append(format_prompt(demos, x))
            corrupted.append(format_prompt(shuffled, x))
            zero_shot.append(QUERY_TEMPLATE.format(x=x))
        return cls(
            task=task.name,
            n_shots=n_shots,
            seed=seed,
            split=split,
            queries=tuple(q for q, _ in queries),
            answers=tuple(a for _, a in queries),
            demos=tuple(demos_all),
            prompts=tuple(prompts),
            corrupted_prompts=tuple(corrupted),
            zero_shot_prompts=tuple(zero_shot),
        )
