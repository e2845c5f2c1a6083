"""Notebook 09's checks: each plausible mistake fails with its message, other correct versions pass.

The reference itself is graded (visible and hidden cases) by the nbgrader round trip.
"""

from __future__ import annotations


import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.exercises import (check_extract_function_vector,
                                           check_find_minimal_heads,
                                           check_test_function_vector)

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_09 import (EXTRACT_FUNCTION_VECTOR, EXTRACT_FUNCTION_VECTOR_CORRECT,
                      FIND_MINIMAL_HEADS, FIND_MINIMAL_HEADS_CORRECT, TEST_FUNCTION_VECTOR,
                      TEST_FUNCTION_VECTOR_CORRECT)


test_extract_function_vector_mistake_is_named = mistakes_are_named(
    check_extract_function_vector, EXTRACT_FUNCTION_VECTOR)


test_test_function_vector_mistake_is_named = mistakes_are_named(
    check_test_function_vector, TEST_FUNCTION_VECTOR)


test_find_minimal_heads_mistake_is_named = mistakes_are_named(
    check_find_minimal_heads, FIND_MINIMAL_HEADS)


test_extract_function_vector_accepts_other_correct_versions = correct_versions_pass(
    check_extract_function_vector, EXTRACT_FUNCTION_VECTOR_CORRECT)


test_test_function_vector_accepts_other_correct_versions = correct_versions_pass(
    check_test_function_vector, TEST_FUNCTION_VECTOR_CORRECT)


test_find_minimal_heads_accepts_other_correct_versions = correct_versions_pass(
    check_find_minimal_heads, FIND_MINIMAL_HEADS_CORRECT)


def test_check_recovers_from_leaked_hook(model):
    """After a learner's leaked hook, the next check of a correct function still passes."""
    from wrong_09 import tfv_correct_hooks_context, tfv_leaks_hook

    with pytest.raises(CheckFailure, match="left hooks registered"):
        check_test_function_vector(tfv_leaks_hook, model)
    assert not any(hp._forward_hooks for hp in model.hook_dict.values()), "check left hooks behind"
    check_test_function_vector(tfv_correct_hooks_context, model)


# The hidden run (what nbgrader scores) must catch every mistake the visible run catches: a padded
# batch, the decoded top-1 compared with the whole answer, the right heads in another order or as
# a dict among them.
@pytest.mark.parametrize("wrong_version", list(EXTRACT_FUNCTION_VECTOR), ids=lambda f: f.__name__)
def test_hidden_run_catches_extract_function_vector_mistake(model, wrong_version):
    with pytest.raises(CheckFailure):
        check_extract_function_vector(wrong_version, model, hidden=True)




def test_hidden_run_names_the_new_mistakes(model):
    import re

    from wrong_09 import fmh_dict, fmh_sorted_by_layer, tfv_batched_padding, tfv_whole_answer

    for check, table, wrong in ((check_test_function_vector, TEST_FUNCTION_VECTOR, tfv_batched_padding),
                                (check_test_function_vector, TEST_FUNCTION_VECTOR, tfv_whole_answer),
                                (check_find_minimal_heads, FIND_MINIMAL_HEADS, fmh_sorted_by_layer),
                                (check_find_minimal_heads, FIND_MINIMAL_HEADS, fmh_dict)):
        with pytest.raises(CheckFailure, match=re.escape(table[wrong])):
            check(wrong, model, hidden=True)





def test_hidden_test_function_vector_cases(model):
    """A hidden case has queries of different token lengths whose padded batch changes the
    accuracy, and an answer of several tokens that the vector makes the model start."""
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.exercises import _TFV_HIDDEN, _tfv_case, _tfv_case_variants

    padding_shows = whole_shows = False
    for case in _TFV_HIDDEN:
        fv, layer, prompts, answers, ref = _tfv_case(model, case)
        variants = _tfv_case_variants(model, case)
        whole_shows |= variants["whole"][1] != ref
        if mixed_lengths(model, prompts):
            tokens = model.to_tokens(prompts)  # right-padded, read at [:, -1]

            def add(resid, hook):
                resid = resid.clone()
                resid[:, -1] += fv
                return resid

            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add)])
            ids = torch.tensor([model.tokenizer.encode(" " + a, add_special_tokens=False)[0]
                                for a in answers])
            padding_shows |= (logits[:, -1].argmax(-1) == ids).sum().item() != sum(ref)
    assert padding_shows and whole_shows


def test_minimal_heads_cases_show_the_order(model):
    """In both runs (visible, hidden) a case's reference heads, in ranked order, are not sorted by
    layer: heads returned sorted show."""
    from fv_exercises.checks.exercises import _FMH_CASES, _FMH_HIDDEN, _fmh_case

    for cases in (_FMH_CASES, _FMH_HIDDEN):
        orders = [_fmh_case(model, case).expected for case in cases]
        assert any(heads != sorted(heads) for heads in orders), orders


def test_hidden_test_function_vector_case_shows_every_mistake(model):
    """The hidden run scores its cases once each: every known mistake changes the per-prompt
    outcomes of at least one hidden case."""
    from fv_exercises.checks.exercises import _TFV_HIDDEN, _tfv_case, _tfv_case_variants

    shown = set()
    for case in _TFV_HIDDEN:
        ref = _tfv_case(model, case)[4]
        shown |= {k for k, (_, outcomes) in _tfv_case_variants(model, case).items() if outcomes != ref}
    assert shown == set(_tfv_case_variants(model, _TFV_HIDDEN[0])), shown


@pytest.mark.parametrize("hidden", [False, True])
def test_minimal_heads_cases_show_every_known_mistake(model, hidden):
    """Each run's cases together: every known mistake gives a wrong answer (other heads, or the
    right ones in another order) in at least one case."""
    from fv_exercises.checks.exercises import (_FMH_CASES, _FMH_HIDDEN, _fmh_case, _fmh_variants,
                                               _ranked_order, _valid)

    shown, keys = set(), set()
    for case in _FMH_HIDDEN if hidden else _FMH_CASES:
        d = _fmh_case(model, case)
        k = len(d.expected)
        for key, _, heads in _fmh_variants(model, d.fv, d.layer, d.shares, d.prompts, d.answers,
                                           case.threshold, d.full_acc, d.ranked, k):
            keys.add(key)
            if not (_valid(heads, d.comp, k) and _ranked_order(heads, d.comp)):
                shown.add(key)
    assert shown == keys, keys - shown
