"""Notebook 07's checks: the reference passes, each plausible nnsight mistake fails with its
message, and correct versions written differently pass."""

from __future__ import annotations

import re

import pytest
import torch

from fv_exercises.checks import CheckFailure
from fv_exercises.checks.nnsight import (_GEN_CASES, _gen_inputs, _gen_variants,
                                         check_nnsight_generate_with_vector,
                                         check_nnsight_task_vector_logits)
from fv_exercises.nnsight_model import hf_module, tl_generate_with_vector
from fv_exercises.reference.nnsight import nnsight_generate_with_vector, nnsight_task_vector_logits

from wrong_07 import GENERATE, GENERATE_CORRECT, TASK_VECTOR, TASK_VECTOR_CORRECT


@pytest.fixture(scope="module")
def nn_model():
    """A separate nnsight copy of the embedded weights (never the bridge's)."""
    from fv_exercises.nnsight_model import load_nnsight_model

    return load_nnsight_model()


def test_reference_task_vector_passes(model, nn_model, capsys):
    check_nnsight_task_vector_logits(nnsight_task_vector_logits, model, nn_model)
    check_nnsight_task_vector_logits(nnsight_task_vector_logits, model, nn_model, hidden=True)
    assert "matches TransformerLens" in capsys.readouterr().out


def test_reference_generate_passes(model, nn_model, capsys):
    check_nnsight_generate_with_vector(nnsight_generate_with_vector, model, nn_model)
    check_nnsight_generate_with_vector(nnsight_generate_with_vector, model, nn_model, hidden=True)
    assert "matches TransformerLens" in capsys.readouterr().out


def test_checks_write_nothing_to_stderr(model, nn_model, capsys):
    """nbgrader scores a grade cell that writes to stderr zero (a wrong answer's warnings too)."""
    from wrong_07 import gen_open_loop

    check_nnsight_task_vector_logits(nnsight_task_vector_logits, model, nn_model)
    check_nnsight_generate_with_vector(nnsight_generate_with_vector, model, nn_model)
    with pytest.raises(CheckFailure):
        check_nnsight_generate_with_vector(gen_open_loop, model, nn_model)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("wrong", list(TASK_VECTOR), ids=lambda f: f.__name__)
def test_task_vector_mistake_is_named(model, nn_model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(TASK_VECTOR[wrong])):
        check_nnsight_task_vector_logits(wrong, model, nn_model)
    assert not nn_model._edits, "check left an edit on the nnsight model"


@pytest.mark.parametrize("correct", TASK_VECTOR_CORRECT, ids=lambda f: f.__name__)
def test_task_vector_accepts_other_correct_versions(model, nn_model, correct):
    check_nnsight_task_vector_logits(correct, model, nn_model)


@pytest.mark.parametrize("wrong", list(GENERATE), ids=lambda f: f.__name__)
def test_generate_mistake_is_named(model, nn_model, wrong):
    with pytest.raises(CheckFailure, match=re.escape(GENERATE[wrong])):
        check_nnsight_generate_with_vector(wrong, model, nn_model)


@pytest.mark.parametrize("correct", GENERATE_CORRECT, ids=lambda f: f.__name__)
def test_generate_accepts_other_correct_versions(model, nn_model, correct):
    check_nnsight_generate_with_vector(correct, model, nn_model)


def test_recovers_from_permanent_edit_and_weight_edit(model, nn_model):
    """After a learner leaves an edit or scaled weights behind, the reference still passes."""
    from wrong_07 import tv_edits_weights, tv_permanent_edit

    before = next(hf_module(nn_model).parameters()).clone()
    for wrong in (tv_permanent_edit, tv_edits_weights):
        with pytest.raises(CheckFailure):
            check_nnsight_task_vector_logits(wrong, model, nn_model)
    assert torch.equal(next(hf_module(nn_model).parameters()), before)
    assert not nn_model._edits
    check_nnsight_task_vector_logits(nnsight_task_vector_logits, model, nn_model)


def test_recovers_after_an_nnsight_error(model, nn_model):
    """An exception inside a learner's trace (out of order, unbound) leaves nnsight usable."""
    from wrong_07 import tv_logits_first, tv_no_save

    for wrong in (tv_logits_first, tv_no_save):
        with pytest.raises(CheckFailure):
            check_nnsight_task_vector_logits(wrong, model, nn_model)
    check_nnsight_task_vector_logits(nnsight_task_vector_logits, model, nn_model)
    check_nnsight_generate_with_vector(nnsight_generate_with_vector, model, nn_model)


@pytest.mark.parametrize("hidden", [False, True])
def test_generation_cases_tell_the_mistakes_apart(model, hidden):
    """Token comparisons are coarse: on every case each known mistake must give tokens different
    from the reference and from every other mistake, or the check could accept it or name the
    wrong one."""
    from fv_exercises.checks.nnsight import _GEN_HIDDEN

    for case, n in (_GEN_HIDDEN if hidden else _GEN_CASES):
        prompt, vector, layer = _gen_inputs(model, case)
        seen = {"the reference": tl_generate_with_vector(model, prompt, vector, layer, n)}
        for description, tokens in _gen_variants(model, prompt, vector, layer, n):
            clash = [name for name, other in seen.items() if torch.equal(tokens, other)]
            assert not clash, (case.task, description[:60], clash)
            seen[description[:60]] = tokens


@pytest.mark.parametrize("wrong", ["gen_returns_list", "gen_min_new_tokens"])
def test_hidden_run_catches_list_and_banned_eos(model, nn_model, wrong):
    import wrong_07

    fn = getattr(wrong_07, wrong)
    with pytest.raises(CheckFailure, match=re.escape(GENERATE[fn])):
        check_nnsight_generate_with_vector(fn, model, nn_model, hidden=True)


def test_hidden_run_names_a_replaced_state(model, nn_model):
    from wrong_07 import tv_replaces_state

    with pytest.raises(CheckFailure, match=re.escape(TASK_VECTOR[tv_replaces_state])):
        check_nnsight_task_vector_logits(tv_replaces_state, model, nn_model, hidden=True)


@pytest.mark.parametrize("hidden", [False, True])
def test_eos_cases_reach_eos_with_clear_margins(model, hidden):
    """The chat case of each run writes the end-of-sequence token before its last new token, and
    the top two logits are at least 0.1 apart at every step (the nnsight copy must agree)."""
    from fv_exercises.checks.nnsight import _GEN_EOS, _GEN_EOS_HIDDEN, _index
    from fv_exercises.evaluation import resid_post_name

    eos = model.tokenizer.eos_token_id
    for case, n in (_GEN_EOS_HIDDEN if hidden else _GEN_EOS):
        prompt, vector, layer = _gen_inputs(model, case)
        expected = tl_generate_with_vector(model, prompt, vector, layer, n)
        at = _index(expected, eos)
        assert at is not None and at < n - 1, (case, expected)

        def add(resid, hook):
            resid = resid.clone()
            resid[:, -1] += vector
            return resid

        step, cache, margins = model.to_tokens(prompt), None, []
        for k in range(n):
            logits, cache = model.run_with_hooks(step, fwd_hooks=[(resid_post_name(layer), add)],
                                                 past_key_values=cache, return_type="logits_and_cache")
            top = logits[0, -1].topk(2).values
            margins.append((top[0] - top[1]).item())
            step = expected[k].view(1, 1)
        assert min(margins) > 0.1, (case, margins)
