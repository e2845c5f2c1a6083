"""Notebook 04's checks: the reference passes, each plausible mistake fails with its message, and
correct implementations written differently pass."""

from __future__ import annotations

import re

import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.arithmetic import check_average_function_vector, check_decode_vector
from fv_exercises.reference.arithmetic import average_function_vector, decode_vector

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_04 import (AVERAGE_FUNCTION_VECTOR, AVERAGE_FUNCTION_VECTOR_CORRECT, DECODE_VECTOR,
                      DECODE_VECTOR_CORRECT)


@pytest.fixture(autouse=True)
def _fresh_learner_state():
    """Wrong versions that keep state in a module global start clean in every test."""
    import wrong_04

    wrong_04._CACHE.clear()
    wrong_04._SEEN.clear()


def test_reference_average_function_vector_passes(model, capsys):
    check_average_function_vector(average_function_vector, model)
    check_average_function_vector(average_function_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


def test_reference_decode_vector_passes(model, capsys):
    check_decode_vector(decode_vector, model)
    check_decode_vector(decode_vector, model, hidden=True)
    assert "matches the reference" in capsys.readouterr().out


test_average_function_vector_mistake_is_named = mistakes_are_named(
    check_average_function_vector, AVERAGE_FUNCTION_VECTOR)


test_decode_vector_mistake_is_named = mistakes_are_named(check_decode_vector, DECODE_VECTOR)


test_average_function_vector_accepts_other_correct_versions = correct_versions_pass(
    check_average_function_vector, AVERAGE_FUNCTION_VECTOR_CORRECT)


test_decode_vector_accepts_other_correct_versions = correct_versions_pass(
    check_decode_vector, DECODE_VECTOR_CORRECT)


def test_enough_named_mistakes():
    assert len(AVERAGE_FUNCTION_VECTOR) >= 8 and len(DECODE_VECTOR) >= 8


def test_check_recovers_from_leaked_hook(model):
    """After a learner's leaked hook, the next check of a correct function still passes."""
    from wrong_04 import afv_leaks_hook

    with pytest.raises(CheckFailure):
        check_average_function_vector(afv_leaks_hook, model)
    check_average_function_vector(average_function_vector, model)


def test_visible_cases_mix_token_lengths_and_layers(model):
    """Padding must show (prompts of different lengths), and so must a head index or layer mix-up
    (several heads, two layers, one layer with two heads)."""
    from fv_exercises.checks.arithmetic import _AFV_CASES, case_heads
    from fv_exercises.checks.core import mixed_lengths

    for case, fractions in _AFV_CASES:
        assert mixed_lengths(model, case.mixed().prompts), case
        heads = case_heads(model, fractions)
        assert len(set(heads)) == len(heads) and len({l for l, _ in heads}) == 2, heads


def test_decode_check_tolerates_near_ties(model):
    """Two tokens whose logits tie within float rounding may come in either order."""
    from fv_exercises.checks.arithmetic import _equivalent, _logits, _strings

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    logits = _logits(model, vector)
    top = logits.topk(4).indices
    names = _strings(model, top)
    assert _equivalent(names, model, logits, 4, tol=1e-4)
    swapped = [names[1], names[0]] + names[2:]
    gap = (logits[top[0]] - logits[top[1]]).item()
    assert not _equivalent(swapped, model, logits, 4, tol=gap / 2)
    assert _equivalent(swapped, model, logits, 4, tol=gap * 2)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_checks_pass_reference_on_other_families(family, tmp_path):
    """Tiny random models: the checks run, the reference passes, and a mistake that changes the
    answer on that family is named. GPT-2's LayerNorm subtracts the mean, so skipping the final
    norm changes the ranking; a fresh Qwen2 RMSNorm has unit weights (skipping it changes nothing
    there) but untied embeddings, so decoding with ``W_E`` is a visible mistake."""
    from tiny_models import build_tiny_model

    from fv_exercises import load_model
    from wrong_04 import afv_mean_heads, dv_embedding, dv_no_norm

    tiny = load_model(build_tiny_model(family, tmp_path / family))
    check_average_function_vector(average_function_vector, tiny)
    check_decode_vector(decode_vector, tiny)
    with pytest.raises(CheckFailure, match="MEAN over heads"):
        check_average_function_vector(afv_mean_heads, tiny)
    wrong, message = (dv_no_norm, "final norm") if family == "gpt2" else (dv_embedding, "`W_E`")
    with pytest.raises(CheckFailure, match=re.escape(message)):
        check_decode_vector(wrong, tiny)


def test_hidden_run_catches_the_new_mistakes(model):
    """One head per layer (`dict(heads)`) and the k ids decoded together and split fail the hidden
    run too, with their own messages."""
    from wrong_04 import afv_dict_heads, dv_decode_split

    with pytest.raises(CheckFailure, match=re.escape(AVERAGE_FUNCTION_VECTOR[afv_dict_heads])):
        check_average_function_vector(afv_dict_heads, model, hidden=True)
    with pytest.raises(CheckFailure, match=re.escape(DECODE_VECTOR[dv_decode_split])):
        check_decode_vector(dv_decode_split, model, hidden=True)


def test_split_and_stripped_are_told_apart(model):
    """On the first visible case the two give the same tokens (every token is a word with its
    leading space); the check tells them apart on the next case and names only the right one."""
    from wrong_04 import dv_decode_split, dv_stripped

    with pytest.raises(CheckFailure) as split:
        check_decode_vector(dv_decode_split, model)
    with pytest.raises(CheckFailure) as stripped:
        check_decode_vector(dv_stripped, model)
    assert "stripped" not in str(split.value) and "TOGETHER" not in str(stripped.value)
