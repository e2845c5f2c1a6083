"""Notebook 03's check: the reference passes, each plausible mistake fails with its message."""

from __future__ import annotations

import re

import pytest

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.heads import check_find_task_heads
from fv_exercises.reference.heads import find_task_heads

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_03 import FIND_TASK_HEADS, FIND_TASK_HEADS_CORRECT


def test_reference_find_task_heads_passes(model, capsys):
    check_find_task_heads(find_task_heads, model)
    assert "matches the reference" in capsys.readouterr().out
    check_find_task_heads(find_task_heads, model, hidden=True)


def test_check_computes_the_references_effects(model):
    """The check's effects (the exact last-position scan) are the reference's (a forward pass per
    head and prompt), well inside the check's 1e-4 tolerance."""
    from fv_exercises.checks.heads import _CASES, _HIDDEN, _case

    for case in _CASES + _HIDDEN:
        layers, mean_z, prompts, answers, scanned = _case(model, case)
        looped = dict(find_task_heads(model, mean_z, prompts, answers, layers))
        assert set(looped) == set(scanned)
        worst = max(abs(looped[h] - scanned[h]) for h in looped)
        assert worst < 1e-5, (case, worst)


test_find_task_heads_mistake_is_named = mistakes_are_named(check_find_task_heads, FIND_TASK_HEADS)


test_other_correct_versions_pass = correct_versions_pass(check_find_task_heads, FIND_TASK_HEADS_CORRECT)


def test_visible_cases_scan_more_heads_than_a_top_10(model):
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.heads import _CASES, _layers

    for case in _CASES:
        assert len(_layers(model, case)) * model.cfg.n_heads > 10
        assert mixed_lengths(model, case.mixed().corrupted_prompts), case


def test_hidden_run_names_padding_and_one_baseline(model):
    from wrong_03 import fth_batched_padding, fth_one_baseline

    for wrong in (fth_batched_padding, fth_one_baseline):
        with pytest.raises(CheckFailure, match=re.escape(FIND_TASK_HEADS[wrong])):
            check_find_task_heads(wrong, model, hidden=True)


def test_hidden_case_has_prompts_of_different_lengths(model):
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.heads import _HIDDEN, _layers

    for case in _HIDDEN:
        assert case.n_prompts >= 2 and mixed_lengths(model, case.mixed().corrupted_prompts), case
        assert len(_layers(model, case)) * model.cfg.n_heads > 10
