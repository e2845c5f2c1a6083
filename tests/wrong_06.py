"""Plausible wrong learner implementations for notebook 06, each with the message it must get,
and correct implementations written differently, which the check must accept.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


def _add_last(fv):
    def hook(resid, hook):
        resid[:, -1] += fv
        return resid

    return hook


def _cached_loop(model, tokens, hook_for_step, max_tokens, eos_stop=True, keep_eos=False):
    """A KV-cached greedy loop; ``hook_for_step(step)`` gives the hooks of each pass."""
    cache, new = None, []
    for step in range(max_tokens):
        logits, cache = model.run_with_hooks(tokens, fwd_hooks=hook_for_step(step),
                                             past_key_values=cache, return_type="logits_and_cache")
        nxt = int(logits[0, -1].argmax())
        if eos_stop and nxt == model.tokenizer.eos_token_id:
            if keep_eos:
                new.append(nxt)
            break
        new.append(nxt)
        tokens = torch.tensor([[nxt]])
    return new


# ---------------------------------------------------------------- wrong

def gwfv_seed_loop(model, prompt, fv, layer, max_tokens=10):
    """The seed's loop: re-run everything, add at the current last position only."""
    generated = model.to_tokens(prompt)[0]
    start = len(generated)
    for _ in range(max_tokens):
        logits = model.run_with_hooks(generated[None], fwd_hooks=[(_post(layer), _add_last(fv))])
        next_token = logits[0, -1].argmax()
        if next_token == model.tokenizer.eos_token_id:
            break
        generated = torch.cat([generated, next_token.unsqueeze(0)])
    return model.tokenizer.decode(generated[start:])


def gwfv_every_position(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt),
                       lambda step: [(_post(layer), lambda resid, hook: resid + fv)], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_no_eos_stop(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                       max_tokens, eos_stop=False)
    return model.tokenizer.decode(new)


def gwfv_keeps_eos(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                       max_tokens, keep_eos=True)
    return model.tokenizer.decode(new)


def gwfv_includes_prompt(model, prompt, fv, layer, max_tokens=10):
    tokens = model.to_tokens(prompt)
    new = _cached_loop(model, tokens, lambda step: [(_post(layer), _add_last(fv))], max_tokens)
    return model.tokenizer.decode(tokens[0].tolist() + new)


def gwfv_samples(model, prompt, fv, layer, max_tokens=10):
    tokens, cache, new = model.to_tokens(prompt), None, []
    for _ in range(max_tokens):
        logits, cache = model.run_with_hooks(tokens, fwd_hooks=[(_post(layer), _add_last(fv))],
                                             past_key_values=cache, return_type="logits_and_cache")
        nxt = int(torch.multinomial(logits[0, -1].softmax(-1), 1))
        if nxt == model.tokenizer.eos_token_id:
            break
        new.append(nxt)
        tokens = torch.tensor([[nxt]])
    return model.tokenizer.decode(new)


def gwfv_one_too_many(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                       max_tokens + 1)
    return model.tokenizer.decode(new)


def gwfv_prompt_position_only(model, prompt, fv, layer, max_tokens=10):
    """Cached, but the hook is only passed with the prompt: generated positions never get fv."""
    new = _cached_loop(model, model.to_tokens(prompt),
                       lambda step: [(_post(layer), _add_last(fv))] if step == 0 else [], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_first_step_only_uncached(model, prompt, fv, layer, max_tokens=10):
    generated = model.to_tokens(prompt)
    start = generated.shape[1]
    for step in range(max_tokens):
        hooks = [(_post(layer), _add_last(fv))] if step == 0 else []
        nxt = model.run_with_hooks(generated, fwd_hooks=hooks)[0, -1].argmax()
        if nxt == model.tokenizer.eos_token_id:
            break
        generated = torch.cat([generated, nxt.view(1, 1)], dim=1)
    return model.tokenizer.decode(generated[0, start:])


def gwfv_bos(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt, prepend_bos=True),
                       lambda step: [(_post(layer), _add_last(fv))], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_leaks_hook(model, prompt, fv, layer, max_tokens=10):
    model.add_hook(_post(layer), _add_last(fv))  # never removed
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_wrong_layer(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt),
                       lambda step: [(_post(layer + 1), _add_last(fv))], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_resid_pre(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt),
                       lambda step: [(f"blocks.{layer}.hook_resid_pre", _add_last(fv))], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_returns_tokens(model, prompt, fv, layer, max_tokens=10):
    return _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                        max_tokens)


def gwfv_stops_at_newline(model, prompt, fv, layer, max_tokens=10):
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                       max_tokens)
    return model.tokenizer.decode(new).split("\n")[0]


def gwfv_no_vector(model, prompt, fv, layer, max_tokens=10):
    def hook(resid, hook):
        resid = resid.clone()  # edits a copy and forgets to return it
        resid[:, -1] += fv

    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), hook)], max_tokens)
    return model.tokenizer.decode(new)


def gwfv_stub(model, prompt, fv, layer, max_tokens=10):
    raise NotImplementedError()


_KEPT = {}


def gwfv_keeps_first_vector(model, prompt, fv, layer, max_tokens=10):
    """Keeps the first call's vector and layer in a global ('why rebuild the hook?')."""
    _KEPT.setdefault("hook", (layer, _add_last(fv.clone())))
    at, hook = _KEPT["hook"]
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(at), hook)], max_tokens)
    return model.tokenizer.decode(new)


GENERATE = {
    gwfv_seed_loop: "re-runs the whole sequence every step",
    gwfv_every_position: "at EVERY position",
    gwfv_no_eos_stop: "did not stop at the EOS token",
    gwfv_keeps_eos: "ends with the EOS token",
    gwfv_includes_prompt: "returned the prompt as well",
    gwfv_samples: "two different texts",
    gwfv_one_too_many: "one token too many",
    gwfv_prompt_position_only: "only at the prompt's final position",
    gwfv_first_step_only_uncached: "only in the first step",
    gwfv_bos: "BOS token",
    gwfv_leaks_hook: "left hooks registered",
    gwfv_wrong_layer: "was added at layer",
    gwfv_resid_pre: "was added at layer",
    gwfv_returns_tokens: "returned token ids",
    gwfv_stops_at_newline: "stopped at the first newline",
    gwfv_no_vector: "no vector was added at all",
    gwfv_stub: "not implemented yet",
    gwfv_keeps_first_vector: "something from the first call survives",
}


# ---------------------------------------------------------------- correct, written differently

def gwfv_correct_uncached(model, prompt, fv, layer, max_tokens=10):
    """No cache: re-run everything, adding fv at every position from the prompt's last onward."""
    generated = model.to_tokens(prompt)
    first = generated.shape[1] - 1

    def hook(resid, hook):
        resid = resid.clone()
        resid[:, first:] += fv
        return resid

    for _ in range(max_tokens):
        nxt = model.run_with_hooks(generated, fwd_hooks=[(_post(layer), hook)])[0, -1].argmax()
        if nxt.item() == model.tokenizer.eos_token_id:
            break
        generated = torch.cat([generated, nxt.view(1, 1)], dim=1)
    return model.tokenizer.decode(generated[0, first + 1:])


def gwfv_correct_hooks_context(model, prompt, fv, layer, max_tokens=10):
    """`with model.hooks(...)` around a cached loop called through `model(...)`; float64 hook."""
    def hook(resid, hook):
        out = resid.double()
        out[:, -1] += fv.double()
        return out.to(resid.dtype)

    tokens, cache, new = model.to_tokens(prompt), None, []
    with model.hooks(fwd_hooks=[(_post(layer), hook)]):
        for _ in range(max_tokens):
            logits, cache = model(tokens, past_key_values=cache, return_type="logits_and_cache")
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            if nxt.item() == model.tokenizer.eos_token_id:
                break
            new.append(nxt.item())
            tokens = nxt
    return "".join(model.tokenizer.decode([t]) for t in new)  # token by token


def gwfv_correct_generate(model, prompt, fv, layer, max_tokens=10):
    """TransformerLens' own `generate` (greedy, KV cache) with the hook in a `model.hooks` context."""
    tokens = model.to_tokens(prompt)
    with model.hooks(fwd_hooks=[(_post(layer), _add_last(fv))]):
        out = model.generate(tokens, max_new_tokens=max_tokens, do_sample=False, stop_at_eos=True,
                             use_past_kv_cache=True, verbose=False, return_type="tokens")
    new = out[0, tokens.shape[1]:].tolist()
    eos = model.tokenizer.eos_token_id
    if eos in new:
        new = new[:new.index(eos)]
    return model.tokenizer.decode(new)


def gwfv_correct_next_resid_pre(model, prompt, fv, layer, max_tokens=10):
    """`hook_resid_pre` of block layer + 1 is `hook_resid_post` of block layer."""
    name = f"blocks.{layer + 1}.hook_resid_pre"
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(name, _add_last(fv))], max_tokens)
    return model.tokenizer.decode(new)


GENERATE_CORRECT = [gwfv_correct_uncached, gwfv_correct_hooks_context, gwfv_correct_generate,
                    gwfv_correct_next_resid_pre]


# ---------------------------------------------------------------- mistakes both runs used to accept

def gwfv_stripped(model, prompt, fv, layer, max_tokens=10):
    """Strips the generated text (it usually starts with a space)."""
    new = _cached_loop(model, model.to_tokens(prompt), lambda step: [(_post(layer), _add_last(fv))],
                       max_tokens)
    return model.tokenizer.decode(new).strip()


GENERATE.update({
    gwfv_stripped: "you stripped the whitespace around the text",
})
