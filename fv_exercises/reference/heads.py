"""Reference solutions for 03_heads.

GENERATED from solutions/03_heads/03_heads.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor


def find_task_heads(
    model,
    mean_z: Tensor,
    corrupted_prompts: list[str],
    answers: list[str],
    layers: list[int] | None = None,
) -> list[tuple[tuple[int, int], float]]:
    """Each head's causal effect on shuffled-label prompts, largest first.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        mean_z: ``[n_layers, n_heads, d_head]`` mean final-position z over clean prompts.
        corrupted_prompts: shuffled-label few-shot prompts.
        answers: the correct answer of each prompt (scored on the first token of ``" " + answer``).
        layers: layers to scan (default: all).

    Returns:
        ``[((layer, head), mean gain in P(answer)), ...]`` sorted by gain, descending.
    """
    layers = range(model.cfg.n_layers) if layers is None else layers
    answer_ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    p_corrupted = [model(p)[0, -1].softmax(-1)[i] for p, i in zip(corrupted_prompts, answer_ids)]

    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch_head(z: Tensor, hook) -> Tensor:
                z[:, -1, head] = mean_z[layer, head]  # final position, this head only
                return z

            gains = []
            for prompt, answer_id, p_base in zip(corrupted_prompts, answer_ids, p_corrupted):
                logits = model.run_with_hooks(
                    prompt, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch_head)])
                gains.append(logits[0, -1].softmax(-1)[answer_id] - p_base)
            effects[(layer, head)] = torch.stack(gains).mean().item()
    return sorted(effects.items(), key=lambda item: -item[1])
