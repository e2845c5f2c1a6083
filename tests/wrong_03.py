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


def fth_top10(model, mean_z, prompts, answers, layers=None):
    """Keeps only the 10 best heads, as the notebook later does for the function vector."""
    return _scan(model, mean_z, prompts, answers, layers)[:10]


def fth_bos_ids(model, mean_z, prompts, answers, layers=None):
    ids = [model.tokenizer.encode(" " + a)[0] for a in answers]  # [BOS, ...][0]: the BOS id
    base = [model(p)[0, -1].softmax(-1)[i] for p, i in zip(prompts, ids)]
    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook, layer=layer, head=head):
                z[:, -1, head] = mean_z[layer, head]
                return z

            gains = [model.run_with_hooks(p, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, -1]
                     .softmax(-1)[i] - b for p, i, b in zip(prompts, ids, base)]
            effects[(layer, head)] = torch.stack(gains).mean().item()
    return sorted(effects.items(), key=lambda kv: -kv[1])


def fth_argmax_hits(model, mean_z, prompts, answers, layers=None):
    ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    base = [float(model(p)[0, -1].argmax() == i) for p, i in zip(prompts, ids)]
    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook, layer=layer, head=head):
                z[:, -1, head] = mean_z[layer, head]
                return z

            hits = [float(model.run_with_hooks(p, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, -1]
                          .argmax() == i) - b for p, i, b in zip(prompts, ids, base)]
            effects[(layer, head)] = sum(hits) / len(hits)
    return sorted(effects.items(), key=lambda kv: -kv[1])


def fth_batched_padding(model, mean_z, prompts, answers, layers=None):
    """All prompts in one batch: `[:, -1]` is padding for the shorter prompts."""
    ids = torch.tensor([model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers])
    rows = torch.arange(len(prompts))
    base = model(prompts)[:, -1].softmax(-1)[rows, ids]
    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook, layer=layer, head=head):
                z[:, -1, head] = mean_z[layer, head]
                return z

            probs = model.run_with_hooks(prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[:, -1].softmax(-1)
            effects[(layer, head)] = (probs[rows, ids] - base).mean().item()
    return sorted(effects.items(), key=lambda kv: -kv[1])


_SEEN = {}


def fth_global_cache(model, mean_z, prompts, answers, layers=None):
    """Memoises the corrupted baseline probabilities across calls."""
    if "base" not in _SEEN:
        ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
        _SEEN["base"] = [model(p)[0, -1].softmax(-1)[i] for p, i in zip(prompts, ids)]
    ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    effects = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook, layer=layer, head=head):
                z[:, -1, head] = mean_z[layer, head]
                return z

            gains = [model.run_with_hooks(p, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, -1]
                     .softmax(-1)[i] - b for p, i, b in zip(prompts, ids, _SEEN["base"])]
            effects[(layer, head)] = torch.stack(gains).mean().item()
    return sorted(effects.items(), key=lambda kv: -kv[1])


FIND_TASK_HEADS.update({
    fth_top10: "return EVERY head",
    fth_bos_ids: "special token",
    fth_argmax_hits: "top-1 hits",
    fth_batched_padding: "padded on the right",
    fth_global_cache: "survives into the next",
})


def fth_correct_batched_heads(model, mean_z, prompts, answers, layers=None):
    """Each prompt once, all heads of a layer as one batch (row r patches head r), float64 scores."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    H = model.cfg.n_heads
    effects = {}
    for prompt, answer in zip(prompts, answers):
        i = model.tokenizer.encode(" " + answer, add_special_tokens=False)[0]
        tokens = model.to_tokens(prompt)
        p0 = model(tokens)[0, -1].double().softmax(-1)[i]
        for layer in layers:
            def patch(z, hook, layer=layer):
                z = z.clone()
                z[torch.arange(H), -1, torch.arange(H)] = mean_z[layer]
                return z

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]):
                probs = model(tokens.repeat(H, 1))[:, -1].double().softmax(-1)[:, i]
            for head in range(H):
                effects[(layer, head)] = effects.get((layer, head), 0.0) + (probs[head] - p0).item() / len(prompts)
    return sorted(effects.items(), key=lambda kv: -kv[1])


FIND_TASK_HEADS_CORRECT = [fth_correct_batched_heads]
