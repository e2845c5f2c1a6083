"""Plausible wrong learner implementations of find_task_heads (notebook 03)."""

from __future__ import annotations

import torch


def _scan(model, mean_z, prompts, answers, layers, pos=-1, use_prob=True, subtract=True,
          reduce="mean", space=" ", edit_mean=False, ascending=False):
    ids = [model.tokenizer.encode(space + a, add_special_tokens=False)[0] for a in answers]
    score = (lambda lg, i: lg[0, -1].softmax(-1)[i]) if use_prob else (lambda lg, i: lg[0, -1, i])
    base = [score(model(p), i) for p, i in zip(prompts, ids)]
    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook):
                if edit_mean:
                    mean_z[layer, head] *= 1.0001  # "normalises" the stored means in place
                z[:, pos, head] = mean_z[layer, head]
                return z

            gains = torch.stack([score(model.run_with_hooks(
                p, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]), i) - (b if subtract else 0)
                for p, i, b in zip(prompts, ids, base)])
            effects[(layer, head)] = (gains.mean() if reduce == "mean" else gains.sum()).item()
    return sorted(effects.items(), key=lambda kv: kv[1] if ascending else -kv[1])


def fth_first_position(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, pos=0)


def fth_all_positions(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, pos=slice(None))


def fth_logits(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, use_prob=False)


def fth_no_baseline(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, subtract=False)


def fth_sum(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, reduce="sum")


def fth_no_space(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, space="")


def fth_ascending(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, ascending=True)


def fth_edits_mean(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, edit_mean=True)


def fth_ignores_layers(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, [0])


def fth_dict(model, mean_z, prompts, answers, layers=None):
    return dict(_scan(model, mean_z, prompts, answers, layers))


FIND_TASK_HEADS = {
    fth_first_position: "FIRST position",
    fth_all_positions: "EVERY position",
    fth_logits: "logits, not probabilities",
    fth_no_baseline: "without subtracting",
    fth_sum: "SUMMED",
    fth_no_space: "leading space",
    fth_ascending: "LARGEST first",
    fth_edits_mean: "modified `mean_z` in place",
    fth_ignores_layers: "every head of those layers",
    fth_dict: "should return a list",
}
