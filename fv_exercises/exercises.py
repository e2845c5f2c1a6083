"""Notebook 09 (the seed's three exercises): what the notebook and the main job use besides the
learner's own functions.

The graded functions themselves (``extract_function_vector``, ``test_function_vector``,
``find_minimal_heads``) are written once, in the notebook (the grader's copy of them is generated
from it). The main job needs the third one's answer, so :func:`minimal_heads` computes the same
selection here: library code never imports the generated reference modules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fv_exercises.evaluation import answer_token_ids, last_position_logits, top1_correct
from fv_exercises.heads import function_vector_details, function_vector_for_task, task_scan
from fv_exercises.report import Context, Row, accuracy_row, difference_row
from fv_exercises.stats import accuracy, paired_difference
from fv_exercises.tasks import ICLDataset

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
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), device="cpu")
    return off_diagonal(cosine_matrix(g))


def off_diagonal(matrix: Tensor) -> Tensor:
    """The entries of a square matrix off its diagonal: ``[n * (n - 1)]``."""
    return matrix[~torch.eye(matrix.shape[0], dtype=torch.bool, device=matrix.device)]


def _steered_accuracy(model, vector: Tensor, layer: int, prompts: list[str],
                      answers: list[str]) -> float:
    """Top-1 accuracy of ``prompts`` with ``vector`` (``[d_model]``) added to
    ``blocks.{layer}.hook_resid_post`` at each prompt's last position, all prompts in one
    right-padded batch (the number notebook 09's ``test_function_vector`` returns)."""
    logits = last_position_logits(model, prompts, add={layer: vector},
                                  batch_size=max(1, len(prompts)))  # [n, d_vocab]
    return (logits.argmax(-1) == answer_token_ids(model, answers)).float().mean().item()


def minimal_heads(model, fv: Tensor, layer: int, threshold: float = 0.9, *,
                  head_outputs: dict[Head, Tensor], test_prompts: list[str],
                  expected: list[str]) -> list[Head]:
    """The fewest top-ranked heads whose summed shares keep ``threshold`` of ``fv``'s accuracy.

    The selection notebook 09's graded ``find_minimal_heads`` asks for (the main job's row).

    Args:
        model: a TransformerLens ``TransformerBridge``.
        fv: ``[d_model]``, the function vector: the sum of ``head_outputs.values()``.
        layer: block after whose ``hook_resid_post`` vectors are added, at the last position.
        threshold: fraction of the full vector's top-1 accuracy to keep.
        head_outputs: ``{(layer, head): [d_model]}``, each head's share of ``fv``
            (:func:`head_contributions`).
        test_prompts, expected: zero-shot queries ``[n]`` and their answers ``[n]``.

    Returns:
        ``[(layer, head), ...]``: the first ``k`` heads ranked by ``share @ fv / |fv|`` (largest
        first; equal components keep ``head_outputs``' order), for the smallest ``k`` whose
        summed shares reach ``threshold`` times the accuracy of ``fv``.
    """
    components = projections(head_outputs, fv)
    ranked = sorted(head_outputs, key=lambda head: components[head], reverse=True)
    target = threshold * _steered_accuracy(model, fv, layer, test_prompts, expected)
    partial = torch.zeros_like(fv)
    for k, head in enumerate(ranked, start=1):
        partial = partial + head_outputs[head]  # the vector of the top-k heads, [d_model]
        if _steered_accuracy(model, partial, layer, test_prompts, expected) >= target:
            return ranked[:k]
    return ranked


def headline(ctx: Context) -> list[Row]:
    """The fewest of the function vector's heads that keep 90% of its accuracy: chosen on train
    queries, measured on test queries against the full vector."""
    model = ctx.model
    fv, layer = function_vector_for_task(model, ctx.task, ctx.seed)
    shares = head_contributions(model, ctx.task, ctx.seed)
    select = ICLDataset.build(ctx.task, 24, seed=ctx.seed + 10_000, split="train")
    heads = minimal_heads(model, fv, layer, head_outputs=shares,
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

