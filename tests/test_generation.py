"""The generation engine, answer scoring, steering and the lexicon (fv_exercises.generation).

Kept to a few seconds each: short generations, few prompts; the main job's section runs on a
tiny model.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from fv_exercises import generation as gen
from fv_exercises.evaluation import mean_resid_post
from fv_exercises.reference.generation import generate_with_function_vector
from fv_exercises.tasks import ICLDataset


@pytest.fixture(scope="module")
def vector(model):
    """Antonym task vector (8 train prompts) at half depth: ``([d_model], layer)``."""
    ds = ICLDataset.build("antonym", 8, n_shots=4, seed=0)
    layer = model.cfg.n_layers // 2
    v = mean_resid_post(model, ds.prompts) - mean_resid_post(model, ds.zero_shot_prompts)
    return v[layer], layer


PROMPTS = ["The word 'hot' means", "Q: young\nA:", "Q: the sun\nA:"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_reference_equals_uncached_loop_with_the_same_intervention(model, vector, prompt):
    """The graded intervention, cached (the reference) and uncached (re-run everything, the
    vector at every position from the prompt's last onward): exactly the same tokens."""
    fv, layer = vector
    tokens = model.to_tokens(prompt)
    uncached = gen.generate_tokens(model, tokens, 12, gen.from_position(layer, fv, tokens.shape[1] - 1),
                                   use_cache=False)[0]
    cached = gen.generate_tokens(model, tokens, 12, gen.at_last_position(layer, fv))[0]
    assert cached == uncached
    assert generate_with_function_vector(model, prompt, fv, layer, 12) == model.tokenizer.decode(uncached)


def test_seed_loop_is_a_different_intervention(model, vector):
    """Same first token, different text later, on at least one of the probe prompts."""
    fv, layer = vector
    ours = gen.generate(model, PROMPTS, 12, additions={layer: fv})
    seed = gen.generate(model, PROMPTS, 12, additions={layer: fv}, where="rerun_last")
    firsts = gen.generate(model, PROMPTS, 1, additions={layer: fv}, tokens=True)
    firsts_seed = gen.generate(model, PROMPTS, 1, additions={layer: fv}, where="rerun_last", tokens=True)
    assert firsts == firsts_seed
    assert ours != seed


def test_batched_generate_matches_one_prompt_at_a_time(model, vector):
    """Grouping prompts by length and batching rows (and conditions) changes nothing."""
    fv, layer = vector
    prompts = PROMPTS + ["Q: cold\nA:"]  # two prompts of the same length share a batch
    alone = [gen.generate(model, [p], 6, additions={layer: fv})[0] for p in prompts]
    assert gen.generate(model, prompts, 6, additions={layer: fv}) == alone
    both = gen.generate_conditions(model, prompts, {"none": {}, "fv": {layer: fv}}, 6)
    assert both["fv"] == alone
    assert both["none"] == gen.generate(model, prompts, 6)


def test_stop_text_and_eos(model, vector):
    fv, layer = vector
    texts = gen.generate(model, ["Q: young\nA:"], 8, additions={layer: fv}, stop_text="\n")
    assert texts[0].count("\n") == 1 and texts[0].endswith("\n")
    chat = "<|im_start|>user\nReply with one word: yes or no?<|im_end|>\n<|im_start|>assistant\n"
    out = gen.generate(model, [chat], 12)[0]
    assert model.tokenizer.eos_token not in out and len(out) < 20


def test_sampling_is_reproducible_per_seed(model):
    prompts = ["The movie we watched last night was"] * 3
    a = gen.generate(model, prompts, 6, sampling=gen.STEER_SAMPLING, seeds=[1, 2, 1])
    b = gen.generate(model, prompts[:1], 6, sampling=gen.STEER_SAMPLING, seeds=[1])
    assert a[0] == a[2] == b[0]
    assert a[0] != a[1]


def test_prompt_start_adds_only_at_the_first_positions(model):
    """Activation Addition changes the prompt's first positions and nothing else: a pass that
    computes only later positions gets no hook, and rows of the vector land at positions 0..k-1."""
    layer = 2
    v = torch.randn(3, model.cfg.d_model)
    intervention = gen.at_first_positions(layer, v)
    assert intervention(3) == [] and intervention(10) == []
    seen = {}
    (name, hook), = intervention(0)
    resid = torch.zeros(1, 5, model.cfg.d_model)
    out = hook(resid)
    torch.testing.assert_close(out[0, :3], v)
    assert out[0, 3:].abs().max() == 0 and resid.abs().max() == 0
    (name, hook), = intervention(2)  # a pass starting at absolute position 2
    out = hook(torch.zeros(1, 1, model.cfg.d_model))
    torch.testing.assert_close(out[0, 0], v[2])
    del seen


def test_steering_vector_zero_at_a_shared_first_token(model):
    v = gen.steering_vector(model, *gen.STEER_PAIR, 3)
    assert v.shape == (model.to_tokens(gen.STEER_PAIR[0]).shape[1], model.cfg.d_model)
    assert v[0].abs().max() == 0 and v[1].norm() > 0
    with pytest.raises(ValueError, match="same number of tokens"):
        gen.steering_vector(model, "Love", "Hate", 3)


def test_steering_prompts_share_one_length(model):
    prompts, seeds = gen.steering_prompts()
    assert len(prompts) >= 20 and len(set(seeds)) == len(seeds) and len(set(gen.STEER_OPENINGS)) == 20
    assert len({model.to_tokens(p).shape[1] for p in prompts}) == 1  # one batch, no padding
    assert gen.steering_prompts(4, 1) == (list(gen.STEER_OPENINGS[:4]), [0, 100, 200, 300])


def test_random_vectors_keep_row_norms():
    v = torch.randn(4, 16)
    v[0] = 0
    r = gen.random_vectors_like(v, seed=3)
    torch.testing.assert_close(r.norm(dim=-1), v.norm(dim=-1))
    assert r[0].abs().max() == 0


def test_lexicon_and_sentiment_rates():
    raw = json.loads((resources.files("fv_exercises") / "data" / "lexicon" / "sentiment.json").read_text())
    positive, negative = gen.load_lexicon()
    assert len(positive) >= 50 and len(negative) >= 50 and not positive & negative
    assert all(w == w.lower() and w.isalpha() for w in raw["positive"] + raw["negative"])
    rates = gen.sentiment_rates(["I love this wonderful day", "I hate it, awful!", "", "Don't worry"])
    torch.testing.assert_close(rates[0], torch.tensor([2 / 5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rates[1], torch.tensor([0.0, 2 / 4], dtype=torch.float64))
    assert rates[2].abs().max() == 0
    torch.testing.assert_close(rates[3], torch.tensor([0.0, 1 / 2], dtype=torch.float64))


@pytest.mark.parametrize("text, answer, right", [
    (" Buenos Aires\n\nQ:", "Buenos Aires", True),
    (" Panama\n", "Panama City", False),
    (" cold.\n", "cold", True),
    (" cold and hot", "cold", False),
    ("", "cold", False),
])
def test_whole_answer_scoring(text, answer, right):
    assert gen.whole_answer_correct([text], [answer]).item() is right


def test_first_token_correct(model):
    ids = model.tokenizer.encode(" Panama", add_special_tokens=False)
    assert gen.first_token_correct(model, [ids, [], ids[::-1] + [0]], ["Panama City"] * 3).tolist() == \
        [True, False, ids[::-1][0] == ids[0]]


def test_time_generation_same_tokens(model, vector):
    fv, layer = vector
    runs = gen.time_generation(model, "Q: young\nA:", fv, layer, max_new_tokens=10)
    assert runs["cached"][0] == runs["uncached"][0] and len(runs["cached"][0]) == 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fv_exercises import load_model
    from tiny_models import build_tiny_model

    return load_model(build_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2")))


def test_engine_on_another_family(tiny):
    """GPT-2 (learned positions, its own cache path): cached equals uncached, batched equals alone."""
    layer = 1
    fv = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3
    prompts = PROMPTS + ["Q: cold\nA:"]
    for p in prompts:
        tokens = tiny.to_tokens(p)
        cached = gen.generate_tokens(tiny, tokens, 8, gen.at_last_position(layer, fv))[0]
        uncached = gen.generate_tokens(tiny, tokens, 8, gen.from_position(layer, fv, tokens.shape[1] - 1),
                                       use_cache=False)[0]
        assert cached == uncached
    alone = [gen.generate(tiny, [p], 5, additions={layer: fv})[0] for p in prompts]
    assert gen.generate(tiny, prompts, 5, additions={layer: fv}) == alone


def test_headline_runs_on_another_family(tiny, tmp_path):
    from fv_exercises.report import Context

    rows = gen.headline(Context(tiny, "antonym", 0, tmp_path))
    names = [r.name for r in rows]
    assert any("whole answer" in n for n in names) and any("steering" in n for n in names)
    assert (tmp_path / "antonym_steering.png").stat().st_size > 10_000
