"""fv_exercises.ablation: projections, plans, the two engines, and the main job's section."""

from __future__ import annotations

import pytest
import torch

from fv_exercises import ablation
from fv_exercises.ablation import (
    ablation_outcomes,
    first_layers,
    project_out,
    random_directions,
    single_layer_plans,
    unit,
    upward_plans,
)
from fv_exercises.evaluation import answer_token_ids
from fv_exercises.reference.ablation import ablate_function_vector
from fv_exercises.tasks import ICLDataset

# ---------------------------------------------------------------- no model needed


def test_project_out_removes_exactly_the_direction():
    g = torch.Generator().manual_seed(0)
    resid, v = torch.randn(2, 5, 16, generator=g), 7 * torch.randn(16, generator=g)
    out = project_out(resid, v)
    u = v / v.norm()
    assert torch.allclose(out @ u, torch.zeros(2, 5), atol=1e-5)  # nothing left along u
    assert torch.allclose(resid - out, (resid @ u)[..., None] * u, atol=1e-5)  # only that removed
    assert torch.allclose(project_out(out, v), out, atol=1e-5)  # idempotent
    assert torch.equal(project_out(resid, torch.zeros(16)), resid)  # zero vector: nothing


def test_project_out_leaves_its_inputs_alone():
    resid, v = torch.randn(1, 3, 8), torch.randn(8) * 3
    r0, v0 = resid.clone(), v.clone()
    project_out(resid, v)
    assert torch.equal(resid, r0) and torch.equal(v, v0)


def test_unit_and_random_directions():
    assert torch.equal(unit(torch.zeros(2, 4)), torch.zeros(2, 4))
    r = random_directions(10, 32, seed=3)
    assert r.shape == (10, 32) and torch.allclose(r.norm(dim=-1), torch.ones(10))
    assert torch.equal(r, random_directions(10, 32, seed=3))
    assert not torch.equal(r, random_directions(10, 32, seed=4))


def test_plans():
    n, d = 5, 3
    v = torch.arange(n * d, dtype=torch.float).view(n, d) + 1
    single = single_layer_plans(v, n, [1, 3])
    assert single.shape == (2, n, d)
    assert torch.equal(single[0, 1], v[1]) and single[0].abs().sum() == v[1].abs().sum()
    up = upward_plans(v, n, [0, 2])
    assert torch.equal(up[1, 2:], v[2:]) and up[1, :2].abs().sum() == 0
    assert torch.equal(up[0], v)
    same = upward_plans(torch.ones(d), n)  # one vector for every layer
    assert same.shape == (n, n, d) and torch.equal(same[2, 4], torch.ones(d))
    assert first_layers(torch.cat([single, up, torch.zeros(1, n, d)])).tolist() == [1, 3, 0, 2, n]
    with pytest.raises(ValueError):
        single_layer_plans(torch.ones(n + 1, d), n)


# ---------------------------------------------------------------- the embedded model


def _mixed_prompts(n: int = 3):
    """Few-shot prompts of different token lengths (2, 3 and 4 demonstrations)."""
    sets = [ICLDataset.build("antonym", n, n_shots=k, seed=2, split="test") for k in (2, 3, 4)]
    prompts = [s.prompts[i] for i, s in zip(range(n), sets)]
    answers = [s.answers[i] for i, s in zip(range(n), sets)]
    return prompts, answers


def _plans(model):
    L, d = model.cfg.n_layers, model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    v = torch.randn(L, d, generator=g) * 40
    return torch.cat([single_layer_plans(v, L, [0, L // 2, L - 1]), upward_plans(v[3], L, [L // 3]),
                      torch.zeros(1, L, d)])


@pytest.mark.parametrize("from_position", [0, 1])
def test_engines_agree(model, from_position):
    prompts, answers = _mixed_prompts()
    assert len({model.to_tokens(p).shape[1] for p in prompts}) == 3
    plans = _plans(model)
    fast = ablation_outcomes(model, prompts, answers, plans, engine="llama", batch_size=2,
                             from_position=from_position)
    slow = ablation_outcomes(model, prompts, answers, plans, engine="bridge",
                             from_position=from_position)
    assert torch.allclose(fast.prob, slow.prob, atol=1e-4)
    assert torch.equal(fast.clean_correct, slow.clean_correct)
    # a plan that removes nothing is the clean run
    assert torch.allclose(fast.prob[-1], fast.clean_prob, atol=1e-6)


def test_outcomes_match_the_graded_function(model):
    """One prompt at a time with the reference ``ablate_function_vector`` gives the same P(answer)."""
    prompts, answers = _mixed_prompts()
    L = model.cfg.n_layers
    fv = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 30
    layer = L // 2
    out = ablation_outcomes(model, prompts, answers, single_layer_plans(fv, L, [layer]))
    ids = answer_token_ids(model, answers)
    probs = torch.stack([ablate_function_vector(model, p, fv, layer)[0, -1].softmax(-1)[i]
                         for p, i in zip(prompts, ids)])
    assert torch.allclose(out.prob[0], probs, atol=1e-4)


def test_fast_engine_refuses_wrong_numbers(model, monkeypatch):
    prompts, answers = _mixed_prompts(2)
    original = ablation._llama_block
    monkeypatch.setattr(ablation, "_llama_block",
                        lambda fast, layer, x, cos, sin: original(fast, layer, x, cos, sin) * 1.01)
    with pytest.raises(RuntimeError, match="disagrees"):
        ablation_outcomes(model, prompts, answers, _plans(model), engine="llama", verify=True)


def test_inputs_untouched_and_no_hooks_left(model):
    prompts, answers = _mixed_prompts(2)
    plans = _plans(model)
    before = plans.clone()
    ablation_outcomes(model, prompts, answers, plans)
    assert torch.equal(plans, before)
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())


# ---------------------------------------------------------------- other families


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from fv_exercises import load_model

    from tiny_models import build_tiny_model

    return load_model(build_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2")))


def test_auto_engine_on_another_family(tiny_gpt2):
    """GPT-2 is not Llama-style: the bridge engine runs, and matches the graded function."""
    prompts, answers = _mixed_prompts()
    L = tiny_gpt2.cfg.n_layers
    fv = torch.randn(tiny_gpt2.cfg.d_model, generator=torch.Generator().manual_seed(2)) * 5
    out = ablation_outcomes(tiny_gpt2, prompts, answers, single_layer_plans(fv, L, [1, 2]))
    ids = answer_token_ids(tiny_gpt2, answers)
    for row, layer in enumerate([1, 2]):
        probs = torch.stack([ablate_function_vector(tiny_gpt2, p, fv, layer)[0, -1].softmax(-1)[i]
                             for p, i in zip(prompts, ids)])
        assert torch.allclose(out.prob[row], probs, atol=1e-5)
    with pytest.raises(Exception):
        ablation_outcomes(tiny_gpt2, prompts, answers, single_layer_plans(fv, L, [1]), engine="llama")


def test_headline_runs_on_another_family(tiny_gpt2, tmp_path):
    from fv_exercises.report import Context

    rows = ablation.headline(Context(tiny_gpt2, "antonym", 0, tmp_path))
    names = [r.name for r in rows]
    assert any("random directions removed" in n for n in names)
    assert any("FV removed - random removed" in n for n in names)
    assert (tmp_path / "antonym_ablation.png").stat().st_size > 10_000
