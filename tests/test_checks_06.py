"""Notebook 06's check: the reference passes, each plausible mistake fails with its message, and
correct implementations written differently pass."""

from __future__ import annotations

import re

import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.generation import (_CASES, _HIDDEN, case_vector,
                                            check_generate_with_function_vector)
from fv_exercises.generation import at_last_position, generate_tokens
from fv_exercises.reference.generation import generate_with_function_vector

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_06 import GENERATE, GENERATE_CORRECT


def test_reference_passes(model, capsys):
    check_generate_with_function_vector(generate_with_function_vector, model)
    check_generate_with_function_vector(generate_with_function_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


test_mistake_is_named = mistakes_are_named(check_generate_with_function_vector, GENERATE)


test_accepts_other_correct_versions = correct_versions_pass(
    check_generate_with_function_vector, GENERATE_CORRECT)


def test_check_recovers_from_leaked_hook(model):
    from wrong_06 import gwfv_leaks_hook

    with pytest.raises(CheckFailure):
        check_generate_with_function_vector(gwfv_leaks_hook, model)
    check_generate_with_function_vector(generate_with_function_vector, model)


def test_cases_exercise_the_mistakes(model):
    """The cases are built so that the mistakes show: the seed's loop differs on a visible case,
    a visible and a hidden case end at EOS before max_tokens, and none reaches EOS by chance
    where the off-by-one variants must show."""
    from fv_exercises.generation import from_position

    eos = model.tokenizer.eos_token_id
    for cases in (_CASES, _HIDDEN):
        ends_at_eos, seed_differs = [], []
        for case in cases:
            fv, layer = case_vector(model, case), case.layer(model)
            tokens = model.to_tokens(case.prompt)
            full = generate_tokens(model, tokens, case.max_tokens, at_last_position(layer, fv),
                                   stop_at_eos=False)[0]
            ends_at_eos.append(eos in full)
            ours = generate_tokens(model, tokens, case.max_tokens, at_last_position(layer, fv))[0]
            seed = generate_tokens(model, tokens, case.max_tokens, at_last_position(layer, fv),
                                   use_cache=False)[0]
            seed_differs.append(ours != seed)
            uncached = generate_tokens(model, tokens, case.max_tokens,
                                       from_position(layer, fv, tokens.shape[1] - 1), use_cache=False)[0]
            assert uncached == ours, case
        assert ends_at_eos == [False, False, True], cases
        assert any(seed_differs), cases


def test_cases_have_clear_greedy_margins(model):
    """A correct implementation with another order of float operations must pick the same
    tokens: at every step of every case the top two logits are at least 0.05 apart."""
    for case in _CASES + _HIDDEN:
        fv, layer = case_vector(model, case), case.layer(model)
        tokens, cache, margins = model.to_tokens(case.prompt), None, []
        hooks = at_last_position(layer, fv)(0)
        for _ in range(case.max_tokens):
            logits, cache = model.run_with_hooks(tokens, fwd_hooks=hooks, past_key_values=cache,
                                                 return_type="logits_and_cache")
            top = logits[0, -1].topk(2).values
            margins.append((top[0] - top[1]).item())
            nxt = logits[0, -1].argmax()
            if nxt.item() == model.tokenizer.eos_token_id:
                break
            tokens = nxt.view(1, 1)
        assert min(margins) > 0.05, (case, margins)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_reference_passes_on_other_families(family, tmp_path):
    from fv_exercises import load_model
    from tiny_models import build_tiny_model

    tiny = load_model(build_tiny_model(family, tmp_path / family))
    check_generate_with_function_vector(generate_with_function_vector, tiny)
    check_generate_with_function_vector(generate_with_function_vector, tiny, hidden=True)
    with pytest.raises(CheckFailure):
        check_generate_with_function_vector(GENERATE_WRONG_ON_ANY_MODEL, tiny)


def GENERATE_WRONG_ON_ANY_MODEL(model, prompt, fv, layer, max_tokens=10):  # noqa: N802
    """Returns the prompt with the text: wrong on every model."""
    return prompt + generate_with_function_vector(model, prompt, fv, layer, max_tokens)


def test_hidden_run_catches_stripped_text(model):
    from wrong_06 import gwfv_stripped

    with pytest.raises(CheckFailure, match=re.escape(GENERATE[gwfv_stripped])):
        check_generate_with_function_vector(gwfv_stripped, model, hidden=True)
