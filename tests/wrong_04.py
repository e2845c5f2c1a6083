"""Plausible wrong learner implementations for notebook 04, each with the message it must get,
and correct implementations written differently, which the checks must accept.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch


def _z(layer):
    return f"blocks.{layer}.attn.hook_z"


# ---------------------------------------------------------------- average_function_vector


def _afv(model, prompts, heads, pos=-1, reduce_prompts="mean", reduce_heads="sum", use_W_O=True,
         every_head=False, tokens=None):
    per_prompt = []
    for prompt in prompts:
        inp = tokens(prompt) if tokens else prompt
        _, cache = model.run_with_cache(inp)
        outs = []
        for layer, head in heads:
            z = cache[_z(layer)][0, pos]  # [n_heads, d_head]
            if every_head:
                outs.append(torch.einsum("hd,hdm->m", z, model.W_O[layer]))
            elif use_W_O:
                outs.append(z[head] @ model.W_O[layer, head])
            else:
                outs.append(z[head])
        outs = torch.stack(outs)
        per_prompt.append(outs.sum(0) if reduce_heads == "sum" else outs.mean(0))
    per_prompt = torch.stack(per_prompt)
    return per_prompt.sum(0) if reduce_prompts == "sum" else per_prompt.mean(0)


def afv_sum_prompts(model, prompts, heads):
    return _afv(model, prompts, heads, reduce_prompts="sum")


def afv_mean_heads(model, prompts, heads):
    return _afv(model, prompts, heads, reduce_heads="mean")


def afv_first_position(model, prompts, heads):
    return _afv(model, prompts, heads, pos=0)


def afv_no_W_O(model, prompts, heads):
    """Sums the heads' z: forgot the output matrix."""
    return _afv(model, prompts, heads, use_W_O=False)


def afv_every_head(model, prompts, heads):
    """The whole attention output of each listed layer (every head), not the listed heads."""
    return _afv(model, prompts, heads, every_head=True)


def afv_raw_tokenizer(model, prompts, heads):
    """Tokenizes with the raw tokenizer, which prepends BOS on this model."""
    return _afv(model, prompts, heads,
                tokens=lambda p: torch.tensor([model.tokenizer(p)["input_ids"]]))


def afv_batched_padding(model, prompts, heads):
    """All prompts in one batch, `[:, -1]`: padding for all but the longest prompt."""
    _, cache = model.run_with_cache(prompts)
    total = 0
    for layer, head in heads:
        total = total + cache[_z(layer)][:, -1, head] @ model.W_O[layer, head]
    return total.mean(0)


def afv_unit_norm(model, prompts, heads):
    v = _afv(model, prompts, heads)
    return v / v.norm()


def afv_keeps_batch_dim(model, prompts, heads):
    return _afv(model, prompts, heads)[None]


_CACHE = {}


def afv_global_cache(model, prompts, heads):
    """Caches the vector in a global ('it is expensive'): the second call returns the first."""
    if "fv" not in _CACHE:
        _CACHE["fv"] = _afv(model, prompts, heads)
    return _CACHE["fv"]


def afv_fixed_count(model, prompts, heads):
    """Divides by the number of prompts of the first call it saw."""
    _CACHE.setdefault("n", len(prompts))
    return _afv(model, prompts, heads, reduce_prompts="sum") / _CACHE["n"]


def afv_pops_heads(model, prompts, heads):
    """Consumes the caller's list of heads with pop()."""
    total = 0
    wanted = list(heads)
    while heads:
        heads.pop()
    return _afv(model, prompts, wanted) + total


def afv_returns_none(model, prompts, heads):
    _afv(model, prompts, heads)


def afv_stub(model, prompts, heads):
    raise NotImplementedError()


def afv_leaks_hook(model, prompts, heads):
    """Records z with model.add_hook and never removes the hooks."""
    seen = {}
    for layer, _ in heads:
        def save(z, hook, layer=layer):
            seen[layer] = z[0, -1]

        model.add_hook(_z(layer), save)
    total = torch.zeros(model.cfg.d_model)
    for p in prompts:
        model(p)
        for layer, head in heads:
            total += seen[layer][head] @ model.W_O[layer, head]
    return total / len(prompts)


AVERAGE_FUNCTION_VECTOR = {
    afv_sum_prompts: "SUMMED over prompts",
    afv_mean_heads: "MEAN over heads",
    afv_first_position: "FIRST position",
    afv_no_W_O: "size of z",
    afv_every_head: "EVERY head",
    afv_raw_tokenizer: "prepends the BOS token",
    afv_batched_padding: "padded on the right",
    afv_unit_norm: "unit length",
    afv_keeps_batch_dim: "expected (576,)",
    afv_global_cache: "survives into the next",
    afv_fixed_count: "survives into the next",
    afv_pops_heads: "changed the list of prompts or heads",
    afv_returns_none: "returned None",
    afv_stub: "not implemented yet",
    afv_leaks_hook: "left hooks registered",
}


def afv_correct_batched(model, prompts, heads):
    """One right-padded batch, each row read at its own last real token."""
    tokens = model.to_tokens(prompts)
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
    _, cache = model.run_with_cache(tokens)
    rows = torch.arange(len(prompts))
    total = torch.zeros(len(prompts), model.cfg.d_model)
    for layer, head in heads:
        total += cache[_z(layer)][rows, last, head] @ model.W_O[layer, head]
    return total.mean(0)


def afv_correct_hooks_float64(model, prompts, heads):
    """Records z with hooks inside `with model.hooks(...)`, accumulates in float64."""
    total = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    names = sorted({_z(layer) for layer, _ in heads})
    for p in prompts:
        seen = {}

        def save(z, hook, name):
            seen[name] = z[0, -1].double()  # the name from the closure, not hook.name

        with model.hooks(fwd_hooks=[(n, lambda z, hook, n=n: save(z, hook, n)) for n in names]):
            model(p)
        for layer, head in heads:
            total += seen[_z(layer)][head] @ model.W_O[layer, head].double()
    return total / len(prompts)


def afv_correct_mean_z_first(model, prompts, heads):
    """Averages z over prompts first, then multiplies by W_O (linear: the same vector)."""
    mean_z = {}
    for p in prompts:
        _, cache = model.run_with_cache(p)
        for layer, head in heads:
            mean_z[layer, head] = mean_z.get((layer, head), 0) + cache[_z(layer)][0, -1, head] / len(prompts)
    return sum(mean_z[l, h] @ model.W_O[l, h] for l, h in heads)


AVERAGE_FUNCTION_VECTOR_CORRECT = [afv_correct_batched, afv_correct_hooks_float64,
                                   afv_correct_mean_z_first]


# ---------------------------------------------------------------- decode_vector


def _logits(model, vector, norm=True):
    x = vector[None, None]
    return model.unembed(model.ln_final(x) if norm else x)[0, 0]


def dv_no_norm(model, vector, k=10):
    top = _logits(model, vector, norm=False).topk(k).indices
    return [model.tokenizer.decode([i]) for i in top.tolist()]


def dv_bottom_k(model, vector, k=10):
    top = _logits(model, vector).argsort()[:k]
    return [model.tokenizer.decode([i]) for i in top.tolist()]


def dv_ascending(model, vector, k=10):
    top = _logits(model, vector).argsort()[-k:]
    return [model.tokenizer.decode([i]) for i in top.tolist()]


def dv_argmax(model, vector, k=10):
    return [model.tokenizer.decode([_logits(model, vector).argmax().item()])]


def dv_softmax_wrong_dim(model, vector, k=10):
    probs = model.unembed(model.ln_final(vector[None, None])).softmax(dim=0)[0, 0]
    return [model.tokenizer.decode([i]) for i in probs.topk(k).indices.tolist()]


def dv_byte_tokens(model, vector, k=10):
    return model.tokenizer.convert_ids_to_tokens(_logits(model, vector).topk(k).indices.tolist())


def dv_one_string(model, vector, k=10):
    return model.tokenizer.decode(_logits(model, vector).topk(k).indices)


def dv_ids(model, vector, k=10):
    return _logits(model, vector).topk(k).indices


def dv_stripped(model, vector, k=10):
    return [model.tokenizer.decode([i]).strip() for i in _logits(model, vector).topk(k).indices.tolist()]


def dv_cut_short(model, vector, k=10):
    return [model.tokenizer.decode([i]) for i in _logits(model, vector).topk(k).indices.tolist()][:-1]


def dv_ignores_k(model, vector, k=10):
    return [model.tokenizer.decode([i]) for i in _logits(model, vector).topk(8).indices.tolist()]


def dv_normalises_in_place(model, vector, k=10):
    vector /= vector.norm()
    return [model.tokenizer.decode([i]) for i in _logits(model, vector).topk(k).indices.tolist()]


_SEEN = {}


def dv_global_cache(model, vector, k=10):
    """Keeps the first vector's logits ('the unembedding is expensive')."""
    if "logits" not in _SEEN:
        _SEEN["logits"] = _logits(model, vector)
    return [model.tokenizer.decode([i]) for i in _SEEN["logits"].topk(k).indices.tolist()]


def dv_set(model, vector, k=10):
    """Deduplicates through a set: loses the order."""
    return sorted({model.tokenizer.decode([i]) for i in _logits(model, vector).topk(k).indices.tolist()})


def dv_embedding(model, vector, k=10):
    """Multiplies by the embedding matrix: the same as W_U only where embeddings are tied (not on
    the embedded model's list of mistakes for that reason; tested on an untied family)."""
    x = model.ln_final(vector[None, None])[0, 0]
    return [model.tokenizer.decode([i]) for i in (model.W_E @ x).topk(k).indices.tolist()]


DECODE_VECTOR = {
    dv_no_norm: "left out the final norm",
    dv_bottom_k: "LOWEST logits",
    dv_ascending: "ascending order",
    dv_argmax: "`argmax` gives the top one only",
    dv_softmax_wrong_dim: "softmax over the wrong dimension",
    dv_byte_tokens: "convert_ids_to_tokens",
    dv_one_string: "returned one string",
    dv_ids: "returned a tensor",
    dv_stripped: "stripped",
    dv_cut_short: "cut short",
    dv_ignores_k: "expected k = 5",
    dv_normalises_in_place: "changed the vector it was given in place",
    dv_global_cache: "survives into the next",
    dv_set: "different order",
}


def dv_correct_softmax_float64(model, vector, k=10):
    """Softmax probabilities in float64 (same order as the logits)."""
    probs = model.unembed(model.ln_final(vector[None, None]))[0, 0].double().softmax(-1)
    return [model.tokenizer.decode([i]) for i in probs.topk(k).indices.tolist()]


def dv_correct_manual(model, vector, k=10):
    """`ln_final` then `@ W_U + b_U` by hand, `to_single_str_token`, a normalised copy of the vector."""
    x = model.ln_final((vector / vector.norm())[None, None])[0, 0]
    logits = x @ model.W_U + model.b_U
    return [model.to_single_str_token(int(i)) for i in torch.argsort(logits, descending=True)[:k]]


def dv_correct_hooks(model, vector, k=10):
    """Reads the final norm's output through a hook point inside `with model.hooks(...)`."""
    seen = {}
    with model.hooks(fwd_hooks=[("ln_final.hook_out", lambda x, hook: seen.setdefault("x", x))]):
        logits = model.unembed(model.ln_final(vector.double().float()[None, None]))
    assert "x" in seen
    return [model.tokenizer.decode([i]) for i in logits[0, 0].topk(k).indices.tolist()]


DECODE_VECTOR_CORRECT = [dv_correct_softmax_float64, dv_correct_manual, dv_correct_hooks]


# ---------------------------------------------------------------- mistakes whose message named another cause

def afv_dict_heads(model, prompts, heads):
    """`dict(heads)` maps each layer to ONE head: a layer listed twice keeps only its last head."""
    per_prompt = []
    for prompt in prompts:
        _, cache = model.run_with_cache(prompt)
        per_prompt.append(sum(cache[_z(layer)][0, -1, head] @ model.W_O[layer, head]
                              for layer, head in dict(heads).items()))
    return torch.stack(per_prompt).mean(0)


def dv_decode_split(model, vector, k=10):
    """Decodes the k ids together, then splits the text on whitespace."""
    return model.tokenizer.decode(_logits(model, vector).topk(k).indices.tolist()).split()


AVERAGE_FUNCTION_VECTOR.update({
    afv_dict_heads: "you kept ONE head per layer",
})
DECODE_VECTOR.update({
    dv_decode_split: "you decoded the k ids TOGETHER and split the text",
})
