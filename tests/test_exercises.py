"""Notebook 09's library helpers (fv_exercises.exercises)."""

from __future__ import annotations

import torch

from fv_exercises.exercises import (cosine_matrix, head_contributions, off_diagonal, projections,
                                    query_alone, random_cosines)
from fv_exercises.tasks import ICLDataset


def test_query_alone_is_the_zero_shot_prompt():
    data = ICLDataset.build("antonym", 4, n_shots=3, seed=0)
    assert [query_alone(p) for p in data.prompts] == list(data.zero_shot_prompts)
    assert query_alone("Q: big\nA:") == "Q: big\nA:"


def test_head_contributions_sum_to_the_function_vector(model):
    from fv_exercises.heads import function_vector_for_task

    fv, _ = function_vector_for_task(model, "antonym")
    shares = head_contributions(model, "antonym")
    total = torch.stack(list(shares.values())).sum(0)
    assert torch.allclose(total, fv, atol=1e-3 * fv.norm().item())
    comps = projections(shares, fv)
    assert abs(sum(comps.values()) - fv.norm().item()) < 1e-3 * fv.norm().item()


def test_cosine_helpers():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    c = cosine_matrix(vectors)
    assert torch.allclose(c.diagonal(), torch.ones(3))
    assert off_diagonal(c).shape == (6,)
    rand = random_cosines(8, 576)
    assert rand.shape == (56,) and rand.abs().max() < 0.3
