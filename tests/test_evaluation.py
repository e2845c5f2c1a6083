"""Batched evaluation is exact: right padding, last-position hooks, first-token scoring."""

from __future__ import annotations

import torch

from fv_exercises.evaluation import (
    answer_token_ids,
    last_position_logits,
    last_position_resid_post,
    tokenize_right_padded,
)
from fv_exercises.tasks import ICLDataset


def test_right_padded_batch_equals_one_by_one(model):
    prompts = list(ICLDataset.build("antonym", 4, seed=0).prompts) + ["Q: hot\nA:"]
    tokens, last = tokenize_right_padded(model, prompts)
    assert len(set(last.tolist())) > 1, "need prompts of different lengths"
    batched = last_position_logits(model, prompts)
    single = torch.cat([last_position_logits(model, [p]) for p in prompts])
    assert (batched - single).abs().max() < 1e-3


def test_added_vector_lands_on_last_position_only(model):
    prompt = "Q: hot\nA:"
    v = torch.randn(model.cfg.d_model)
    layer = 3
    hooked = last_position_logits(model, [prompt], add={layer: v})[0]

    def manual(resid, hook):
        resid = resid.clone()
        resid[:, -1] += v
        return resid

    expected = model.run_with_hooks(prompt, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", manual)])
    assert (hooked - expected[0, -1]).abs().max() < 1e-3


def test_resid_post_matches_cache(model):
    prompt = "Q: big\nA:"
    states = last_position_resid_post(model, [prompt])[0]
    _, cache = model.run_with_cache(prompt)
    for layer in (0, model.cfg.n_layers - 1):
        assert torch.allclose(states[layer], cache[f"blocks.{layer}.hook_resid_post"][0, -1], atol=1e-4)


def test_answers_scored_on_first_token_with_leading_space(model):
    ids = answer_token_ids(model, ["cold", "Paris"])
    assert model.tokenizer.decode(ids[0]).startswith(" ")
    assert ids.tolist() == [model.tokenizer.encode(" cold", add_special_tokens=False)[0],
                            model.tokenizer.encode(" Paris", add_special_tokens=False)[0]]


def test_layer_sweep_equals_adding_at_each_layer(model):
    """layer_sweep (the last position recomputed from each layer up) gives what adding the vector
    at each layer with a full forward pass gives."""
    from fv_exercises.evaluation import layer_sweep, mean_resid_post, top1_accuracy

    train = ICLDataset.build("antonym", 3, seed=0, split="train")
    test = ICLDataset.build("antonym", 3, seed=1, split="test")
    vectors = mean_resid_post(model, train.prompts) - mean_resid_post(model, train.zero_shot_prompts)
    layers = [0, 9, 14, 18, 22, model.cfg.n_layers - 1]
    swept = layer_sweep(model, vectors, test.zero_shot_prompts, test.answers)
    assert swept.shape == (model.cfg.n_layers,)
    expected = [top1_accuracy(model, test.zero_shot_prompts, test.answers, add={l: vectors[l]})
                for l in layers]
    assert swept[layers].tolist() == expected
    assert 0 < sum(expected) < len(layers), "the vectors must help at some layers, not all"
