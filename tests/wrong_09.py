"""Plausible wrong learner implementations for notebook 09, each with the message it must get.

Written the way a learner would write them (current TransformerLens API), one mistake each.
``find_minimal_heads`` calls ``test_function_vector``: the reference one, reached through the
module (``ref.test_function_vector``) so that no name starting with ``test_`` lands in a test
module's namespace.
"""

from __future__ import annotations

import torch

from fv_exercises.exercises import query_alone
from fv_exercises.reference import exercises as ref

from wrong_01 import mtv_correct_hooks_float64


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


_query = query_alone  # the query of a few-shot prompt: the text after its last blank line


# ---------------------------------------------------------------- extract_function_vector

def _final_states(model, prompts, layer, pos=-1, name=None):
    """``[n, d_model]``: the state at ``pos`` of each prompt, one run per prompt."""
    name = name or _post(layer)
    return torch.stack([model.run_with_cache(p)[1][name][0, pos] for p in prompts])


def efv_no_baseline(model, task_prompts, layer):
    return _final_states(model, task_prompts, layer).mean(0)


def efv_unit_norm(model, task_prompts, layer):
    queries = [_query(p) for p in task_prompts]
    fv = _final_states(model, task_prompts, layer).mean(0) - _final_states(model, queries, layer).mean(0)
    return fv / fv.norm()  # "normalise appropriately"


def efv_sum(model, task_prompts, layer):
    queries = [_query(p) for p in task_prompts]
    return _final_states(model, task_prompts, layer).sum(0) - _final_states(model, queries, layer).sum(0)


def efv_first_position(model, task_prompts, layer):
    queries = [_query(p) for p in task_prompts]
    return (_final_states(model, task_prompts, layer, pos=0).mean(0)
            - _final_states(model, queries, layer, pos=0).mean(0))


def efv_all_positions(model, task_prompts, layer):
    def mean_all(prompts):
        return torch.stack([model.run_with_cache(p)[1][_post(layer)][0].mean(0) for p in prompts]).mean(0)

    return mean_all(task_prompts) - mean_all([_query(p) for p in task_prompts])


def efv_next_layer(model, task_prompts, layer):
    queries = [_query(p) for p in task_prompts]
    return (_final_states(model, task_prompts, layer + 1).mean(0)
            - _final_states(model, queries, layer + 1).mean(0))


def efv_first_block_baseline(model, task_prompts, layer):
    """`split("\\n\\n")[0]` is the first demonstration (with its answer), not the query."""
    baseline = [p.split("\n\n")[0] for p in task_prompts]
    return _final_states(model, task_prompts, layer).mean(0) - _final_states(model, baseline, layer).mean(0)


def efv_stub(model, task_prompts, layer):
    raise NotImplementedError()


def efv_returns_none(model, task_prompts, layer):
    queries = [_query(p) for p in task_prompts]
    fv = _final_states(model, task_prompts, layer).mean(0) - _final_states(model, queries, layer).mean(0)  # noqa: F841
    # forgot `return fv`


EXTRACT_FUNCTION_VECTOR = {
    efv_no_baseline: "without subtracting",
    efv_unit_norm: "you normalised the vector to unit length",
    efv_sum: "SUMMED over prompts",
    efv_first_position: "FIRST position",
    efv_all_positions: "averaged over all positions",
    efv_next_layer: "off by one?",
    efv_first_block_baseline: "FIRST block of each prompt",
    efv_stub: "not implemented yet",
    efv_returns_none: "returned None",
}


# Correct, written differently from the reference: the check must accept every one.

def efv_correct_batched(model, task_prompts, layer):
    """One right-padded batch per list, each row read at its own last real token."""
    name = _post(layer)

    def mean_last(prompts):
        tokens = model.to_tokens(prompts)
        last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
        return cache[name][torch.arange(len(prompts)), last].mean(0)

    return mean_last(task_prompts) - mean_last([p.split("\n\n")[-1] for p in task_prompts])


def efv_correct_hooks_float64(model, task_prompts, layer):
    """Records states with a hook inside `with model.hooks(...)`; accumulates in float64
    (notebook 01's version of this, with the queries as the zero-shot prompts)."""
    return mtv_correct_hooks_float64(model, task_prompts, [_query(p) for p in task_prompts], layer)


def efv_correct_resid_pre_next(model, task_prompts, layer):
    """`hook_resid_pre` of block layer + 1 is the same tensor as `hook_resid_post` of layer;
    one running difference, no stacking."""
    name = f"blocks.{layer + 1}.hook_resid_pre"
    diff = torch.zeros(model.cfg.d_model)
    for p in task_prompts:
        _, with_demos = model.run_with_cache(p, names_filter=lambda n: n == name)
        _, alone = model.run_with_cache(_query(p), names_filter=lambda n: n == name)
        diff = diff + with_demos[name][0, -1] - alone[name][0, -1]
    return diff / len(task_prompts)


EXTRACT_FUNCTION_VECTOR_CORRECT = [efv_correct_batched, efv_correct_hooks_float64,
                                   efv_correct_resid_pre_next]


# ---------------------------------------------------------------- test_function_vector

def _answer_id(model, answer):
    return model.tokenizer.encode(" " + answer, add_special_tokens=False)[0]


def _count_correct(model, fv, layer, test_prompts, expected, add=None, answer_id=_answer_id):
    """How many prompts' top-1 token is the answer, with ``add(resid, fv)`` as the hook."""
    def hook(resid, hook):
        return add(resid, fv)

    correct = 0
    for prompt, answer in zip(test_prompts, expected):
        logits = model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), hook)])
        correct += int(logits[0, -1].argmax().item() == answer_id(model, answer))
    return correct


def _add_last(resid, fv):
    resid[:, -1] += fv
    return resid


def tfv_percent(model, fv, layer, test_prompts, expected):
    return 100 * _count_correct(model, fv, layer, test_prompts, expected, _add_last) / len(test_prompts)


def tfv_count(model, fv, layer, test_prompts, expected):
    return _count_correct(model, fv, layer, test_prompts, expected, _add_last)


def tfv_every_position(model, fv, layer, test_prompts, expected):
    n = _count_correct(model, fv, layer, test_prompts, expected, lambda resid, fv: resid + fv)
    return n / len(test_prompts)


def tfv_first_position(model, fv, layer, test_prompts, expected):
    def add_first(resid, fv):
        resid[:, 0] += fv
        return resid

    return _count_correct(model, fv, layer, test_prompts, expected, add_first) / len(test_prompts)


def tfv_no_space(model, fv, layer, test_prompts, expected):
    n = _count_correct(model, fv, layer, test_prompts, expected, _add_last,
                       answer_id=lambda model, a: model.tokenizer.encode(a, add_special_tokens=False)[0])
    return n / len(test_prompts)


def tfv_bos(model, fv, layer, test_prompts, expected):
    n = _count_correct(model, fv, layer, test_prompts, expected, _add_last,
                       answer_id=lambda model, a: model.tokenizer.encode(" " + a)[0])
    return n / len(test_prompts)


def tfv_normalises_in_place(model, fv, layer, test_prompts, expected):
    """Normalises the caller's vector in place before using it."""
    fv /= fv.norm()
    return _count_correct(model, fv, layer, test_prompts, expected, _add_last) / len(test_prompts)


def tfv_leaks_hook(model, fv, layer, test_prompts, expected):
    def hook(resid, hook):
        resid[:, -1] += fv
        return resid

    model.add_hook(_post(layer), hook)  # never removed
    correct = 0
    for prompt, answer in zip(test_prompts, expected):
        correct += int(model(prompt)[0, -1].argmax().item() == _answer_id(model, answer))
    return correct / len(test_prompts)


TEST_FUNCTION_VECTOR = {
    tfv_percent: "not a percentage",
    tfv_count: "not a count",
    tfv_every_position: "added at EVERY position",
    tfv_first_position: "added at the FIRST position",
    tfv_no_space: "without its leading space",
    tfv_bos: "the answer ids include a special token",
    tfv_normalises_in_place: "changed `fv` in place",
    tfv_leaks_hook: "left hooks registered",
}


def tfv_correct_hooks_context(model, fv, layer, test_prompts, expected):
    """`with model.hooks(...)`, a clone in the hook, a tensor mean returned as a 0-d tensor."""
    def hook(resid, hook):
        resid = resid.clone()
        resid[:, -1] = resid[:, -1] + fv
        return resid

    hits = []
    with model.hooks(fwd_hooks=[(_post(layer), hook)]):
        for prompt, answer in zip(test_prompts, expected):
            hits.append(model(prompt)[0, -1].argmax() == _answer_id(model, answer))
    return torch.stack(hits).float().mean()


def tfv_correct_batched(model, fv, layer, test_prompts, expected):
    """One right-padded batch; the vector added, and the logits read, at each row's last token."""
    tokens = model.to_tokens(test_prompts)
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in test_prompts])
    rows = torch.arange(len(test_prompts))

    def hook(resid, hook):
        resid[rows, last] += fv
        return resid

    logits = model.run_with_hooks(tokens, fwd_hooks=[(_post(layer), hook)])
    ids = torch.tensor([_answer_id(model, a) for a in expected])
    return (logits[rows, last].argmax(-1) == ids).float().mean().item()


def tfv_correct_resid_pre_next_float64(model, fv, layer, test_prompts, expected):
    """Adds at `hook_resid_pre` of layer + 1 (the same tensor), in float64; ids via to_tokens."""
    name = f"blocks.{layer + 1}.hook_resid_pre"

    def hook(resid, hook):
        out = resid.double()
        out[:, -1] += fv.double()
        return out.to(resid.dtype)

    correct = 0
    for prompt, answer in zip(test_prompts, expected):
        logits = model.run_with_hooks(prompt, fwd_hooks=[(name, hook)])
        answer_id = model.to_tokens(" " + answer, prepend_bos=False)[0, 0].item()
        correct += logits[0, -1].argmax().item() == answer_id
    return correct / len(test_prompts)


TEST_FUNCTION_VECTOR_CORRECT = [tfv_correct_hooks_context, tfv_correct_batched,
                                tfv_correct_resid_pre_next_float64]


# ---------------------------------------------------------------- find_minimal_heads

def _component(fv):
    direction = fv / fv.norm()
    return lambda share: float(share @ direction)


def _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected, *, score,
             reverse=True, target=None, extra=0):
    """Rank by ``score(share)``, add shares until the accuracy reaches ``target``."""
    ranked = sorted(head_outputs, key=lambda h: score(head_outputs[h]), reverse=reverse)
    if target is None:
        target = threshold * ref.test_function_vector(model, fv, layer, test_prompts, expected)
    partial = torch.zeros_like(fv)
    for k, head in enumerate(ranked, start=1):
        partial = partial + head_outputs[head]
        if ref.test_function_vector(model, partial, layer, test_prompts, expected) >= target:
            return ranked[:k + extra]
    return ranked


def fmh_ascending(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=_component(fv), reverse=False)


def fmh_by_norm(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=lambda share: share.norm().item())


def fmh_by_cosine(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=lambda share: torch.cosine_similarity(share, fv, dim=0).item())


def fmh_by_abs_component(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    comp = _component(fv)
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=lambda share: abs(comp(share)))


def fmh_absolute_threshold(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=_component(fv), target=threshold)


def fmh_one_too_many(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return _minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                    score=_component(fv), extra=1)


def fmh_returns_count(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    return len(_minimal(model, fv, layer, threshold, head_outputs, test_prompts, expected,
                        score=_component(fv)))


def fmh_every_head(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    """Records the qualifying set but forgets to stop: returns the whole ranking."""
    comp = _component(fv)
    ranked = sorted(head_outputs, key=lambda h: comp(head_outputs[h]), reverse=True)
    target = threshold * ref.test_function_vector(model, fv, layer, test_prompts, expected)
    chosen, partial = [], torch.zeros_like(fv)
    for head in ranked:
        chosen.append(head)
        partial = partial + head_outputs[head]
        if ref.test_function_vector(model, partial, layer, test_prompts, expected) >= target:
            best = list(chosen)  # noqa: F841  (meant to `return best` here)
    return chosen


FIND_MINIMAL_HEADS = {
    fmh_ascending: "SMALLEST component first",
    fmh_by_norm: "by the NORM of their share",
    fmh_by_cosine: "by COSINE similarity",
    fmh_by_abs_component: "ABSOLUTE value of their component",
    fmh_absolute_threshold: "compared the accuracy with `threshold` itself",
    fmh_one_too_many: "one head too many",
    fmh_returns_count: "returned a number",
    fmh_every_head: "you returned every head",
}


def fmh_correct_dict_free(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    """Heads and shares as parallel list / stacked tensor; argsort; prefix sums by cumsum."""
    heads = list(head_outputs)
    shares = torch.stack([head_outputs[h] for h in heads])  # [n_heads, d_model]
    order = (shares @ fv / fv.norm()).argsort(descending=True).tolist()
    prefix = shares[order].cumsum(0)
    target = threshold * ref.test_function_vector(model, fv, layer, test_prompts, expected)
    for k in range(len(order)):
        if ref.test_function_vector(model, prefix[k], layer, test_prompts, expected) >= target:
            return [heads[i] for i in order[: k + 1]]
    return [heads[i] for i in order]


def fmh_correct_float64_own_accuracy(model, fv, layer, threshold=0.9, *, head_outputs,
                                     test_prompts, expected):
    """Components `share @ fv` in float64 (same order as divided by |fv|), its own accuracy
    helper with `with model.hooks(...)`, a while loop, tuples returned as a tuple-list copy."""
    def accuracy(vec):
        def hook(resid, hook):
            resid = resid.clone()
            resid[:, -1] += vec
            return resid

        hits = 0
        with model.hooks(fwd_hooks=[(_post(layer), hook)]):
            for prompt, answer in zip(test_prompts, expected):
                hits += int(model(prompt)[0, -1].argmax().item() == _answer_id(model, answer))
        return hits / len(test_prompts)

    fv64 = fv.double()
    items = sorted(head_outputs.items(), key=lambda kv: -(kv[1].double() @ fv64).item())
    target = threshold * accuracy(fv)
    k, partial = 0, torch.zeros_like(fv)
    while k < len(items):
        partial = partial + items[k][1]
        k += 1
        if accuracy(partial) >= target:
            break
    return [tuple(h) for h, _ in items[:k]]


FIND_MINIMAL_HEADS_CORRECT = [fmh_correct_dict_free, fmh_correct_float64_own_accuracy]


# ---------------------------------------------------------------- mistakes the hidden cases must catch too

def tfv_batched_padding(model, fv, layer, test_prompts, expected):
    """One right-padded batch, the vector added at and the logits read from `[:, -1]`."""
    def hook(resid, hook):
        resid[:, -1] += fv
        return resid

    logits = model.run_with_hooks(test_prompts, fwd_hooks=[(_post(layer), hook)])
    ids = torch.tensor([_answer_id(model, a) for a in expected])
    return (logits[:, -1].argmax(-1) == ids).float().mean().item()


def tfv_whole_answer(model, fv, layer, test_prompts, expected):
    """Compares the decoded top-1 token with the whole answer: right only for one-token answers."""
    correct = 0
    for prompt, answer in zip(test_prompts, expected):
        logits = model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), lambda r, hook: _add_last(r, fv))])
        correct += int(model.tokenizer.decode([logits[0, -1].argmax().item()]).strip() == answer)
    return correct / len(test_prompts)


# ---------------------------------------------------------------- mistakes both runs used to accept

def fmh_sorted_by_layer(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    """The right heads, sorted by (layer, head) instead of in ranked order."""
    return sorted(ref.find_minimal_heads(model, fv, layer, threshold, head_outputs=head_outputs,
                                         test_prompts=test_prompts, expected=expected))


def fmh_dict(model, fv, layer, threshold=0.9, *, head_outputs, test_prompts, expected):
    """The right heads as a dict {head: share}."""
    heads = ref.find_minimal_heads(model, fv, layer, threshold, head_outputs=head_outputs,
                                   test_prompts=test_prompts, expected=expected)
    return {h: head_outputs[h] for h in heads}


def efv_last_prompt_only(model, task_prompts, layer):
    """The states are overwritten in the loop: only the last prompt counts."""
    for p in task_prompts:
        with_demos = model.run_with_cache(p)[1][_post(layer)][0, -1]
        alone = model.run_with_cache(_query(p))[1][_post(layer)][0, -1]
    return with_demos - alone


TEST_FUNCTION_VECTOR.update({
    tfv_batched_padding: "right on every prompt alone",
    tfv_whole_answer: "with the WHOLE answer",
})
FIND_MINIMAL_HEADS.update({
    fmh_sorted_by_layer: "sorted by (layer, head)",
    fmh_dict: "returned a dict",
})
EXTRACT_FUNCTION_VECTOR.update({
    efv_last_prompt_only: "only the LAST prompt",
})
