"""Intervals for accuracies and paired differences; claims; grading-time sizes; seed merging."""

from __future__ import annotations

import math

import pytest
import torch

from fv_exercises import claims, grading
from fv_exercises.report import Row
from fv_exercises.results import over_seeds
from fv_exercises.stats import accuracy, mean_and_spread, paired_difference, wilson


def test_wilson_matches_known_values():
    # reference values from the closed form (Wilson 1927), e.g. statsmodels' proportion_confint
    acc = wilson(22, 40)
    assert math.isclose(acc.lo, 0.3982, abs_tol=5e-4) and math.isclose(acc.hi, 0.6928, abs_tol=5e-4)
    zero = wilson(0, 40)
    assert zero.lo == 0.0 and math.isclose(zero.hi, 0.0876, abs_tol=5e-4)
    full = wilson(40, 40)
    assert full.hi == 1.0 and math.isclose(full.lo, 0.9124, abs_tol=5e-4)
    assert str(acc) == "55% [40%, 69%] (n=40)"


def test_accuracy_of_per_query_outcomes():
    acc = accuracy(torch.tensor([True, False, True, True]))
    assert (acc.k, acc.n, acc.value) == (3, 4, 0.75)
    assert acc.lo < 0.75 < acc.hi


def test_paired_difference_is_deterministic_and_paired():
    a = torch.tensor([1, 1, 1, 0, 1, 1, 0, 1, 1, 1] * 4, dtype=torch.bool)
    b = torch.zeros(40, dtype=torch.bool)
    d = paired_difference(a, b)
    assert d.value == pytest.approx(0.8) and d.n == 40
    assert 0.6 < d.lo < 0.8 < d.hi <= 0.95 and d.excludes_zero
    assert paired_difference(a, b) == d  # same seed, same interval
    same = paired_difference(a, a)
    assert same.value == same.lo == same.hi == 0.0 and not same.excludes_zero
    with pytest.raises(ValueError, match="same queries"):
        paired_difference(a, b[:10])


def test_mean_and_spread():
    assert mean_and_spread([0.5]) == (0.5, 0.0)
    mean, sd = mean_and_spread([0.4, 0.6])
    assert mean == pytest.approx(0.5) and sd == pytest.approx(0.1414, abs=1e-4)


def test_claim_prints_and_records(capsys, monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert claims.claim("vectors help", True, "55% vs 0%")
    assert not claims.claim("random vectors help", False, "0%")
    out = capsys.readouterr().out.splitlines()
    assert out == ["[claim holds] vectors help  (55% vs 0%)", "[claim FAILS] random vectors help  (0%)"]
    assert claims.RECORD[-1].statement == "random vectors help" and not claims.RECORD[-1].holds


def test_claims_and_sizes_while_grading(capsys, monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert grading.grading_run() and grading.size(32, 4) == 4
    claims.claim("x", False)
    assert capsys.readouterr().out.startswith("[claim not assessed] x")
    monkeypatch.delenv("NBGRADER_EXECUTION")
    assert grading.size(32, 4) == 32


def test_over_seeds_merges_numeric_rows():
    runs = [[Row("-- s"), Row("acc", "50%", "[1, 2]", "", 0.5), Row("fig", "", "", "a.png")],
            [Row("-- s"), Row("acc", "70%", "[1, 2]", "", 0.7), Row("fig", "", "", "b.png")]]
    merged = over_seeds(runs)
    assert [r.name for r in merged] == ["-- s", "acc", "fig"]
    assert merged[1].value == "60%" and merged[1].interval == "sd 14%"
    assert "over 2 seeds" in merged[1].note and merged[1].number == pytest.approx(0.6)
