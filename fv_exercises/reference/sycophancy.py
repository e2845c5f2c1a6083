"""Reference solutions for 08_sycophancy.

GENERATED from solutions/08_sycophancy/08_sycophancy.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor

from fv_exercises.sycophancy import ChoicePrompts


def steered_agreement(model, prompts: ChoicePrompts, vector: Tensor, layer: int,
                      multiplier: float) -> Tensor:
    """The false answer's share per prompt, with ``multiplier * vector`` added after the question.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        prompts: ``texts``, ``steer_from``, ``false_ids``, ``true_ids`` (parallel lists).
        vector: ``[d_model]`` steering vector (left unchanged).
        layer: block whose ``hook_resid_post`` is steered.
        multiplier: signed scale of ``vector``.

    Returns:
        ``[n]``: ``P(false) / (P(false) + P(true))`` at each prompt's last position.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"
    steer = multiplier * vector  # a new tensor: the caller's vector stays as it was
    shares = []
    for text, start, false_id, true_id in zip(prompts.texts, prompts.steer_from,
                                              prompts.false_ids, prompts.true_ids):
        def add_after_question(resid: Tensor, hook) -> Tensor:
            resid[:, start:] += steer  # every position after the question, none before
            return resid

        logits = model.run_with_hooks(text, fwd_hooks=[(hook_name, add_after_question)])
        probs = logits[0, -1].softmax(-1)
        shares.append(probs[false_id] / (probs[false_id] + probs[true_id]))
    return torch.stack(shares)


def sycophancy_vector(model, sycophantic_prompts: list[str], honest_prompts: list[str],
                      layer: int) -> Tensor:
    """Mean last-position ``resid_post`` of sycophantic prompts minus that of honest prompts.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        sycophantic_prompts: prompts where the user asserts a claim (any number, any lengths).
        honest_prompts: prompts that ask neutrally (the baseline).
        layer: block whose ``hook_resid_post`` is read.

    Returns:
        ``[d_model]`` difference vector.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"

    def mean_last_state(prompts: list[str]) -> Tensor:
        states = []
        for prompt in prompts:  # one at a time: prompts differ in length
            _, cache = model.run_with_cache(prompt, names_filter=lambda name: name == hook_name)
            states.append(cache[hook_name][0, -1])  # [d_model], the answer position
        return torch.stack(states).mean(0)

    return mean_last_state(sycophantic_prompts) - mean_last_state(honest_prompts)
