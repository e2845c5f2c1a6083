"""Plausible wrong learner implementations for notebook 01, each with the message it must get.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


# ---------------------------------------------------------------- find_task_vector

def ftv_first_position(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, 0]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_all_positions(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        return resid + h

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_wrong_layer(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer - 1)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_resid_pre(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[f"blocks.{layer}.hook_resid_pre"][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_hook_returns_nothing(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid = resid.clone()  # edits a copy and forgets to return it
        resid[:, -1] += h

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_leaks_hook(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    model.add_hook(_post(layer), hook)  # never removed
    return model(zero_shot_prompt)


_STATE = {}


def ftv_accumulates(model, icl_prompt, zero_shot_prompt, layer):
    """Keeps a running vector between calls: the second call differs from the first."""
    _, cache = model.run_with_cache(icl_prompt)
    h = _STATE.setdefault("h", torch.zeros_like(cache[_post(layer)][:, -1]))
    h += cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])


def ftv_returns_last_logits(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])[0, -1]


def ftv_crashes(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    return cache["resid_post_typo", layer]


def ftv_stub(model, icl_prompt, zero_shot_prompt, layer):
    raise NotImplementedError()


_CACHED = {}


def ftv_global_cache(model, icl_prompt, zero_shot_prompt, layer):
    """Computes h once and keeps it in a global: the second call (other prompt, layer) reuses it."""
    if "h" not in _CACHED:
        _, cache = model.run_with_cache(icl_prompt)
        _CACHED["h"], _CACHED["layer"] = cache[_post(layer)][:, -1], layer
    h, at = _CACHED["h"], _CACHED["layer"]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(at), hook)])


def ftv_returns_none(model, icl_prompt, zero_shot_prompt, layer):
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)])  # forgot `return`


def ftv_edits_weights(model, icl_prompt, zero_shot_prompt, layer):
    """Correct logits, but it 'cleans up' by scaling a weight in place (and never undoes it)."""
    out = ftv_correct_hooks_context(model, icl_prompt, zero_shot_prompt, layer)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    return out


FIND_TASK_VECTOR = {
    ftv_first_position: "FIRST position",
    ftv_all_positions: "EVERY position",
    ftv_wrong_layer: "read from layer",
    ftv_resid_pre: "hook_resid_pre",
    ftv_hook_returns_nothing: "no vector was added",
    ftv_leaks_hook: "left hooks registered",
    ftv_accumulates: "twice with the same inputs",
    ftv_returns_last_logits: "expected (1,",
    ftv_crashes: "raised",
    ftv_stub: "not implemented yet",
    ftv_global_cache: "survives into the next",
    ftv_returns_none: "returned None",
    ftv_edits_weights: "changed the model's weights in place",
}


# Correct, written differently from the reference: the check must accept every one.

def ftv_correct_hooks_context(model, icl_prompt, zero_shot_prompt, layer):
    """`with model.hooks(...)` instead of run_with_hooks; a clone instead of an in-place edit."""
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][0, -1]

    def hook(resid, hook):
        resid = resid.clone()
        resid[:, -1] = resid[:, -1] + h
        return resid

    with model.hooks(fwd_hooks=[(_post(layer), hook)]):
        return model(zero_shot_prompt)


def ftv_correct_resid_pre_next(model, icl_prompt, zero_shot_prompt, layer):
    """`hook_resid_pre` of block layer + 1 is the same tensor as `hook_resid_post` of layer."""
    name = f"blocks.{layer + 1}.hook_resid_pre"
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda n: n == name)
    h = cache[name][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(name, hook)])


def ftv_correct_float64(model, icl_prompt, zero_shot_prompt, layer):
    """The vector kept in float64; logits returned in float64."""
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1].double()

    def hook(resid, hook):
        return (resid.double() + torch.nn.functional.pad(h[:, None], (0, 0, resid.shape[1] - 1, 0))).float()

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(_post(layer), hook)]).double()


FIND_TASK_VECTOR_CORRECT = [ftv_correct_hooks_context, ftv_correct_resid_pre_next, ftv_correct_float64]


# ---------------------------------------------------------------- mean_task_vector

def _states(model, prompts, layer, pos=-1, name=None):
    name = name or _post(layer)
    return torch.stack([model.run_with_cache(p)[1][name][0, pos] for p in prompts])


def mtv_sum(model, icl_prompts, zero_shot_prompts, layer):
    return _states(model, icl_prompts, layer).sum(0) - _states(model, zero_shot_prompts, layer).sum(0)


def mtv_no_baseline(model, icl_prompts, zero_shot_prompts, layer):
    return _states(model, icl_prompts, layer).mean(0)


def mtv_reversed(model, icl_prompts, zero_shot_prompts, layer):
    return _states(model, zero_shot_prompts, layer).mean(0) - _states(model, icl_prompts, layer).mean(0)


def mtv_first_position(model, icl_prompts, zero_shot_prompts, layer):
    return _states(model, icl_prompts, layer, 0).mean(0) - _states(model, zero_shot_prompts, layer, 0).mean(0)


def mtv_all_positions(model, icl_prompts, zero_shot_prompts, layer):
    def mean_all(prompts):
        return torch.stack([model.run_with_cache(p)[1][_post(layer)][0].mean(0) for p in prompts]).mean(0)

    return mean_all(icl_prompts) - mean_all(zero_shot_prompts)


def mtv_wrong_layer(model, icl_prompts, zero_shot_prompts, layer):
    return _states(model, icl_prompts, layer + 1).mean(0) - _states(model, zero_shot_prompts, layer + 1).mean(0)


def mtv_resid_pre(model, icl_prompts, zero_shot_prompts, layer):
    pre = f"blocks.{layer}.hook_resid_pre"
    return (_states(model, icl_prompts, layer, name=pre).mean(0)
            - _states(model, zero_shot_prompts, layer, name=pre).mean(0))


def mtv_fixed_count(model, icl_prompts, zero_shot_prompts, layer):
    """Divides both sums by the number of ICL prompts: right only when the lists match."""
    n = len(icl_prompts)
    return (_states(model, icl_prompts, layer).sum(0) - _states(model, zero_shot_prompts, layer).sum(0)) / n


def mtv_keeps_batch_dim(model, icl_prompts, zero_shot_prompts, layer):
    return (_states(model, icl_prompts, layer).mean(0) - _states(model, zero_shot_prompts, layer).mean(0))[None]


MEAN_TASK_VECTOR = {
    mtv_sum: "SUMMED",
    mtv_no_baseline: "without subtracting",
    mtv_reversed: "wrong way round",
    mtv_first_position: "FIRST position",
    mtv_all_positions: "all positions",
    mtv_wrong_layer: "you read layer",
    mtv_resid_pre: "hook_resid_pre",
    mtv_fixed_count: "2 ICL prompts vs",
    mtv_keeps_batch_dim: "expected (576,)",
}


def mtv_batched_padding(model, icl_prompts, zero_shot_prompts, layer):
    """One batch per list, `[:, -1]`: reads padding for every prompt shorter than the longest."""
    def mean_last(prompts):
        _, cache = model.run_with_cache(prompts)
        return cache[_post(layer)][:, -1].mean(0)

    return mean_last(icl_prompts) - mean_last(zero_shot_prompts)


def mtv_unit_norm(model, icl_prompts, zero_shot_prompts, layer):
    v = _states(model, icl_prompts, layer).mean(0) - _states(model, zero_shot_prompts, layer).mean(0)
    return v / v.norm()


_MTV_CACHE = {}


def mtv_global_cache(model, icl_prompts, zero_shot_prompts, layer):
    """Caches the zero-shot baseline in a global (expensive, so 'why compute it twice?')."""
    if "baseline" not in _MTV_CACHE:
        _MTV_CACHE["baseline"] = _states(model, zero_shot_prompts, layer).mean(0)
    return _states(model, icl_prompts, layer).mean(0) - _MTV_CACHE["baseline"]


MEAN_TASK_VECTOR.update({
    mtv_batched_padding: "padded on the right",
    mtv_unit_norm: "unit length",
    mtv_global_cache: "survives into the next",
})


def mtv_correct_batched(model, icl_prompts, zero_shot_prompts, layer):
    """Batched, indexing each row at its own last real token."""
    def mean_last(prompts):
        tokens = model.to_tokens(prompts)  # right-padded
        last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
        _, cache = model.run_with_cache(tokens)
        return cache[_post(layer)][torch.arange(len(prompts)), last].mean(0)

    return mean_last(icl_prompts) - mean_last(zero_shot_prompts)


def mtv_correct_hooks_float64(model, icl_prompts, zero_shot_prompts, layer):
    """Records states with a hook inside `with model.hooks(...)`, accumulates in float64."""
    def mean_last(prompts):
        total = torch.zeros(model.cfg.d_model, dtype=torch.float64)
        for p in prompts:
            seen = {}

            def save(resid, hook):
                seen["x"] = resid[0, -1].double()

            with model.hooks(fwd_hooks=[(_post(layer), save)]):
                model(p)
            total += seen["x"]
        return total / len(prompts)

    return mean_last(icl_prompts) - mean_last(zero_shot_prompts)


MEAN_TASK_VECTOR_CORRECT = [mtv_correct_batched, mtv_correct_hooks_float64]


# ---------------------------------------------------------------- mistakes the hidden cases must catch too

def ftv_resid_pre_same_layer(model, icl_prompt, zero_shot_prompt, layer):
    """Reads `hook_resid_post` of the layer but adds h at `hook_resid_pre` of the SAME layer
    (the residual stream before the block: one layer too early)."""
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)])


def ftv_bos(model, icl_prompt, zero_shot_prompt, layer):
    """Tokenizes both prompts with a BOS token the course does not use."""
    _, cache = model.run_with_cache(model.to_tokens(icl_prompt, prepend_bos=True))
    h = cache[_post(layer)][:, -1]

    def hook(resid, hook):
        resid[:, -1] += h
        return resid

    return model.run_with_hooks(model.to_tokens(zero_shot_prompt, prepend_bos=True),
                                fwd_hooks=[(_post(layer), hook)])


def mtv_zip_pairs(model, icl_prompts, zero_shot_prompts, layer):
    """One difference per (ICL, zero-shot) pair: `zip` stops at the shorter list."""
    diffs = [_states(model, [a], layer)[0] - _states(model, [b], layer)[0]
             for a, b in zip(icl_prompts, zero_shot_prompts)]
    return torch.stack(diffs).mean(0)


def mtv_last_prompt_only(model, icl_prompts, zero_shot_prompts, layer):
    """The state is overwritten in the loop instead of collected: only the last prompt counts."""
    for p in icl_prompts:
        h_icl = model.run_with_cache(p)[1][_post(layer)][0, -1]
    for p in zero_shot_prompts:
        h_zero = model.run_with_cache(p)[1][_post(layer)][0, -1]
    return h_icl - h_zero


FIND_TASK_VECTOR.update({
    ftv_resid_pre_same_layer: "hook_resid_pre",
    ftv_bos: "a BOS token was prepended",
})
MEAN_TASK_VECTOR.update({
    mtv_zip_pairs: "`zip` stops at the shorter list",
    mtv_last_prompt_only: "only the LAST prompt of each list counts",
})
