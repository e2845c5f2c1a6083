"""Reference solutions for 05_ablation.

GENERATED from solutions/05_ablation/05_ablation.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor


def ablate_function_vector(model, prompt: str, fv: Tensor, layer: int) -> Tensor:
    """Logits of ``prompt`` with the direction of ``fv`` removed from the residual stream.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        prompt: e.g. a few-shot prompt ``"Q: hot\\nA: cold\\n\\nQ: big\\nA:"``.
        fv: ``[d_model]`` vector (any norm); only its direction matters. Not modified.
        layer: block whose ``hook_resid_post`` loses the direction, at every position.

    Returns:
        logits ``[1, seq_len, d_vocab]``.
    """
    hook_name = f"blocks.{layer}.hook_resid_post"
    fv_unit = fv / fv.norm()  # a new tensor: the caller's fv is left as it was

    def remove_fv(resid: Tensor, hook) -> Tensor:
        coefficient = resid @ fv_unit  # [batch, pos]: the component along fv at each position
        return resid - coefficient[..., None] * fv_unit  # [batch, pos, 1] * [d_model]

    return model.run_with_hooks(prompt, fwd_hooks=[(hook_name, remove_fv)])
