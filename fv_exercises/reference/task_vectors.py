"""Reference solutions for 01_task_vectors.

GENERATED from solutions/01_task_vectors/01_task_vectors.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor


def find_task_vector(model, icl_prompt: str, zero_shot_prompt: str, layer: int) -> Tensor:
    """Logits of ``zero_shot_prompt`` with the ICL prompt's final-position state added.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        icl_prompt: few-shot prompt, e.g. ``"Q: hot\\nA: cold\\n\\nQ: big\\nA:"``.
        zero_shot_prompt: the query alone, e.g. ``"Q: big\\nA:"``.
        layer: block whose ``hook_resid_post`` is read (ICL run) and written (zero-shot run).

    Returns:
        logits ``[1, seq_len(zero_shot_prompt), d_vocab]``.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"
    _, icl_cache = model.run_with_cache(icl_prompt, names_filter=lambda name: name == hook_name)
    h_task = icl_cache[hook_name][:, -1]  # [1, d_model]: the final position

    def add_task_vector(resid: Tensor, hook) -> Tensor:
        resid[:, -1] += h_task  # final position only; earlier positions untouched
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(hook_name, add_task_vector)])


def mean_task_vector(model, icl_prompts: list[str], zero_shot_prompts: list[str], layer: int) -> Tensor:
    """Mean final-position ``resid_post`` of ICL prompts minus that of zero-shot prompts.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        icl_prompts: few-shot prompts (any number, any lengths).
        zero_shot_prompts: query-only prompts (the baseline).
        layer: block whose ``hook_resid_post`` is read.

    Returns:
        ``[d_model]`` task vector.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"

    def mean_final_state(prompts: list[str]) -> Tensor:
        states = []
        for prompt in prompts:  # one at a time: prompts differ in length
            _, cache = model.run_with_cache(prompt, names_filter=lambda name: name == hook_name)
            states.append(cache[hook_name][0, -1])  # [d_model]
        return torch.stack(states).mean(0)

    return mean_final_state(icl_prompts) - mean_final_state(zero_shot_prompts)
