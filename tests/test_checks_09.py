"""Notebook 09's checks: each plausible mistake fails with its message, other correct versions pass.

The reference itself is graded (visible and hidden cases) by the nbgrader round trip.
"""

from __future__ import annotations


import pytest

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
