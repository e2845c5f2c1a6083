"""Notebook 08's checks: the reference passes, each plausible mistake fails with its message, and
correct implementations written differently pass."""

from __future__ import annotations


import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.sycophancy import check_steered_agreement, check_sycophancy_vector
from fv_exercises.reference.sycophancy import steered_agreement, sycophancy_vector

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_08 import (STEERED_AGREEMENT, STEERED_AGREEMENT_CORRECT, SYCOPHANCY_VECTOR,
                      SYCOPHANCY_VECTOR_CORRECT)


def test_reference_sycophancy_vector_passes(model, capsys):
    check_sycophancy_vector(sycophancy_vector, model)
    check_sycophancy_vector(sycophancy_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


def test_check_computes_the_references_vector(model):
    """The check's batched vector (one padded pass per list, stopped after the layer) is the
    reference's (one pass per prompt)."""
    from fv_exercises.checks.sycophancy import _SV_CASES, _SV_HIDDEN
    from fv_exercises.checks.task_vectors import reference_mean_task_vector

    for case in _SV_CASES + _SV_HIDDEN:
        syc, honest, layer = case.inputs(model)
        looped = sycophancy_vector(model, syc, honest, layer).float()
        batched = reference_mean_task_vector(model, syc, honest, layer)
        assert torch.allclose(looped, batched, atol=1e-4), (case, (looped - batched).abs().max())


def test_reference_steered_agreement_passes(model, capsys):
    check_steered_agreement(steered_agreement, model)
    check_steered_agreement(steered_agreement, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


test_sycophancy_vector_mistake_is_named = mistakes_are_named(check_sycophancy_vector, SYCOPHANCY_VECTOR)


test_steered_agreement_mistake_is_named = mistakes_are_named(check_steered_agreement, STEERED_AGREEMENT)


test_sycophancy_vector_accepts_other_correct_versions = correct_versions_pass(
    check_sycophancy_vector, SYCOPHANCY_VECTOR_CORRECT)


test_steered_agreement_accepts_other_correct_versions = correct_versions_pass(
    check_steered_agreement, STEERED_AGREEMENT_CORRECT)


def test_check_recovers_from_leaked_hook(model):
    """After a learner's leaked hook, the next check of a correct function still passes."""
    from wrong_08 import sa_leaks_hook

    with pytest.raises(CheckFailure):
        check_steered_agreement(sa_leaks_hook, model)
    check_steered_agreement(steered_agreement, model)


def test_visible_cases_mix_token_lengths(model):
    """Padding must show: every prompt list a visible case passes has different token lengths."""
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.sycophancy import _SA_CASES, _SV_CASES

    for case in _SV_CASES:
        syc, honest, _ = case.inputs(model)
        assert mixed_lengths(model, syc) and mixed_lengths(model, honest), case
    for case in _SA_CASES:
        assert mixed_lengths(model, case.prompts(model).texts), case


def test_steering_case_moves_the_answer(model):
    """The visible steering case must be one where steering matters, or mistakes would not show."""
    from fv_exercises.checks.sycophancy import _SA_CASES, _sa_case, _sa_variants

    check_steered_agreement(steered_agreement, model)
    case = _SA_CASES[0]
    prompts, layer, vector, expected = _sa_case(model, case)
    unsteered = next(_sa_variants(model, prompts, vector, layer, case.multiplier))[1]
    assert (expected - unsteered).abs().max() > 0.05


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_checks_pass_reference_on_tiny_models(family, tmp_path):
    """The checks (and their cases) run on other architectures: the reference passes."""
    from fv_exercises import load_model
    from tiny_models import build_tiny_model

    tiny = load_model(build_tiny_model(family, tmp_path / family))
    with torch.no_grad():
        check_sycophancy_vector(sycophancy_vector, tiny)
        check_steered_agreement(steered_agreement, tiny)


def test_hidden_run_catches_the_new_mistakes(model):
    import re

    from wrong_08 import sa_hard_agreement, sa_late_binding, sv_last_prompt_only

    with pytest.raises(CheckFailure, match=re.escape(SYCOPHANCY_VECTOR[sv_last_prompt_only])):
        check_sycophancy_vector(sv_last_prompt_only, model, hidden=True)
    for wrong in (sa_late_binding, sa_hard_agreement):
        with pytest.raises(CheckFailure, match=re.escape(STEERED_AGREEMENT[wrong])):
            check_steered_agreement(wrong, model, hidden=True)


def test_steering_cases_start_at_different_positions(model):
    """In every case the prompts start steering at different positions, so hooks that all read the
    last prompt's `steer_from` (a late-binding closure) show in the first case already."""
    from fv_exercises.checks.sycophancy import _SA_CASES, _SA_HIDDEN

    for case in _SA_CASES + _SA_HIDDEN:
        assert len(set(case.prompts(model).steer_from)) > 1, case
