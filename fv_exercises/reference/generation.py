"""Reference solutions for 06_generation.

GENERATED from solutions/06_generation/06_generation.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor


def generate_with_function_vector(model, prompt: str, fv: Tensor, layer: int, max_tokens: int = 10) -> str:
    """Greedy generation with ``fv`` added to ``blocks.{layer}.hook_resid_post``.

    The intervention: ``fv`` is added at the prompt's final position and at every generated
    position, each once, when that position is computed (a KV cache computes one new position
    per step and keeps the earlier ones).

    Args:
        model: a TransformerLens ``TransformerBridge``.
        prompt: the text to continue, tokenized with ``model.to_tokens(prompt)``: ``[1, seq]``.
        fv: the vector to add, ``[d_model]``.
        layer: block whose ``hook_resid_post`` gets ``fv``.
        max_tokens: at most this many new tokens (an EOS token counts as one).

    Returns:
        The generated text only: ``model.tokenizer.decode(new_tokens)`` as it is (its leading
        space included, nothing stripped), without the prompt and without the EOS token that
        ends generation.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"

    def add_fv(resid: Tensor, hook) -> Tensor:
        # With the cache a pass computes only its new positions: the whole prompt first (so
        # [:, -1] is the prompt's final position), then one generated token per step.
        resid[:, -1] += fv
        return resid

    tokens = model.to_tokens(prompt)  # [1, seq]
    cache = None
    new_tokens: list[int] = []
    for _ in range(max_tokens):
        logits, cache = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, add_fv)],
                                             past_key_values=cache, return_type="logits_and_cache")
        next_token = int(logits[0, -1].argmax())
        if next_token == model.tokenizer.eos_token_id:
            break
        new_tokens.append(next_token)
        tokens = torch.tensor([[next_token]], device=tokens.device)  # only this position next
    return model.tokenizer.decode(new_tokens)
