"""Reference solutions for 07_nnsight.

GENERATED from solutions/07_nnsight/07_nnsight.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor

from fv_exercises.nnsight_model import decoder_layers


def nnsight_task_vector_logits(nn_model, icl_prompt: str, zero_shot_prompt: str, layer: int) -> Tensor:
    """Logits of ``zero_shot_prompt`` with the ICL prompt's final-position state added, in nnsight.

    Args:
        nn_model: an nnsight model (``load_nnsight_model()``).
        icl_prompt: few-shot prompt, e.g. ``"Q: hot\\nA: cold\\n\\nQ: big\\nA:"``.
        zero_shot_prompt: the query alone, e.g. ``"Q: big\\nA:"``.
        layer: decoder layer whose output is read (ICL run) and written (zero-shot run).

    Returns:
        logits ``[1, seq_len(zero_shot_prompt), d_vocab]``.
    """
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h_task = layers[layer].output[:, -1].save()  # [1, d_model]: the final position
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h_task  # final position only, while the forward pass runs
        logits = nn_model.output.logits.save()
    return logits


def nnsight_generate_with_vector(nn_model, prompt: str, vector: Tensor, layer: int, n_tokens: int) -> Tensor:
    """Greedy continuation of ``prompt`` with ``vector`` added at every generation step.

    Args:
        nn_model: an nnsight model (``load_nnsight_model()``).
        prompt: the text to continue.
        vector: ``[d_model]``, added to ``layer``'s output at the last position of each forward pass.
        layer: decoder layer to add it to.
        n_tokens: exactly this many new tokens (no early stop at end-of-sequence).

    Returns:
        the new token ids, LongTensor ``[n_tokens]`` (without the prompt).
    """
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:  # one forward pass per new token
            layers[layer].output[:, -1] += vector  # pass 0: the prompt's last token; then each new token
        ids = tracer.result.save()  # [1, prompt_len + n_tokens]
    return ids[0, -n_tokens:]
