"""Plausible wrong learner implementations for notebook 08, each with the message it must get,
and correct implementations written differently, which the checks must accept.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


def _last_states(model, prompts, layer, position=-1, name=None, **kw):
    name = name or _post(layer)
    return torch.stack([model.run_with_cache(p, **kw)[1][name][0, position] for p in prompts])


# ---------------------------------------------------------------- sycophancy_vector

def sv_sum(model, sycophantic_prompts, honest_prompts, layer):
    return (_last_states(model, sycophantic_prompts, layer).sum(0)
            - _last_states(model, honest_prompts, layer).sum(0))


def sv_no_baseline(model, sycophantic_prompts, honest_prompts, layer):
    return _last_states(model, sycophantic_prompts, layer).mean(0)


def sv_reversed(model, sycophantic_prompts, honest_prompts, layer):
    return (_last_states(model, honest_prompts, layer).mean(0)
            - _last_states(model, sycophantic_prompts, layer).mean(0))


def sv_first_position(model, sycophantic_prompts, honest_prompts, layer):
    return (_last_states(model, sycophantic_prompts, layer, 0).mean(0)
            - _last_states(model, honest_prompts, layer, 0).mean(0))


def sv_all_positions(model, sycophantic_prompts, honest_prompts, layer):
    def mean_all(prompts):
        return torch.stack([model.run_with_cache(p)[1][_post(layer)][0].mean(0)
                            for p in prompts]).mean(0)

    return mean_all(sycophantic_prompts) - mean_all(honest_prompts)


def sv_padding(model, sycophantic_prompts, honest_prompts, layer):
    """One batch per list, `[:, -1]`: padding for every prompt shorter than the longest."""
    def mean_last(prompts):
        _, cache = model.run_with_cache(prompts)
        return cache[_post(layer)][:, -1].mean(0)

    return mean_last(sycophantic_prompts) - mean_last(honest_prompts)


def sv_fixed_count(model, sycophantic_prompts, honest_prompts, layer):
    n = len(sycophantic_prompts)
    return (_last_states(model, sycophantic_prompts, layer).sum(0)
            - _last_states(model, honest_prompts, layer).sum(0)) / n


def sv_resid_pre(model, sycophantic_prompts, honest_prompts, layer):
    pre = f"blocks.{layer}.hook_resid_pre"
    return (_last_states(model, sycophantic_prompts, layer, name=pre).mean(0)
            - _last_states(model, honest_prompts, layer, name=pre).mean(0))


def sv_bos(model, sycophantic_prompts, honest_prompts, layer):
    """Prepends BOS to a chat prompt that already starts with `<|im_start|>`."""
    return (_last_states(model, sycophantic_prompts, layer, prepend_bos=True).mean(0)
            - _last_states(model, honest_prompts, layer, prepend_bos=True).mean(0))


def sv_unit_norm(model, sycophantic_prompts, honest_prompts, layer):
    v = (_last_states(model, sycophantic_prompts, layer).mean(0)
         - _last_states(model, honest_prompts, layer).mean(0))
    return v / v.norm()


def sv_keeps_batch_dim(model, sycophantic_prompts, honest_prompts, layer):
    return (_last_states(model, sycophantic_prompts, layer).mean(0)
            - _last_states(model, honest_prompts, layer).mean(0))[None]


_SV_CACHE = {}


def sv_global_cache(model, sycophantic_prompts, honest_prompts, layer):
    """Caches the honest baseline in a global ('why compute it twice?')."""
    if "honest" not in _SV_CACHE:
        _SV_CACHE["honest"] = _last_states(model, honest_prompts, layer).mean(0)
    return _last_states(model, sycophantic_prompts, layer).mean(0) - _SV_CACHE["honest"]


def sv_stub(model, sycophantic_prompts, honest_prompts, layer):
    raise NotImplementedError()


SYCOPHANCY_VECTOR = {
    sv_sum: "SUMMED",
    sv_no_baseline: "without subtracting",
    sv_reversed: "wrong way round",
    sv_first_position: "FIRST position",
    sv_all_positions: "all positions",
    sv_padding: "padded on the right",
    sv_fixed_count: "number of sycophantic prompts",
    sv_resid_pre: "hook_resid_pre",
    sv_bos: "BOS token",
    sv_unit_norm: "unit length",
    sv_keeps_batch_dim: "expected (576,)",
    sv_global_cache: "something from the first call survives",
    sv_stub: "not implemented yet",
}


def sv_correct_batched(model, sycophantic_prompts, honest_prompts, layer):
    """Batched, each row read at its own last real token."""
    def mean_last(prompts):
        tokens = model.to_tokens(prompts)  # right-padded
        last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
        _, cache = model.run_with_cache(tokens)
        return cache[_post(layer)][torch.arange(len(prompts)), last].mean(0)

    return mean_last(sycophantic_prompts) - mean_last(honest_prompts)


def sv_correct_hooks_float64(model, sycophantic_prompts, honest_prompts, layer):
    """Records states with a hook inside `with model.hooks(...)`; float64; the next block's
    `hook_resid_pre` (the same tensor) when there is one."""
    name = (f"blocks.{layer + 1}.hook_resid_pre" if layer + 1 < model.cfg.n_layers
            else _post(layer))

    def mean_last(prompts):
        total = torch.zeros(model.cfg.d_model, dtype=torch.float64)
        for p in prompts:
            seen = {}

            def save(resid, hook):
                seen["x"] = resid[0, -1].double()

            with model.hooks(fwd_hooks=[(name, save)]):
                model(p)
            total += seen["x"]
        return total / len(prompts)

    return mean_last(sycophantic_prompts) - mean_last(honest_prompts)


SYCOPHANCY_VECTOR_CORRECT = [sv_correct_batched, sv_correct_hooks_float64]


# ---------------------------------------------------------------- steered_agreement

def _share(logits_row, f, t):
    probs = logits_row.softmax(-1)
    return probs[f] / (probs[f] + probs[t])


def _run(model, prompts, layer, make_hook, read=_share, **kw):
    out = []
    for text, start, f, t in zip(prompts.texts, prompts.steer_from, prompts.false_ids,
                                 prompts.true_ids):
        logits = model.run_with_hooks(text, fwd_hooks=[(_post(layer), make_hook(start))], **kw)
        out.append(read(logits[0, -1], f, t))
    return torch.stack(out)


def sa_last_only(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, -1] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make)


def sa_every_position(model, prompts, vector, layer, multiplier):
    def make(start):
        return lambda resid, hook: resid + multiplier * vector
    return _run(model, prompts, layer, make)


def sa_sign_flipped(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] -= multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make)


def sa_ignores_multiplier(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += vector
            return resid
        return hook
    return _run(model, prompts, layer, make)


def sa_unnormalised(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make, read=lambda row, f, t: row.softmax(-1)[f])


def sa_true_share(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make, read=lambda row, f, t: _share(row, t, f))


def sa_log_ratio(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make,
                read=lambda row, f, t: row.log_softmax(-1)[f] - row.log_softmax(-1)[t])


def sa_padding(model, prompts, vector, layer, multiplier):
    """Batched, steering each row from its own start, but reading `[:, -1]` of padded rows."""
    tokens = model.to_tokens(prompts.texts)
    starts = torch.tensor(prompts.steer_from)

    def hook(resid, hook):
        after = torch.arange(resid.shape[1])[None, :, None] >= starts[:, None, None]
        return resid + after * (multiplier * vector)

    logits = model.run_with_hooks(tokens, fwd_hooks=[(_post(layer), hook)])
    return torch.stack([_share(logits[b, -1], f, t)
                        for b, (f, t) in enumerate(zip(prompts.false_ids, prompts.true_ids))])


def sa_bos(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make, prepend_bos=True)


def sa_late_start(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start + 1:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make)


def sa_wrong_layer(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer + 1, make)


def sa_edits_vector(model, prompts, vector, layer, multiplier):
    """Scales the caller's vector in place ("it is mine now")."""
    vector *= multiplier

    def make(start):
        def hook(resid, hook):
            resid[:, start:] += vector
            return resid
        return hook
    return _run(model, prompts, layer, make)


def sa_no_return(model, prompts, vector, layer, multiplier):
    def make(start):
        def hook(resid, hook):
            resid = resid.clone()
            resid[:, start:] += multiplier * vector  # edits a copy, returns nothing
        return hook
    return _run(model, prompts, layer, make)


_SA_STATE = {}


def sa_global_vector(model, prompts, vector, layer, multiplier):
    """Keeps the first steering vector (and layer) in a global and reuses it."""
    if "v" not in _SA_STATE:
        _SA_STATE["v"], _SA_STATE["layer"] = multiplier * vector, layer
    v, at = _SA_STATE["v"], _SA_STATE["layer"]

    def make(start):
        def hook(resid, hook):
            resid[:, start:] += v
            return resid
        return hook
    return _run(model, prompts, at, make)


def sa_leaks_hook(model, prompts, vector, layer, multiplier):
    out = []
    for text, start, f, t in zip(prompts.texts, prompts.steer_from, prompts.false_ids,
                                 prompts.true_ids):
        def hook(resid, hook, start=start):
            resid[:, start:] += multiplier * vector
            return resid

        model.add_hook(_post(layer), hook)  # never removed
        out.append(_share(model(text)[0, -1], f, t))
    return torch.stack(out)


STEERED_AGREEMENT = {
    sa_last_only: "LAST position only",
    sa_every_position: "EVERY position",
    sa_sign_flipped: "sign is flipped",
    sa_ignores_multiplier: "multiplier was ignored",
    sa_unnormalised: "P(false answer) itself",
    sa_true_share: "TRUE answer's share",
    sa_log_ratio: "outside [0, 1]",
    sa_padding: "padded on the right",
    sa_bos: "BOS token",
    sa_late_start: "one position too late",
    sa_wrong_layer: "you steered layer",
    sa_edits_vector: "in place",
    sa_no_return: "nothing was added",
    sa_global_vector: "something from the first call survives",
    sa_leaks_hook: "left hooks registered",
}


def sa_correct_batched(model, prompts, vector, layer, multiplier):
    """One right-padded batch; each row steered from its own start and read at its own end."""
    tokens = model.to_tokens(prompts.texts)
    last = torch.tensor([model.to_tokens(t).shape[1] - 1 for t in prompts.texts])
    starts = torch.tensor(prompts.steer_from)

    def hook(resid, hook):
        after = torch.arange(resid.shape[1])[None, :, None] >= starts[:, None, None]
        return torch.where(after, resid + multiplier * vector, resid)

    logits = model.run_with_hooks(tokens, fwd_hooks=[(_post(layer), hook)])
    rows = logits[torch.arange(len(last)), last]
    two = torch.stack([rows[torch.arange(len(last)), torch.tensor(prompts.false_ids)],
                       rows[torch.arange(len(last)), torch.tensor(prompts.true_ids)]], dim=1)
    return two.softmax(-1)[:, 0]  # softmax over the two logits: the same share


def sa_correct_hooks_float64(model, prompts, vector, layer, multiplier):
    """`with model.hooks(...)`, the next block's `hook_resid_pre`, float64 arithmetic."""
    name = (f"blocks.{layer + 1}.hook_resid_pre" if layer + 1 < model.cfg.n_layers
            else _post(layer))
    out = []
    for text, start, f, t in zip(prompts.texts, prompts.steer_from, prompts.false_ids,
                                 prompts.true_ids):
        def hook(resid, hook, start=start):
            steered = resid.double()
            steered[:, start:] = steered[:, start:] + multiplier * vector.double()
            return steered.to(resid.dtype)

        with model.hooks(fwd_hooks=[(name, hook)]):
            logp = model(text)[0, -1].double().log_softmax(-1)
        out.append(torch.sigmoid(logp[f] - logp[t]))
    return torch.stack(out)


STEERED_AGREEMENT_CORRECT = [sa_correct_batched, sa_correct_hooks_float64]


# ---------------------------------------------------------------- mistakes whose message named another cause

def sv_last_prompt_only(model, sycophantic_prompts, honest_prompts, layer):
    """The state is overwritten in the loop: only the last prompt of each list counts."""
    for p in sycophantic_prompts:
        syc = model.run_with_cache(p)[1][_post(layer)][0, -1]
    for p in honest_prompts:
        honest = model.run_with_cache(p)[1][_post(layer)][0, -1]
    return syc - honest


def sa_late_binding(model, prompts, vector, layer, multiplier):
    """Builds one hook per prompt in a loop, then runs them: each hook reads `start` when it runs,
    after the loop, so every prompt is steered from the LAST prompt's `steer_from`."""
    hooks = []
    for start in prompts.steer_from:
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        hooks.append(hook)
    out = []
    for text, hook, f, t in zip(prompts.texts, hooks, prompts.false_ids, prompts.true_ids):
        logits = model.run_with_hooks(text, fwd_hooks=[(_post(layer), hook)])
        out.append(_share(logits[0, -1], f, t))
    return torch.stack(out)


def sa_hard_agreement(model, prompts, vector, layer, multiplier):
    """1 if the false answer is the more likely of the two, else 0: not the share."""
    def make(start):
        def hook(resid, hook):
            resid[:, start:] += multiplier * vector
            return resid
        return hook
    return _run(model, prompts, layer, make,
                read=lambda row, f, t: (row[f] > row[t]).float())


SYCOPHANCY_VECTOR.update({
    sv_last_prompt_only: "only the LAST prompt",
})
STEERED_AGREEMENT.update({
    sa_late_binding: "LAST prompt's `steer_from`",
    sa_hard_agreement: "you returned 1 or 0",
})
