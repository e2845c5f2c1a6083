"""The tests every check gets: each known mistake fails with its message, and correct versions
written differently pass. A notebook's test module builds them from its check and the wrong and
correct versions in ``wrong_NN.py``::

    test_sycophancy_vector_mistake_is_named = mistakes_are_named(check_sycophancy_vector, SYCOPHANCY_VECTOR)
    test_sycophancy_vector_accepts_other_correct_versions = correct_versions_pass(
        check_sycophancy_vector, SYCOPHANCY_VECTOR_CORRECT)

pytest collects them under those names, one test per version (its function name as the id).
"""

from __future__ import annotations

import re
from typing import Callable

import pytest

from fv_exercises.checks import CheckFailure


def mistakes_are_named(check: Callable, wrong: dict[Callable, str]) -> Callable:
    """A test per wrong version: ``check`` raises ``CheckFailure`` whose message contains its
    text (tests/conftest.py then asserts that no hook was left on the shared model)."""

    def mistake_is_named(model, wrong_version):
        with pytest.raises(CheckFailure, match=re.escape(wrong[wrong_version])):
            check(wrong_version, model)

    return pytest.mark.parametrize("wrong_version", list(wrong), ids=lambda f: f.__name__)(
        mistake_is_named)


def correct_versions_pass(check: Callable, correct: list[Callable], hidden: bool = False) -> Callable:
    """A test per correct version: ``check`` passes it (and, with ``hidden``, the hidden cases too)."""

    def correct_version_passes(model, correct_version):
        check(correct_version, model)
        if hidden:
            check(correct_version, model, hidden=True)

    return pytest.mark.parametrize("correct_version", correct, ids=lambda f: f.__name__)(
        correct_version_passes)
