"""Function-vector arithmetic (fv_exercises.arithmetic): notebook 04's library code and main-job rows.

Kept to a few seconds each: small prompt sets; the main job's section runs on a tiny model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fv_exercises.arithmetic import (
    STRONG_TASKS,
    TASKS,
    WEAK_TASK,
    composed_task,
    composition_candidates,
    cosine_matrix,
    difference_variants,
    head_output_sums,
    prompt_count_curve,
    random_cosines,
    split_halves,
    steered_top1_ids,
    synonym_prompts_with_antonyms,
    top1_matches,
)
from fv_exercises.evaluation import answer_token_ids, last_position_logits
from fv_exercises.tasks import ICLDataset, load_task

ROOT = Path(__file__).resolve().parents[1]


def test_tasks_follow_the_accuracy_table():
    """Every task with few-shot accuracy >= 50% in docs/task_accuracy.md, plus synonym."""
    rows = re.findall(r"^\| (\w+) \| (\d+)% \|", (ROOT / "docs" / "task_accuracy.md").read_text(), re.M)
    assert rows, "no rows parsed from docs/task_accuracy.md"
    assert set(STRONG_TASKS) == {task for task, few in rows if int(few) >= 50}
    assert TASKS == STRONG_TASKS + (WEAK_TASK,) and WEAK_TASK == "synonym"


@pytest.fixture(scope="module")
def mixed_prompts():
    """Few-shot prompts of different token lengths (5, 3 and 4 demonstrations)."""
    return [ICLDataset.build("antonym", 2, n_shots=k, seed=k).prompts[0] for k in (5, 3, 4)]


def test_head_output_sums_mean_is_the_reference_function_vector(model, mixed_prompts):
    from fv_exercises.heads import function_vector, mean_head_z
    from fv_exercises.reference.arithmetic import average_function_vector

    n = model.cfg.n_layers
    heads = [(n // 2, 0), (2 * n // 3, 1), (n // 2, 2)]
    rows = head_output_sums(model, mixed_prompts, heads)
    assert rows.shape == (len(mixed_prompts), model.cfg.d_model)
    reference = average_function_vector(model, mixed_prompts, heads)
    torch.testing.assert_close(rows.mean(0), reference, atol=1e-4, rtol=1e-4)
    library = function_vector(model, mean_head_z(model, mixed_prompts), heads)
    torch.testing.assert_close(library, reference, atol=1e-4, rtol=1e-4)


def test_steered_top1_ids_match_full_forward_passes(model, mixed_prompts):
    """The last-position shortcut gives the bridge's own top-1 tokens, for every kind of variant."""
    n, d = model.cfg.n_layers, model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(d, generator=g) * 30, torch.randn(d, generator=g) * 30
    variants = [None, {n // 2: a}, {n // 3: b, 2 * n // 3: a}, {}, {n - 1: b}]
    fast = steered_top1_ids(model, mixed_prompts, variants, batch_size=2)
    for row, v in zip(fast, variants):
        full = last_position_logits(model, mixed_prompts, add=v or None).argmax(-1)
        assert torch.equal(row, full), v
    assert not torch.equal(fast[0], fast[1]), "the vector should change some top-1 token"


def test_top1_matches_compares_first_tokens(model, mixed_prompts):
    words = ["cold", "small", "dark"]
    plain = last_position_logits(model, mixed_prompts).argmax(-1)
    got = top1_matches(model, mixed_prompts, {"w": words}, {"plain": None})
    assert torch.equal(got["plain"]["w"], plain == answer_token_ids(model, words))


def test_prompt_count_curve_draws(model):
    rows = torch.randn(6, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    test = ICLDataset.build("antonym", 3, seed=1, split="test")
    curve = prompt_count_curve(model, rows, model.cfg.n_layers // 2, test.zero_shot_prompts,
                               test.answers, counts=(1, 2, 4, 6, 8), draws=3)
    assert sorted(curve) == [1, 2, 4, 6]  # 8 > number of rows: skipped
    assert [curve[n].shape for n in (1, 2, 4, 6)] == [(3, 3), (3, 3), (3, 3), (1, 3)]
    assert curve[1].dtype == torch.bool


def test_similarity_baselines():
    v = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    cos = cosine_matrix(v)
    torch.testing.assert_close(cos, cos.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(4, dtype=torch.float64))
    same = torch.ones(8, 50) + 1e-3 * v.repeat(2, 1)
    assert split_halves(same, n_splits=5).min() > 0.999
    rand = random_cosines(400, n_pairs=4000)
    assert abs(rand.std().item() - 400 ** -0.5) < 0.005 and abs(rand.mean().item()) < 0.005


def test_synonym_prompts_with_antonyms(model):
    data = synonym_prompts_with_antonyms(model, 12, split="test")
    assert len(data) == 12 and len(set(data.queries)) == 12
    antonym_train, antonym_test = load_task("antonym").split()
    synonym_train, _ = load_task("synonym").split()
    assert set(zip(data.queries, data.antonyms)) <= set(antonym_test)
    for query, answer, prompt, zero in zip(data.queries, data.antonyms, data.prompts,
                                           data.zero_shot_prompts):
        assert prompt.endswith(f"Q: {query}\nA:") and zero == f"Q: {query}\nA:"
        demos = re.findall(r"Q: (.*)\nA: (.*)\n", prompt)
        assert len(demos) == 5 and set(demos) <= set(synonym_train) and query not in dict(demos)
        ids = answer_token_ids(model, [query, answer])
        assert ids[0] != ids[1]
    assert data == synonym_prompts_with_antonyms(model, 12, split="test")  # deterministic


def test_composed_task_keeps_the_antonym_split(model):
    task = composed_task(model)
    train, test = task.split()
    a_train, a_test = load_task("antonym").split()
    lower = {(x, y[:1].lower() + y[1:]) for x, y in test}
    assert lower <= set(a_test) and len(test) >= 40
    assert {(x, y[:1].lower() + y[1:]) for x, y in train} <= set(a_train)
    assert all(y[:1].isupper() for _, y in train + test)
    data = ICLDataset.build(task, 10, seed=1, split="test")
    cands = composition_candidates(data)
    for i in range(len(data)):
        ids = answer_token_ids(model, [c[i] for c in cands.values()])
        assert len(set(ids.tolist())) == 3, [c[i] for c in cands.values()]


def test_difference_variants_norms():
    g = torch.Generator().manual_seed(0)
    ant, syn = torch.randn(20, generator=g), torch.randn(20, generator=g)
    v = difference_variants(ant, syn, layer=3)
    assert v["no vector"] is None and all(list(x) == [3] for x in list(v.values())[1:])
    diff = ant - syn
    torch.testing.assert_close(v["fv_antonym - fv_synonym"][3], diff)
    torch.testing.assert_close(v["random vector, |difference|"][3].norm(), diff.norm())
    torch.testing.assert_close(v["difference rescaled to |fv_antonym|"][3].norm(), ant.norm())


def test_headline_and_figures_on_a_tiny_model(tmp_path, monkeypatch):
    """The main-job section runs on another family (GPT-2: no Llama shortcut) and writes PNGs
    (the cosine map over three tasks instead of eight, to keep the test short)."""
    from tiny_models import build_tiny_model

    from fv_exercises import arithmetic, load_model
    from fv_exercises.report import Context

    monkeypatch.setattr(arithmetic, "TASKS", ("antonym", "capitalize", "synonym"))
    tiny = load_model(build_tiny_model("gpt2", tmp_path / "gpt2"))
    rows = arithmetic.headline(Context(tiny, task="antonym", out_dir=tmp_path / "out"))
    names = [r.name for r in rows]
    assert any("fv_antonym - fv_synonym" in n for n in names)
    assert any("random vector, same norm" in n for n in names)
    for name in ("antonym_fv_prompt_count.png", "antonym_fv_cosines.png"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000
