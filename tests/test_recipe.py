"""The course's function-vector recipe (fv_exercises.heads section 6) and its measurement
(fv_exercises.recipe): held-out data, the many-variant evaluator, determinism and the disk cache."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest
import torch

from fv_exercises import disk_cache, heads
from fv_exercises.evaluation import answer_token_ids, last_position_logits
from fv_exercises.heads import FunctionVectorRecipe, function_vector_details, function_vector_for_task
from fv_exercises.recipe import (
    FamilyScore,
    choose,
    cross_fit,
    families,
    heldout_dataset,
    heldout_tasks,
    load_heldout,
    steered_scores,
)
from fv_exercises.tasks import ICLDataset, load_task, task_names

SMALL = FunctionVectorRecipe(ks=(2, 4), layer_fractions=(0.25, 0.5), scales=(1.0, 2.0),
                             n_prompts=6, n_scan=3, n_select=6)


# ---- held-out words -----------------------------------------------------------------------


def _shipped_words() -> set[str]:
    return {w.lower() for t in task_names() for pair in load_task(t).pairs for w in pair}


def test_heldout_words_are_in_no_shipped_task():
    shipped = _shipped_words()
    assert len(heldout_tasks()) >= 7
    for task in heldout_tasks():
        pairs = load_heldout(task).pairs
        assert len(pairs) >= 20, task
        inputs = [x for x, _ in pairs]
        assert len(set(inputs)) == len(inputs), f"{task}: duplicate held-out words"
        leaked = [x for x in inputs if x.lower() in shipped]
        assert not leaked, f"{task}: held-out words also in the shipped data: {leaked}"
        assert task in task_names(), f"held-out words for a task that is not shipped: {task}"


def test_heldout_answers_do_not_start_like_the_query(model):
    """Scoring is on the answer's first token: if it were the query's own first token, echoing
    the query would count as correct."""
    for task in heldout_tasks():
        pairs = load_heldout(task).pairs
        answers = answer_token_ids(model, [y for _, y in pairs])
        echoes = answer_token_ids(model, [x for x, _ in pairs])
        same = [pairs[i] for i in range(len(pairs)) if answers[i] == echoes[i]]
        assert not same, f"{task}: answer starts with the query's token: {same}"


def test_heldout_dataset_queries_heldout_words_with_train_demonstrations():
    data = heldout_dataset("antonym")
    train, _ = load_task("antonym").split()
    assert data.queries == tuple(x for x, _ in load_heldout("antonym").pairs)
    assert all(set(demos) <= set(train) for demos in data.demos)
    assert data.prompts[0].endswith(f"Q: {data.queries[0]}\nA:")
    assert data.zero_shot_prompts[0] == f"Q: {data.queries[0]}\nA:"
    assert heldout_dataset("antonym") == data  # deterministic


def test_heldout_files_are_well_formed():
    folder = resources.files("fv_exercises") / "data" / "heldout"
    for task in heldout_tasks():
        raw = json.loads((folder / f"{task}.json").read_text())
        assert raw["name"] == task and raw["description"] == load_task(task).description


# ---- steered_scores: many variants at once, same numbers as the bridge --------------------------


def _bridge_scores(model, prompts, answers, variants):
    ids = answer_token_ids(model, answers)
    correct, logprob = [], []
    for v in variants:
        logits = last_position_logits(model, prompts, add=v).float()
        correct.append(logits.argmax(-1) == ids)
        logprob.append(logits.log_softmax(-1)[torch.arange(len(ids)), ids])
    return torch.stack(correct), torch.stack(logprob)


def test_steered_scores_match_the_bridge(model):
    data = ICLDataset.build("present_past", 5, seed=2, split="train")
    mixed = ICLDataset.build("present_past", 2, n_shots=3, seed=3, split="train")
    n = model.cfg.n_layers
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(model.cfg.d_model, generator=g) * 8
    variants = [{}, {n // 3: vec}, {n // 2: 2 * vec}, {n // 3: vec, n // 3 + 2: vec}, {0: vec},
                {n - 1: vec}]
    for prompts, answers in ((data.zero_shot_prompts, data.answers),
                             (data.corrupted_prompts[:3] + mixed.prompts, data.answers[:3] + mixed.answers)):
        correct, logprob = steered_scores(model, prompts, answers, variants, batch_size=4)
        ref_c, ref_lp = _bridge_scores(model, prompts, answers, variants)
        torch.testing.assert_close(logprob, ref_lp, atol=2e-3, rtol=1e-3)
        assert torch.equal(correct, ref_c)


# ---- the recipe on a tiny model of another family: determinism, disk cache ------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fv_exercises import load_model
    from tests.tiny_models import build_tiny_model

    return load_model(build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny_gpt2")))


def _clear_process_caches():
    for cache in (heads._FV_CACHE, heads._SCANS, heads._UNIVERSAL):
        cache.clear()


def _same(a, b):
    assert a.layer == b.layer and a.heads == b.heads and a.k == b.k and a.scale == b.scale
    assert torch.equal(a.vector, b.vector) and torch.equal(a.raw, b.raw)
    assert torch.equal(a.effects.nan_to_num(-9), b.effects.nan_to_num(-9))
    assert a.train_accuracy == b.train_accuracy and a.train_grid == b.train_grid


def test_recipe_runs_on_another_family_and_the_disk_cache_equals_a_fresh_build(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    _clear_process_caches()
    monkeypatch.setenv(disk_cache.DISK_CACHE_ENV, "1")
    fresh = function_vector_details(tiny, "antonym", 0, SMALL)
    assert not (tmp_path / "function_vectors").exists()
    monkeypatch.delenv(disk_cache.DISK_CACHE_ENV)
    _clear_process_caches()
    written = function_vector_details(tiny, "antonym", 0, SMALL)
    files = sorted(p.name for p in (tmp_path / "function_vectors").iterdir())
    assert files and not [f for f in files if f.startswith(".")], f"temporary files left: {files}"
    _clear_process_caches()
    read = function_vector_details(tiny, "antonym", 0, SMALL)
    for other in (written, read):
        _same(fresh, other)
    # what it chose is one of its candidates, and the vector is scale x the heads' mean outputs
    assert fresh.layer in SMALL.layers(tiny.cfg.n_layers) and fresh.k in SMALL.ks
    assert fresh.scale in SMALL.scales and len(fresh.heads) == fresh.k
    torch.testing.assert_close(fresh.vector, fresh.scale * fresh.raw)
    assert max(fresh.train_grid.values()) == fresh.train_grid[(fresh.k, fresh.layer, fresh.scale)]


def test_function_vector_for_task_keeps_its_signature(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(heads, "COURSE_RECIPE", SMALL)
    _clear_process_caches()
    vector, layer = function_vector_for_task(tiny, "capitalize")
    assert vector.shape == (tiny.cfg.d_model,) and isinstance(layer, int)
    vector.add_(1.0)  # a caller editing the returned vector must not edit the cached one
    again, _ = function_vector_for_task(tiny, "capitalize")
    assert not torch.equal(again, vector)


def test_fingerprint_follows_the_weights(tiny):
    before = disk_cache.model_fingerprint(tiny)
    param = next(tiny.original_model.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param[0].add_(0.5)
        changed = disk_cache.model_fingerprint(tiny)
        param.copy_(saved)
    assert changed != before
    assert disk_cache.model_fingerprint(tiny) == before


# ---- the choice rule ------------------------------------------------------------------------------


def test_choose_prefers_the_cheaper_of_two_close_families():
    from fv_exercises.recipe import SearchData

    keys = [("task", 5, (2,), 1.0), ("task", 5, (4,), 1.0), ("universal", 5, (2,), 1.0),
            ("tv", 0, (2,), 1.0)]
    zero = {"a": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool()}
    data = SearchData(keys, zero, {"a": torch.ones(4, dtype=torch.bool)}, n_layers=30)
    fams = [f for f in families(30) if f.name in ("task, full grid", "universal, full grid",
                                                  "residual task vector")]
    scores = [cross_fit(data, f, repeats=3) for f in fams]
    by_name = {s.family.name: s for s in scores}
    assert by_name["residual task vector"].train_ratio == 1.0
    chosen = choose(scores)
    assert chosen.family.function_vector  # the reference task vector is never chosen
    assert chosen.family.name == "task, full grid"
    # a family within the tie margin but with fewer candidates wins
    close = dataclasses.replace(by_name["universal, full grid"],
                                train_ratio=by_name["task, full grid"].train_ratio - 0.01)
    assert choose([by_name["task, full grid"], close]) is close


def test_cross_fit_can_choose_on_shuffled_accuracy_too():
    from fv_exercises.recipe import Family, SearchData

    keys = [("task", 5, (2,), 1.0), ("task", 5, (4,), 1.0)]
    # candidate 0: best zero-shot, useless after shuffled demonstrations; candidate 1: the reverse
    zero = {"a": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()}
    shuffled = {"a": torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]).bool()}
    data = SearchData(keys, zero, {"a": torch.tensor([1, 1, 1, 0]).bool()}, 30, None, shuffled)
    member = lambda key, n: key[0] == "task"
    alone = cross_fit(data, Family("zero", "", member), repeats=3)
    both = cross_fit(data, Family("both", "", member, with_shuffled=True), repeats=3)
    assert alone.per_task["a"] == 1.0 and both.per_task["a"] == pytest.approx(0.75)
    few = 0.75  # on average over the halves
    assert alone.shuffled_gap == pytest.approx(0.0 - few) and both.shuffled_gap == pytest.approx(1.0 - few)
    without = SearchData(keys, zero, data.few_shot, 30)
    assert cross_fit(without, Family("zero", "", member), repeats=1).shuffled_gap is None
    with pytest.raises(ValueError, match="shuffled"):
        cross_fit(without, Family("both", "", member, with_shuffled=True), repeats=1)


def test_choose_prefers_the_smaller_scan_when_candidates_tie():
    fams = {f.name: f for f in families(30)}
    every, part = fams["course grid, every head"], fams["course grid"]
    assert part.scan_cost < every.scan_cost == 1.0  # the course's recipe scans layers 10-29
    assert fams["course grid, universal"].scan_cost > every.scan_cost  # every task's scan
    score = lambda f, r: FamilyScore(f, 45, r, {})
    assert choose([score(every, 0.85), score(part, 0.84)]).family is part
    assert choose([score(every, 0.85), score(part, 0.82)]).family is every  # beyond the tie
