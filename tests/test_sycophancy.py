"""The sycophancy capstone's library (fv_exercises.sycophancy): data, prompts, the fast steering
engine against plain hooks, controls, choices, and the main job's section on a tiny model."""

from __future__ import annotations

import pytest
import torch

from fv_exercises import sycophancy as syc
from fv_exercises.sycophancy import (
    ChoicePrompts,
    Evaluation,
    Intervention,
    Recipe,
    ablation,
    build_prompts,
    load_claims,
    run_prompts,
    split_claims,
    steering,
)

# ---------------------------------------------------------------- data (no model needed)


def test_claims_are_well_formed():
    claims = load_claims()
    assert len(claims) >= 300
    assert len({c.question for c in claims}) == len(claims), "duplicate questions"
    for c in claims:
        assert c.claim.count("{}") == 1, c
        assert c.true != c.false, c
        assert c.question.endswith("?"), c
        assert c.answer_prefix and c.answer_prefix[0].isupper(), c


def test_answers_differ_in_their_first_token():
    from transformers import AutoTokenizer

    from fv_exercises.model import convert_embedded

    tok = AutoTokenizer.from_pretrained(convert_embedded())
    for c in load_claims():
        t = tok.encode(" " + c.true, add_special_tokens=False)[0]
        f = tok.encode(" " + c.false, add_special_tokens=False)[0]
        assert t != f, c


def test_split_is_by_claim_deterministic_and_disjoint():
    claims = load_claims()
    train, test = split_claims(claims)
    again = split_claims(claims)
    assert (train, test) == again
    assert not {c.question for c in train} & {c.question for c in test}
    assert len(train) + len(test) == len(claims)
    assert 0.35 < len(test) / len(claims) < 0.65
    # a claim's side does not depend on the others
    assert split_claims(claims[:50])[1] == [c for c in test if c in claims[:50]]


def test_shuffled_difference_cancels_what_pairs_share():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(5) * 100
    noise = torch.randn(10, 5, generator=g)
    a, b = shared + noise, torch.zeros(10, 5)
    out = syc.shuffled_difference(a, b, seed=3)
    assert out.abs().max() < noise.abs().max()  # the shared 100-sized part is gone
    odd = syc.shuffled_difference(a[:9], b[:9], seed=3)
    assert odd.abs().max() < noise.abs().max()
    assert torch.allclose(syc.mean_difference(a, b), a.mean(0))


def test_projection_and_addition():
    u = torch.tensor([3.0, 4.0, 0.0])
    x = torch.tensor([[1.0, 2.0, 5.0]])
    out = ablation(0, u).apply(x)
    assert torch.allclose(out @ (u / u.norm()), torch.zeros(1), atol=1e-6)
    assert torch.allclose(steering(0, u, -2.0).apply(x), x - 2 * u)
    assert torch.equal(x, torch.tensor([[1.0, 2.0, 5.0]]))  # not edited in place


def test_layer_and_sign_are_chosen_where_the_vector_moves_most():
    layers = [0, 3, 6]
    plus = torch.tensor([[0.6, 0.6], [0.9, 0.9], [0.5, 0.5]])
    minus = torch.tensor([[0.5, 0.5], [0.2, 0.2], [0.5, 0.5]])
    assert syc.choose_layer_and_sign(plus, minus, layers) == (3, -1.0)  # subtracting lowers
    assert syc.choose_layer_and_sign(minus, plus, layers) == (3, 1.0)  # a reversed vector: add


def test_conditions_and_shared_controls():
    vectors = torch.randn(4, 8)
    a = Recipe("a", vectors, torch.randn(4, 8), layer=2, sign=-1.0)
    b = Recipe("b", vectors * 3, torch.randn(4, 8), layer=2, sign=1.0)
    norms = torch.full((4,), 10.0)
    conds = syc.all_conditions([a, b], norms, 8, n_random=2)
    # one set of random controls at the shared layer, with the norm the strength means
    assert [k for k in conds if k.startswith("control")] == [
        syc.random_key(2, 0), syc.random_key(2, 1), syc.random_key(2)]
    assert torch.isclose(conds[syc.random_key(2, 0)].add.norm(), torch.tensor(syc.STRENGTH * 10.0))
    for r in (a, b):
        steer = conds[r.key("vector, chosen sign")].add
        assert torch.isclose(steer.norm(), torch.tensor(syc.STRENGTH * 10.0))
        assert torch.sign(steer @ r.vectors[2]) == r.sign
        assert torch.allclose(conds[r.key("vector, opposite sign")].add, -steer)
        assert torch.isclose(conds[r.key("shuffled-pair vector, same norm")].add.norm(), steer.norm())


def test_findings_and_conclusion_read_the_numbers():
    from fv_exercises.stats import accuracy, paired_difference

    n = 40
    yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    half = torch.arange(n) % 2 == 0
    recipe = Recipe("seed", torch.randn(4, 8), torch.randn(4, 8), layer=2, sign=-1.0)
    agree = {"unsteered": yes, recipe.key("vector, chosen sign"): no,
             recipe.key("vector, opposite sign"): yes, recipe.key("direction projected out"): no,
             recipe.key("shuffled-pair vector, same norm"): yes,
             recipe.key("shuffled-pair direction projected out"): yes,
             syc.random_key(2, 0): yes, syc.random_key(2, 1): half, syc.random_key(2): yes}
    ev = Evaluation(agree, {"unsteered": yes[:10], recipe.key("vector, chosen sign"): yes[:10]})
    torch.testing.assert_close(ev.random_mean(2), (yes.float() + half.float()) / 2)
    text = "\n".join(syc.recipe_findings(ev, recipe, torch.full((4,), 10.0)))
    assert "subtracting the vector (the recipe's intent) at layer 2" in text
    assert "the direction matters" in text
    assert "still answers the neutral questions" in text
    out = syc.conclusion(accuracy(yes), paired_difference(yes.float(), half.float()), [text], 48)
    assert "not only copying" in out and "What this does not show" in out
    assert "seed: vector, chosen sign" in syc.format_evaluation(ev)


# ---------------------------------------------------------------- on the embedded model


@pytest.fixture(scope="module")
def prompts(model):
    claims = load_claims()
    return build_prompts(model, [claims[i] for i in (0, 57, 130, 236)], "assert")


def test_prompts_are_template_tokens_and_steering_starts_after_the_question(model, prompts):
    claims = load_claims()
    for kind in ("neutral", "assert", "deny"):
        p = build_prompts(model, claims[:3], kind)
        for text, start in zip(p.texts, p.steer_from):
            tokens = model.to_tokens(text)[0]
            assert tokens.tolist() == model.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert model.to_str_tokens(text)[start] == "<|im_end|>"
            user = syc.user_message(claims[0], kind)
            assert user.endswith("?")
    ab = syc.ab_prompts(model, claims[:4])
    assert all(t.endswith("(") for t in ab.texts)
    assert sorted(set(ab.false_ids) | set(ab.true_ids)) == sorted(
        {syc.first_token_id(model, "A"), syc.first_token_id(model, "B")})
    s, h = syc.caa_pairs(model, claims[:2])
    assert [a[:-1] for a in s] == [b[:-1] for b in h] and all(a[-1] != b[-1] for a, b in zip(s, h))


def test_fast_engine_matches_plain_hooks(model, prompts):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.cfg.d_model, generator=g) * 4
    L = model.cfg.n_layers
    ivs = [steering(1, v, 1.0), steering(L // 2, v, -2.0), ablation(L // 2, v),
           Intervention(2 * L // 3, add=v, project=v), steering(L - 1, v, 1.5)]
    fast = run_prompts(model, prompts, ivs, states=True, fast=True, batch_size=3)
    plain = run_prompts(model, prompts, ivs, states=True, fast=False)
    torch.testing.assert_close(fast.p_false, plain.p_false, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast.states, plain.states, atol=1e-4, rtol=1e-5)
    assert fast.p_false.shape == (1 + len(ivs), len(prompts))
    assert (fast.p_false[2] - fast.p_false[0]).abs().max() > 1e-3  # the interventions bite


def test_run_prompts_matches_the_graded_function(model, prompts):
    from fv_exercises.reference.sycophancy import steered_agreement

    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 5
    layer = model.cfg.n_layers // 2
    ref = steered_agreement(model, prompts, v, layer, -1.5)
    fast = run_prompts(model, prompts, [steering(layer, v, -1.5)]).p_false[1]
    torch.testing.assert_close(fast, ref.float(), atol=2e-5, rtol=0)


def test_last_states_and_shared_prefix(model, prompts):
    """The shared system prompt is run once: states equal an unbatched run_with_cache."""
    states = syc.last_states(model, prompts.texts)
    layer = model.cfg.n_layers // 3
    name = f"blocks.{layer}.hook_resid_post"
    for i, text in enumerate(prompts.texts):
        _, cache = model.run_with_cache(text, names_filter=lambda n: n == name)
        torch.testing.assert_close(states[i, layer], cache[name][0, -1], atol=1e-4, rtol=1e-5)


def test_greedy_reply(model, prompts):
    out = syc.greedy_reply(model, prompts.texts[0], prompts.steer_from[0], max_new_tokens=2)
    assert isinstance(out, str) and out


def test_select_keeps_fields_parallel(prompts):
    sub = prompts.select([2, 0])
    assert sub.texts == [prompts.texts[2], prompts.texts[0]]
    assert sub.steer_from == [prompts.steer_from[2], prompts.steer_from[0]]
    assert isinstance(prompts.select(slice(0, 2)), ChoicePrompts) and len(prompts.select(slice(0, 2))) == 2


# ---------------------------------------------------------------- other architectures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fv_exercises import load_model
    from tiny_models import build_tiny_model

    return load_model(build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2"))


def test_plain_path_and_prompts_on_a_tiny_model(tiny):
    claims = load_claims()[:3]
    p = build_prompts(tiny, claims, "assert")
    v = torch.randn(tiny.cfg.d_model)
    run = run_prompts(tiny, p, [steering(1, v, 2.0), ablation(2, v)], states=True)
    assert run.p_false.shape == (3, 3) and run.states.shape == (3, tiny.cfg.n_layers, tiny.cfg.d_model)
    assert ((run.p_false >= 0) & (run.p_false <= 1)).all()


def test_headline_runs_on_a_tiny_model(tiny, monkeypatch, tmp_path):
    from fv_exercises.report import Context

    few = tuple(load_claims()[:60])
    monkeypatch.setattr(syc, "_claims", lambda: few)
    monkeypatch.setattr(syc, "N_VECTOR_CLAIMS", 6)
    monkeypatch.setattr(syc, "N_CHOICE_CLAIMS", 4)
    rows = syc.headline(Context(tiny, out_dir=tmp_path))
    names = [r.name for r in rows]
    assert any("sycophancy rate" in n for n in names)
    assert any(n.startswith("figure") for n in names)
    assert (tmp_path / "antonym_sycophancy_layers.png").is_file()
