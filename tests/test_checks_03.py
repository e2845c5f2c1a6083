"""Notebook 03's check: the reference passes, each plausible mistake fails with its message."""

from __future__ import annotations

import re

import pytest

from fv_exercises.checks import CheckFailure
from fv_exercises.checks_heads import check_find_task_heads
from fv_exercises.reference.heads import find_task_heads

from wrong_03 import FIND_TASK_HEADS


def test_reference_find_task_heads_passes(model, capsys):
    check_find_task_heads(find_task_heads, model)
    assert "matches the reference" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", list(FIND_TASK_HEADS), ids=lambda f: f.__name__)
def test_find_task_heads_mistake_is_named(model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(FIND_TASK_HEADS[wrong])):
        check_find_task_heads(wrong, model)
