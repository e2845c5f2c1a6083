"""Notebook 09 (the seed's three exercises): what the notebook and the main job use besides the
learner's own functions.

The graded functions themselves (``extract_function_vector``, ``test_function_vector``,
``find_minimal_heads``) are written once, in the notebook; ``fv_exercises.reference.exercises`` is
generated from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fv_exercises.report import Context, Row, accuracy_row, difference_row
from fv_exercises.stats import accuracy, paired_difference

Head = tuple[int, int]


def query_alone(prompt: str) -> str:
    """The zero-shot version of a few-shot prompt: its last block, ``"Q: big\\nA:"``.

    Demonstrations are separated by a blank line (``"Q: x\\nA: y\\n\\n"``), so the query is what
    follows the last ``"\\n\\n"``; a prompt without demonstrations is returned unchanged.
    """
    return prompt.rsplit("\n\n", 1)[-1]


def head_contributions(model, task: str, seed: int = 0) -> dict[Head, Tensor]:
    """Each head's share of the course's function vector for ``task``: ``{(layer, head): [d_model]}``.

    The function vector (:func:`fv_exercises.heads.function_vector_for_task`) is ``scale`` times
    the sum of its heads' mean outputs; head ``(l, h)``'s share is ``scale * mean_z[l, h] @
    W_O[l, h]``, so the shares sum to the vector exactly (up to float rounding).
    """
    from fv_exercises.heads import function_vector_details, task_scan

    details = function_vector_details(model, task, seed)
    mean_z = task_scan(model, task, seed).mean_z  # [n_layers, n_heads, d_head]
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]
    return {(l, h): details.scale * (mean_z[l, h].to(W_O.dtype) @ W_O[l, h]) for l, h in details.heads}


def projections(vectors: dict[Head, Tensor], fv: Tensor) -> dict[Head, float]:
    """Each vector's component along ``fv``'s direction, ``v . fv / |fv|`` (how much of ``fv``'s
    length it writes)."""
    direction = fv / fv.norm()
    return {head: float(v @ direction) for head, v in vectors.items()}


def cosine_matrix(vectors: Tensor) -> Tensor:
    """Pairwise cosine similarities of the rows of ``vectors`` ``[n, d]``: ``[n, n]``."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    return unit @ unit.T


def random_cosines(n: int, d: int, seed: int = 0) -> Tensor:
    """Off-diagonal cosines among ``n`` random Gaussian directions in ``d`` dimensions:
    ``[n * (n - 1)]`` (the baseline for "how similar are two task vectors?")."""
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return off_diagonal(cosine_matrix(g))


def off_diagonal(matrix: Tensor) -> Tensor:
    """The entries of a square matrix off its diagonal: ``[n * (n - 1)]``."""
    return matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)]


def headline(ctx: Context) -> list[Row]:
    """The fewest of the function vector's heads that keep 90% of its accuracy: chosen on train
    queries, measured on test queries against the full vector."""
    from fv_exercises.evaluation import top1_correct
    from fv_exercises.heads import function_vector_for_task
    from fv_exercises.reference.exercises import find_minimal_heads
    from fv_exercises.tasks import ICLDataset

    model = ctx.model
    fv, layer = function_vector_for_task(model, ctx.task, ctx.seed)
    shares = head_contributions(model, ctx.task, ctx.seed)
    select = ICLDataset.build(ctx.task, 24, seed=ctx.seed + 10_000, split="train")
    heads = find_minimal_heads(model, fv, layer, head_outputs=shares,
                               test_prompts=list(select.zero_shot_prompts),
                               expected=list(select.answers))
    small = torch.stack([shares[h] for h in heads]).sum(0)
    zs, answers = ctx.test.zero_shot_prompts, ctx.test.answers
    full_correct = top1_correct(model, zs, answers, add={layer: fv})
    small_correct = top1_correct(model, zs, answers, add={layer: small})
    return [
        Row("minimal heads keeping 90% of the FV's accuracy", f"{len(heads)}", "",
            f"of {len(shares)}, chosen on 24 train queries: {heads}", float(len(heads))),
        accuracy_row("zero-shot + FV (all its heads)", accuracy(full_correct), f"layer {layer}"),
        accuracy_row("zero-shot + minimal heads only", accuracy(small_correct), f"layer {layer}"),
        difference_row("minimal heads - all heads (paired)",
                       paired_difference(small_correct, full_correct), "same test queries"),
    ]

