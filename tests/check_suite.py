"""The tests every check gets: each known mistake fails with its message, and correct versions
written differently pass. A notebook's test module builds them from its check and the wrong and
correct versions in ``wrong_NN.py``::

    test_sycophancy_vector_mistake_is_named = mistakes_are_named(check_sycophancy_vector, SYCOPHANCY_VECTOR)
    test_sycophancy_vector_accepts_other_correct_versions = correct_versions_pass(
        check_sycophancy_vector, SYCOPHANCY_VECTOR_CORRECT)

pytest collects them under those names, one test per version (its function name as the id).
Each version is called the way the judge calls a learner's function while grading
(:func:`fv_exercises.judge.through_the_wire`: arguments and result cross the wire), so a value
the wire cannot carry fails here, not in a graded notebook.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest

from fv_exercises.checks import CheckFailure
from fv_exercises.judge import through_the_wire


def _as_graded(check: Callable, fn: Callable, model) -> Callable:
    """``fn`` as the judge would call it, under the notebook's name (``check_x`` checks ``x``)."""
    return through_the_wire(fn, model, check.__name__.removeprefix("check_"))


def mistakes_are_named(check: Callable, wrong: dict[Callable, str]) -> Callable:
    """A test per wrong version: ``check`` raises ``CheckFailure`` whose message contains its
    text (tests/conftest.py then asserts that no hook was left on the shared model).

    The hidden run is not repeated here for every version (it doubles the suite's longest part);
    each notebook's test module asserts it for the mistakes its hidden cases were made to catch.
    """

    def mistake_is_named(model, wrong_version):
        with pytest.raises(CheckFailure, match=re.escape(wrong[wrong_version])):
            check(_as_graded(check, wrong_version, model), model)

    return pytest.mark.parametrize("wrong_version", list(wrong), ids=lambda f: f.__name__)(
        mistake_is_named)


def correct_versions_pass(check: Callable, correct: list[Callable]) -> Callable:
    """A test per correct version: ``check`` passes it on the visible cases. (The hidden cases
    are run on the reference by each notebook's test module and by the nbgrader round trips; on
    every correct version they cost CI several minutes, and passed when last run: see the
    session notes of 2026-12-07.)"""

    def correct_version_passes(model, correct_version):
        check(_as_graded(check, correct_version, model), model)

    return pytest.mark.parametrize("correct_version", correct, ids=lambda f: f.__name__)(
        correct_version_passes)
