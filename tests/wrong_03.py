"""Plausible wrong learner implementations of find_task_heads (notebook 03)."""

from __future__ import annotations

import torch


_BASE_CACHE = {}


def _scan(model, mean_z, prompts, answers, layers, pos=-1, use_prob=True, subtract=True,
          reduce="mean", space=" ", edit_mean=False, ascending=False, hits=False, bos=False,
          cache_base=False):
    """The seed's scan with one mistake switched on. Written batched (row h of a layer's batch
    patches head h) only to keep the tests fast: the numbers equal the one-head-at-a-time loop."""
    H = model.cfg.n_heads
    ids = [model.tokenizer.encode(space + a, add_special_tokens=False)[0] for a in answers]
    if bos:  # `tokenizer.encode(' ' + answer)[0]`: with special tokens, index 0 is BOS
        ids = [model.tokenizer.encode(space + a)[0] for a in answers]
    if hits:
        score = lambda lg, i: (lg[:, -1].argmax(-1) == i).float()  # noqa: E731
    elif use_prob:
        score = lambda lg, i: lg[:, -1].softmax(-1)[:, i]  # noqa: E731
    else:
        score = lambda lg, i: lg[:, -1, i]  # noqa: E731
    effects = {}
    for layer in layers:
        gains = []
        for p, i in zip(prompts, ids):
            tokens = model.to_tokens(p)
            if cache_base:  # memoised across calls, keyed by the prompt's position only
                base = _BASE_CACHE.setdefault(len(gains), score(model(tokens), i))
            else:
                base = score(model(tokens), i)

            def patch(z, hook, layer=layer):
                if edit_mean:
                    mean_z[layer] *= 1.0001  # "normalises" the stored means in place
                value = mean_z[layer][:, None] if isinstance(pos, slice) else mean_z[layer]
                z[torch.arange(H), pos, torch.arange(H)] = value
                return z

            patched = score(model.run_with_hooks(tokens.repeat(H, 1), fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]), i)
            gains.append(patched - (base if subtract else 0))
        g = torch.stack(gains)  # [n_prompts, H]
        for head in range(H):
            effects[(layer, head)] = (g[:, head].mean() if reduce == "mean" else g[:, head].sum()).item()
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
    return _scan(model, mean_z, prompts, answers, layers, bos=True)


def fth_argmax_hits(model, mean_z, prompts, answers, layers=None):
    return _scan(model, mean_z, prompts, answers, layers, hits=True)


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


def fth_global_cache(model, mean_z, prompts, answers, layers=None):
    """Memoises the corrupted baseline probabilities across calls."""
    return _scan(model, mean_z, prompts, answers, layers, cache_base=True)


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


# ---------------------------------------------------------------- mistakes the hidden cases must catch too

def fth_one_baseline(model, mean_z, prompts, answers, layers=None):
    """Measures every prompt's gain against the FIRST prompt's unpatched probability."""
    ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    p_base = model(prompts[0])[0, -1].softmax(-1)[ids[0]]  # computed once, reused for every prompt
    H = model.cfg.n_heads
    effects = {}
    for layer in layers:
        gains = []
        for p, i in zip(prompts, ids):
            def patch(z, hook, layer=layer):
                z[torch.arange(H), -1, torch.arange(H)] = mean_z[layer]
                return z

            tokens = model.to_tokens(p).repeat(H, 1)
            probs = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[:, -1].softmax(-1)
            gains.append(probs[:, i] - p_base)
        g = torch.stack(gains)
        for head in range(H):
            effects[(layer, head)] = g[:, head].mean().item()
    return sorted(effects.items(), key=lambda kv: -kv[1])


FIND_TASK_HEADS.update({
    fth_one_baseline: "measured against ONE baseline",
})
