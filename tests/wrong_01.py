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
}


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
