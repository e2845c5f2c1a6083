"""Notebook 02's check: the reference passes, each plausible mistake fails with its message."""

from __future__ import annotations

import re

import pytest

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.layer_sweep import check_find_task_layer
from fv_exercises.reference.layer_sweep import find_task_layer

from check_suite import correct_versions_pass, mistakes_are_named
from wrong_02 import FIND_TASK_LAYER, FIND_TASK_LAYER_CORRECT


def test_reference_find_task_layer_passes(model, capsys):
    check_find_task_layer(find_task_layer, model)
    check_find_task_layer(find_task_layer, model, hidden=True)
    captured = capsys.readouterr()
    assert "matches the reference" in captured.out
    assert captured.out.count("\n") == 1 and captured.err == ""


def test_check_computes_the_references_accuracies(model):
    """The check's batched sweep (every layer in one pass) gives the reference's accuracies."""
    from fv_exercises.checks.layer_sweep import _FTL_CASES, _FTL_HIDDEN, _case_inputs, _reference

    for case in _FTL_CASES + _FTL_HIDDEN:
        looped = find_task_layer(model, *_case_inputs(case))
        assert {int(k): float(v) for k, v in looped.items()} == _reference(model, case), case


# one probe at a time (the seed's loop), or batched with each probe's own last index
test_other_correct_versions_pass = correct_versions_pass(check_find_task_layer, FIND_TASK_LAYER_CORRECT)


def test_visible_probes_mix_token_lengths(model):
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.layer_sweep import _FTL_CASES, _case_inputs

    for case in _FTL_CASES:
        assert mixed_lengths(model, _case_inputs(case)[1]), case


test_find_task_layer_mistake_is_named = mistakes_are_named(check_find_task_layer, FIND_TASK_LAYER)


def test_check_recovers_from_leaked_hook(model):
    from wrong_02 import ftl_leaks_hook

    with pytest.raises(CheckFailure):
        check_find_task_layer(ftl_leaks_hook, model)
    check_find_task_layer(find_task_layer, model)


def test_hidden_run_names_padding_and_resid_pre(model):
    from wrong_02 import ftl_batched_padding, ftl_resid_pre_write

    for wrong in (ftl_batched_padding, ftl_resid_pre_write):
        with pytest.raises(CheckFailure, match=re.escape(FIND_TASK_LAYER[wrong])):
            check_find_task_layer(wrong, model, hidden=True)


def test_cases_tell_every_known_mistake_apart(model):
    """On every case (visible and hidden) each known mistake's per-layer accuracies differ from
    the reference's, and the hidden probes differ in token length too."""
    from fv_exercises.checks.core import mixed_lengths
    from fv_exercises.checks.layer_sweep import (_FTL_CASES, _FTL_HIDDEN, _case_inputs,
                                                 _known_mistakes, _matches, _reference)

    for case in _FTL_CASES + _FTL_HIDDEN:
        ref = _reference(model, case)
        ref_list = [ref[layer] for layer in sorted(ref)]
        icl, probes, answers = _case_inputs(case)
        assert mixed_lengths(model, probes), case
        same = [d[:60] for d, v in _known_mistakes(model, icl, probes, answers, ref_list)
                if _matches(ref_list, v)]
        assert not same, (case, same)
