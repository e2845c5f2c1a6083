"""Notebook 01's checks: the reference passes, each plausible mistake fails with its message."""

from __future__ import annotations

import re

import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.task_vectors import check_find_task_vector, check_mean_task_vector
from fv_exercises.reference.task_vectors import find_task_vector, mean_task_vector

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_01 import (FIND_TASK_VECTOR, FIND_TASK_VECTOR_CORRECT, MEAN_TASK_VECTOR,
                      MEAN_TASK_VECTOR_CORRECT)


def test_reference_find_task_vector_passes(model, capsys):
    check_find_task_vector(find_task_vector, model)
    check_find_task_vector(find_task_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


def test_check_computes_the_references_mean_task_vector(model):
    """The check's batched vector (one padded pass per list, stopped after the layer) is the
    reference's (one pass per prompt)."""
    from fv_exercises.checks.task_vectors import _MTV_CASES, _MTV_HIDDEN, reference_mean_task_vector

    for case in _MTV_CASES + _MTV_HIDDEN:
        ps, layer = case.mixed(), case.layer(model)
        looped = mean_task_vector(model, ps.prompts, ps.zero_shot_prompts, layer)
        batched = reference_mean_task_vector(model, ps.prompts, ps.zero_shot_prompts, layer)
        assert torch.allclose(looped.float(), batched, atol=1e-4), (case, (looped - batched).abs().max())


def test_reference_mean_task_vector_passes(model, capsys):
    check_mean_task_vector(mean_task_vector, model)
    check_mean_task_vector(mean_task_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


test_find_task_vector_mistake_is_named = mistakes_are_named(check_find_task_vector, FIND_TASK_VECTOR)


test_mean_task_vector_mistake_is_named = mistakes_are_named(check_mean_task_vector, MEAN_TASK_VECTOR)


def test_check_recovers_from_leaked_hook(model):
    """After a learner's leaked hook, the next check of a correct function still passes."""
    from wrong_01 import ftv_leaks_hook

    with pytest.raises(CheckFailure):
        check_find_task_vector(ftv_leaks_hook, model)
    check_find_task_vector(find_task_vector, model)


test_find_task_vector_accepts_other_correct_versions = correct_versions_pass(
    check_find_task_vector, FIND_TASK_VECTOR_CORRECT)


test_mean_task_vector_accepts_other_correct_versions = correct_versions_pass(
    check_mean_task_vector, MEAN_TASK_VECTOR_CORRECT)


def test_weights_edited_in_place_are_restored(model):
    from wrong_01 import ftv_edits_weights

    before = next(model.parameters()).clone()
    with pytest.raises(CheckFailure):
        check_find_task_vector(ftv_edits_weights, model)
    assert torch.equal(next(model.parameters()), before)
    check_find_task_vector(find_task_vector, model)


def test_visible_cases_mix_token_lengths(model):
    """Padding must show: every list a visible case passes has prompts of different lengths."""
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.task_vectors import _MTV_CASES

    for case in _MTV_CASES:
        ps = case.mixed()
        assert mixed_lengths(model, ps.prompts), case


def test_hidden_run_names_the_new_mistakes(model):
    """The hidden run alone names a padded batch, `zip` and the last prompt only."""
    from wrong_01 import mtv_batched_padding, mtv_last_prompt_only, mtv_zip_pairs

    for wrong in (mtv_batched_padding, mtv_zip_pairs, mtv_last_prompt_only):
        with pytest.raises(CheckFailure, match=re.escape(MEAN_TASK_VECTOR[wrong])):
            check_mean_task_vector(wrong, model, hidden=True)


def test_hidden_cases_mix_token_lengths_and_list_lengths(model):
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.task_vectors import _MTV_HIDDEN, case_lists

    for case in _MTV_HIDDEN:
        icl, zero = case_lists(case)
        assert mixed_lengths(model, icl), case
        assert len(icl) != len(zero), case
