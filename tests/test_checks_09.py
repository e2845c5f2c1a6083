"""Notebook 09's checks: each plausible mistake fails with its message, other correct versions pass.

The reference itself is graded (visible and hidden cases) by the nbgrader round trip.
"""

from __future__ import annotations

import re

import pytest

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.exercises import (check_extract_function_vector,
                                           check_find_minimal_heads,
                                           check_test_function_vector)

from wrong_09 import (EXTRACT_FUNCTION_VECTOR, EXTRACT_FUNCTION_VECTOR_CORRECT,
                      FIND_MINIMAL_HEADS, FIND_MINIMAL_HEADS_CORRECT, TEST_FUNCTION_VECTOR,
                      TEST_FUNCTION_VECTOR_CORRECT)


@pytest.mark.parametrize("wrong", list(EXTRACT_FUNCTION_VECTOR), ids=lambda f: f.__name__)
def test_extract_function_vector_mistake_is_named(model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(EXTRACT_FUNCTION_VECTOR[wrong])):
        check_extract_function_vector(wrong, model)


@pytest.mark.parametrize("wrong", list(TEST_FUNCTION_VECTOR), ids=lambda f: f.__name__)
def test_test_function_vector_mistake_is_named(model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(TEST_FUNCTION_VECTOR[wrong])):
        check_test_function_vector(wrong, model)


@pytest.mark.parametrize("wrong", list(FIND_MINIMAL_HEADS), ids=lambda f: f.__name__)
def test_find_minimal_heads_mistake_is_named(model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(FIND_MINIMAL_HEADS[wrong])):
        check_find_minimal_heads(wrong, model)


@pytest.mark.parametrize("correct", EXTRACT_FUNCTION_VECTOR_CORRECT, ids=lambda f: f.__name__)
def test_extract_function_vector_accepts_other_correct_versions(model, correct):
    check_extract_function_vector(correct, model)


@pytest.mark.parametrize("correct", TEST_FUNCTION_VECTOR_CORRECT, ids=lambda f: f.__name__)
def test_test_function_vector_accepts_other_correct_versions(model, correct):
    check_test_function_vector(correct, model)


@pytest.mark.parametrize("correct", FIND_MINIMAL_HEADS_CORRECT, ids=lambda f: f.__name__)
def test_find_minimal_heads_accepts_other_correct_versions(model, correct):
    check_find_minimal_heads(correct, model)


def test_check_recovers_from_leaked_hook(model):
    """After a learner's leaked hook, the next check of a correct function still passes."""
    from wrong_09 import tfv_correct_hooks_context, tfv_leaks_hook

    with pytest.raises(CheckFailure, match="left hooks registered"):
        check_test_function_vector(tfv_leaks_hook, model)
    assert not any(hp._forward_hooks for hp in model.hook_dict.values()), "check left hooks behind"
    check_test_function_vector(tfv_correct_hooks_context, model)
