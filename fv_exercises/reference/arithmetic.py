"""Reference solutions for 04_arithmetic.

GENERATED from solutions/04_arithmetic/04_arithmetic.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor


def average_function_vector(model, prompts: list[str], heads: list[tuple[int, int]]) -> Tensor:
    """Mean over prompts of the sum of the given heads' outputs at the final position.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        prompts: few-shot prompts (any number, any lengths).
        heads: ``[(layer, head), ...]`` whose outputs are summed.

    Returns:
        ``[d_model]``: mean over prompts of ``sum over heads of z[-1, head] @ W_O[layer, head]``.
    """
    names = {f"blocks.{layer}.attn.hook_z" for layer, _ in heads}
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]
    per_prompt = []
    for prompt in prompts:  # one at a time: prompts differ in length
        _, cache = model.run_with_cache(prompt, names_filter=lambda name: name in names)
        fv = torch.zeros(model.cfg.d_model, device=W_O.device)  # on the model's device
        for layer, head in heads:
            z = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]  # [d_head], final position
            fv = fv + z @ W_O[layer, head]  # this head's output: [d_model]
        per_prompt.append(fv)
    return torch.stack(per_prompt).mean(0)


def decode_vector(model, vector: Tensor, k: int = 10) -> list[str]:
    """The ``k`` tokens a residual-stream vector promotes most, most likely first.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        vector: ``[d_model]``, read as if it were the final residual stream.
        k: number of tokens.

    Returns:
        ``k`` strings, e.g. ``[' cold', ' hot', ...]``: the largest entries of
        ``unembed(ln_final(vector))``, each decoded with ``model.tokenizer.decode([id])``.
    """
    resid = vector[None, None]  # [1, 1, d_model]: one batch, one position
    logits = model.unembed(model.ln_final(resid))[0, 0]  # [d_vocab]
    top = logits.topk(k).indices
    return [model.tokenizer.decode([token_id]) for token_id in top.tolist()]
