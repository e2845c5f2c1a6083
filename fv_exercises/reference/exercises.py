"""Reference solutions for 09_exercises.

GENERATED from solutions/09_exercises/09_exercises.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor

from fv_exercises.evaluation import tokenize_right_padded


def extract_function_vector(model, task_prompts: list[str], layer: int) -> Tensor:
    """Mean final-position ``resid_post`` of few-shot prompts minus that of their queries alone.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        task_prompts: few-shot prompts in the course's format, e.g.
            ``"Q: hot\\nA: cold\\n\\nQ: big\\nA:"`` (any number, any lengths).
        layer: block whose ``hook_resid_post`` is read.

    Returns:
        ``[d_model]``: the mean over prompts of the final state with demonstrations, minus the
        mean over the same queries without them (``prompt.rsplit("\\n\\n", 1)[-1]``).
    """
    hook_name = f"blocks.{layer}.hook_resid_post"

    def final_states(prompts: list[str]) -> Tensor:
        """``[n, d_model]``: each prompt's state at its own last token (one batched pass)."""
        tokens, last = tokenize_right_padded(model, prompts)  # [n, seq], [n]
        # stop_at_layer: the blocks after `layer` (and the unembedding) are not needed
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook_name,
                                        stop_at_layer=layer + 1)
        return cache[hook_name][torch.arange(len(prompts), device=last.device), last]

    with_demos = final_states(task_prompts)  # [n, d_model]
    query_only = final_states([p.rsplit("\n\n", 1)[-1] for p in task_prompts])  # the baseline
    return with_demos.mean(0) - query_only.mean(0)


def test_function_vector(model, fv: Tensor, layer: int, test_prompts: list[str],
                         expected: list[str]) -> float:
    """Top-1 accuracy of zero-shot prompts with ``fv`` added at the last position.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        fv: ``[d_model]`` vector added to ``blocks.{layer}.hook_resid_post`` at the last
            position of each prompt. Not modified.
        layer: the block after which it is added.
        test_prompts: zero-shot prompts, e.g. ``"Q: big\\nA:"`` (any lengths).
        expected: the answer of each prompt, e.g. ``"small"``.

    Returns:
        the fraction of prompts (0 to 1) whose top-1 next token is the first token of
        ``" " + answer``.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"
    tokens, last = tokenize_right_padded(model, test_prompts)  # [n, seq], [n]
    rows = torch.arange(len(test_prompts), device=last.device)

    def add_fv(resid: Tensor, hook) -> Tensor:
        resid[rows, last] += fv  # each prompt's own last position; fv itself is left alone
        return resid

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, add_fv)])  # [n, seq, d_vocab]
    predicted = logits[rows, last].argmax(-1)  # [n]
    answer_ids = torch.tensor([model.tokenizer.encode(" " + a, add_special_tokens=False)[0]
                               for a in expected], device=predicted.device)
    return (predicted == answer_ids).float().mean().item()


def find_minimal_heads(model, fv: Tensor, layer: int, threshold: float = 0.9, *,
                       head_outputs: dict[tuple[int, int], Tensor], test_prompts: list[str],
                       expected: list[str]) -> list[tuple[int, int]]:
    """The fewest top-ranked heads whose summed shares keep ``threshold`` of ``fv``'s accuracy.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        fv: ``[d_model]``, the function vector: the sum of ``head_outputs.values()``.
        layer: block after which vectors are added (last position), as in ``test_function_vector``.
        threshold: fraction of the full vector's accuracy to keep.
        head_outputs: ``{(layer, head): [d_model]}``, each head's share of ``fv``.
        test_prompts, expected: zero-shot queries and their answers to measure accuracy on.

    Returns:
        ``[(layer, head), ...]``: the first ``k`` heads ranked by ``share @ fv / |fv|``
        (largest first), for the smallest ``k`` whose summed shares reach ``threshold`` times
        the accuracy of ``fv``.
    """
    direction = fv / fv.norm()
    ranked = sorted(head_outputs, key=lambda head: float(head_outputs[head] @ direction),
                    reverse=True)
    target = threshold * test_function_vector(model, fv, layer, test_prompts, expected)
    partial = torch.zeros_like(fv)
    for k, head in enumerate(ranked, start=1):
        partial = partial + head_outputs[head]  # the vector of the top-k heads
        if test_function_vector(model, partial, layer, test_prompts, expected) >= target:
            return ranked[:k]
    return ranked
