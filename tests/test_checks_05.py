"""Notebook 05's check: the reference passes, each plausible mistake fails with its message."""

from __future__ import annotations

import re

import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.ablation import check_ablate_function_vector
from fv_exercises.reference.ablation import ablate_function_vector

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_05 import ABLATE_FUNCTION_VECTOR, ABLATE_FUNCTION_VECTOR_CORRECT


def test_reference_passes(model, capsys):
    check_ablate_function_vector(ablate_function_vector, model)
    check_ablate_function_vector(ablate_function_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


test_mistake_is_named = mistakes_are_named(check_ablate_function_vector, ABLATE_FUNCTION_VECTOR)


test_other_correct_versions_pass = correct_versions_pass(
    check_ablate_function_vector, ABLATE_FUNCTION_VECTOR_CORRECT)


def test_check_recovers_from_leaked_hook(model):
    from wrong_05 import afv_leaks_hook

    with pytest.raises(CheckFailure):
        check_ablate_function_vector(afv_leaks_hook, model)
    check_ablate_function_vector(ablate_function_vector, model)


def test_reference_leaves_fv_unchanged(model):
    from fv_exercises.checks.ablation import _CASES, case_inputs

    prompt, fv, layer, _ = case_inputs(model, _CASES[0])
    before = fv.clone()
    ablate_function_vector(model, prompt, fv, layer)
    assert torch.equal(fv, before)


def test_visible_cases_differ_in_length_layer_and_task(model):
    from fv_exercises.checks.ablation import _CASES, _HIDDEN, case_inputs
    from fv_exercises.checks.core import token_lengths

    for cases in (_CASES, _HIDDEN):
        prompts = [case_inputs(model, c)[0] for c in cases]
        assert len(set(token_lengths(model, prompts))) == 2
        assert len({c.layer(model) for c in cases}) == 2
        assert all(0 < c.layer(model) < model.cfg.n_layers - 1 for c in cases)
        fv = case_inputs(model, cases[0])[1]
        assert abs(fv.norm().item() - 1) > 0.5, "a missing normalisation must change the result"


def test_seed_expression_is_named_even_when_it_broadcasts_by_accident(model):
    """The seed's expression only fails by raising; the message explains the shapes."""
    from wrong_05 import afv_seed_expression

    with pytest.raises(CheckFailure, match=r"\[batch, pos\]"):
        check_ablate_function_vector(afv_seed_expression, model)


@pytest.mark.parametrize("family", ["gpt2"])
def test_check_runs_on_other_families(family, tmp_path_factory):
    """The reference passes, and one mistake is named, on a tiny random model of another family."""
    from fv_exercises import load_model

    from tiny_models import build_tiny_model
    from wrong_05 import afv_last_position_only

    tiny = load_model(build_tiny_model(family, tmp_path_factory.mktemp(family)))
    check_ablate_function_vector(ablate_function_vector, tiny)
    check_ablate_function_vector(ablate_function_vector, tiny, hidden=True)
    for correct in ABLATE_FUNCTION_VECTOR_CORRECT:
        check_ablate_function_vector(correct, tiny)
    with pytest.raises(CheckFailure, match=re.escape("at the final position only")):
        check_ablate_function_vector(afv_last_position_only, tiny)


def test_case_vectors_reach_every_position(model):
    """Ablating at the wrong positions must change the logits: each case's vector has a clear
    component at the first, a middle and the last position of its prompt."""
    from fv_exercises.checks.ablation import _CASES, _HIDDEN, case_inputs

    for case in _CASES + _HIDDEN:
        prompt, fv, layer, _ = case_inputs(model, case)
        name = f"blocks.{layer}.hook_resid_post"
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: n == name)
        resid = cache[name][0]
        share = ((resid @ (fv / fv.norm())) / resid.norm(dim=-1)).abs()
        assert share[[0, len(share) // 2, -1]].min() > 0.05, (case, share)
