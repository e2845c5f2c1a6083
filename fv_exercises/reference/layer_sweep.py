"""Reference solutions for 02_layer_sweep.

GENERATED from solutions/02_layer_sweep/02_layer_sweep.ipynb (cells tagged `export`) by
`python -m fv_exercises.course build`. Do not edit: edit the notebook."""


import torch
from torch import Tensor

from fv_exercises.evaluation import top1_accuracy


def find_task_layer(model, icl_prompt: str, zero_shot_probes: list[str],
                    correct_answers: list[str]) -> dict[int, float]:
    """Zero-shot top-1 accuracy with the ICL prompt's final state added, layer by layer.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        icl_prompt: one few-shot prompt.
        zero_shot_probes: query-only prompts, e.g. ``"Q: big\\nA:"``.
        correct_answers: the answer of each probe, without the leading space.

    Returns:
        ``{layer: accuracy}`` for every layer ``0 .. model.cfg.n_layers - 1``.
    """
    _, icl_cache = model.run_with_cache(icl_prompt, names_filter=lambda name: name.endswith("hook_resid_post"))
    results = {}
    for layer in range(model.cfg.n_layers):
        h = icl_cache[f"blocks.{layer}.hook_resid_post"][0, -1]  # [d_model]: final position
        results[layer] = top1_accuracy(model, zero_shot_probes, correct_answers, add={layer: h})
    return results
