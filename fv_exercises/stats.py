"""Uncertainty of the course's numbers: every accuracy with its interval, every comparison paired.

On 40 test queries one query is 2.5 points, and a 95% interval on 55% spans about ±15 points:
a number printed without its interval invites reading noise as a finding. Two tools:

- :func:`wilson` -- a 95% interval for an accuracy ``k / n`` (Wilson score interval: unlike the
  textbook ``p ± 1.96·sqrt(p(1-p)/n)`` it stays inside [0, 1] and behaves at 0% and 100%);
- :func:`paired_difference` -- the difference between two conditions measured on the *same*
  queries (vector vs random vector, ablated vs not), with a bootstrap interval over queries.
  Pairing matters: both conditions share each query's difficulty, so the interval of the
  difference is much narrower than two independent intervals would suggest.

Conditions are passed as per-query outcomes (``[n]`` booleans, or any per-query number), which
``fv_exercises.evaluation.top1_correct`` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Accuracy:
    """``k`` correct out of ``n``, with a 95% Wilson interval ``[lo, hi]``."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.0%} [{self.lo:.0%}, {self.hi:.0%}] (n={self.n})"

    @property
    def interval(self) -> str:
        """``"[40%, 69%]"``."""
        return f"[{self.lo:.0%}, {self.hi:.0%}]"


def wilson(k: int, n: int, z: float = Z95) -> Accuracy:
    """95% Wilson score interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        return Accuracy(k, n, float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Accuracy(k, n, max(0.0, centre - half), min(1.0, centre + half))


def accuracy(correct: Tensor | Sequence[bool]) -> Accuracy:
    """:func:`wilson` of per-query outcomes ``[n]`` (booleans or 0/1)."""
    correct = torch.as_tensor(correct).cpu()
    return wilson(int(correct.sum().item()), int(correct.numel()))


@dataclass(frozen=True)
class Difference:
    """Mean of ``a - b`` over paired queries, with a 95% bootstrap interval."""

    value: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:+.0%} [{self.lo:+.0%}, {self.hi:+.0%}] (paired, n={self.n})"

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval is on one side of 0 (a difference, not noise)."""
        return self.lo > 0 or self.hi < 0


def paired_difference(a: Tensor | Sequence[float], b: Tensor | Sequence[float],
                      n_boot: int = 2000, seed: int = 0) -> Difference:
    """Difference of means ``mean(a) - mean(b)`` over the same queries, 95% percentile bootstrap.

    ``a``, ``b``: ``[n]`` per-query outcomes of two conditions on the same queries (e.g. top-1
    correct with the vector and with a random vector). Resamples *queries* (pairs stay together).
    Deterministic for a given ``seed``.
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten().cpu()  # statistics on the CPU,
    b = torch.as_tensor(b, dtype=torch.float64).flatten().cpu()  # whatever made the numbers
    if a.shape != b.shape:
        raise ValueError(f"paired conditions need the same queries: {tuple(a.shape)} vs {tuple(b.shape)}")
    n = a.numel()
    d = a - b
    if n == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g, device="cpu")
    means = d[idx].mean(1)
    q = torch.tensor([0.025, 0.975], dtype=torch.float64, device=means.device)
    lo, hi = torch.quantile(means, q).tolist()
    return Difference(d.mean().item(), lo, hi, n)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of repeated measurements."""
    t = torch.tensor(list(values), dtype=torch.float64, device="cpu")
    return t.mean().item(), (t.std().item() if t.numel() > 1 else 0.0)
