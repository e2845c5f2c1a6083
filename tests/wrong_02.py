"""Plausible wrong learner implementations for notebook 02, each with the message it must get.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch

from fv_exercises.evaluation import top1_accuracy


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


def _seed_style(model, icl_prompt, probes, answers, read=_post, write=_post, pos=-1, every=False,
                space=" ", layers=None, as_count=False, one_at_a_time=False, bos=False,
                returns_nothing=False):
    """The seed's loop with the knobs a learner gets wrong.

    Probes run as one right-padded batch indexed at each probe's own last token (numerically the
    same as one at a time, and much faster for the tests); ``one_at_a_time`` runs the literal loop.
    """
    _, cache = model.run_with_cache(icl_prompt)
    targets = torch.tensor([model.tokenizer.encode(space + a, add_special_tokens=False)[0] for a in answers])
    if bos:  # `tokenizer.encode(' ' + answer)[0]` is the BOS token on this tokenizer
        targets = torch.tensor([model.tokenizer.encode(space + a)[0] for a in answers])
    if one_at_a_time:
        batches = [([p], torch.tensor([model.to_tokens(p).shape[1] - 1])) for p in probes]
    else:
        batches = [(probes, torch.tensor([model.to_tokens(p).shape[1] - 1 for p in probes]))]
    results = {}
    for layer in layers if layers is not None else range(model.cfg.n_layers):
        h = cache[read(layer)][:, pos]
        hits = []
        for batch, last in batches:
            rows = torch.arange(len(batch))

            def hook(resid, hook, h=h, rows=rows, last=last):
                if returns_nothing:  # edits a copy and forgets to return it
                    resid = resid.clone()
                    resid[rows, last] += h[0]
                    return None
                if every:
                    resid += h[:, None]
                else:
                    resid[rows, last] += h[0]
                return resid

            logits = model.run_with_hooks(model.to_tokens(batch), fwd_hooks=[(write(layer), hook)])
            hits.append(logits[rows, last].argmax(-1))
        correct = int((torch.cat(hits) == targets).sum())
        results[layer] = correct if as_count else correct / len(probes)
    return results


def ftl_seed_loop_correct(model, icl_prompt, probes, answers):
    """Correct: the seed's loop, one probe at a time (must PASS)."""
    return _seed_style(model, icl_prompt, probes, answers, one_at_a_time=True)


def ftl_resid_pre(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, read=lambda l: f"blocks.{l}.hook_resid_pre")


def ftl_resid_pre_both(model, icl_prompt, probes, answers):
    pre = lambda l: f"blocks.{l}.hook_resid_pre"  # noqa: E731
    return _seed_style(model, icl_prompt, probes, answers, read=pre, write=pre)


def ftl_first_position(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, pos=0)


def ftl_every_position(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, every=True)


def ftl_count(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, as_count=True)


def ftl_no_space(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, space="")


def ftl_missing_last_layer(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, layers=range(model.cfg.n_layers - 1))


def ftl_returns_tensor(model, icl_prompt, probes, answers):
    _, cache = model.run_with_cache(icl_prompt)
    return torch.tensor([top1_accuracy(model, probes, answers, add={l: cache[_post(l)][0, -1]})
                         for l in range(model.cfg.n_layers)])


def ftl_hook_returns_nothing(model, icl_prompt, probes, answers):
    return _seed_style(model, icl_prompt, probes, answers, returns_nothing=True)


def ftl_leaks_hook(model, icl_prompt, probes, answers):
    _, cache = model.run_with_cache(icl_prompt)
    results = {}
    for layer in range(model.cfg.n_layers):
        h = cache[_post(layer)][0, -1]
        model.add_hook(_post(layer), lambda resid, hook, h=h: resid)  # registered, never removed
        results[layer] = top1_accuracy(model, probes, answers, add={layer: h})
    return results


def ftl_stub(model, icl_prompt, probes, answers):
    raise NotImplementedError()


FIND_TASK_LAYER = {
    ftl_resid_pre: "read from `hook_resid_pre`",
    ftl_resid_pre_both: "shifted up by one layer",
    ftl_first_position: "FIRST position",
    ftl_every_position: "EVERY position",
    ftl_count: "COUNT",
    ftl_no_space: "leading space",
    ftl_missing_last_layer: "missing layers [29]",
    ftl_returns_tensor: "return a dict",
    ftl_hook_returns_nothing: "h was never added",
    ftl_leaks_hook: "left hooks registered",
    ftl_stub: "not implemented yet",
}


def ftl_batched_padding(model, icl_prompt, probes, answers):
    """All probes in one batch, the vector added at and read from `[:, -1]`: padding for short ones."""
    _, cache = model.run_with_cache(icl_prompt)
    targets = torch.tensor([model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers])
    results = {}
    for layer in range(model.cfg.n_layers):
        h = cache[_post(layer)][0, -1]

        def hook(resid, hook, h=h):
            resid[:, -1] += h
            return resid

        logits = model.run_with_hooks(probes, fwd_hooks=[(_post(layer), hook)])
        results[layer] = (logits[:, -1].argmax(-1) == targets).float().mean().item()
    return results


def ftl_bos_ids(model, icl_prompt, probes, answers):
    """`tokenizer.encode(' ' + answer)[0]` is the BOS token on this tokenizer."""
    return _seed_style(model, icl_prompt, probes, answers, bos=True)


_RESULTS = {}


def ftl_global_cache(model, icl_prompt, probes, answers):
    """Memoises the whole sweep in a global, keyed by nothing."""
    if "sweep" not in _RESULTS:
        _RESULTS["sweep"] = _seed_style(model, icl_prompt, probes, answers)
    return _RESULTS["sweep"]


def ftl_percent(model, icl_prompt, probes, answers):
    return {l: 100 * v for l, v in _seed_style(model, icl_prompt, probes, answers).items()}


FIND_TASK_LAYER.update({
    ftl_batched_padding: "padded on the right",
    ftl_bos_ids: "special token",
    ftl_global_cache: "survives into the next",
    ftl_percent: "in percent",
})


def ftl_correct_batched_hooks_context(model, icl_prompt, probes, answers):
    """Batched probes with each row's own last index, inside `with model.hooks(...)`."""
    tokens = model.to_tokens(probes)
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in probes])
    rows = torch.arange(len(probes))
    targets = torch.tensor([model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers])
    _, cache = model.run_with_cache(icl_prompt)
    results = {}
    for layer in range(model.cfg.n_layers):
        h = cache[_post(layer)][0, -1].double()

        def hook(resid, hook, h=h):
            resid = resid.clone()
            resid[rows, last] = (resid[rows, last].double() + h).float()
            return resid

        with model.hooks(fwd_hooks=[(_post(layer), hook)]):
            logits = model(tokens)
        results[layer] = float((logits[rows, last].argmax(-1) == targets).sum()) / len(probes)
    return results


FIND_TASK_LAYER_CORRECT = [ftl_seed_loop_correct, ftl_correct_batched_hooks_context]


# ---------------------------------------------------------------- mistakes the hidden cases must catch too

def ftl_resid_pre_write(model, icl_prompt, probes, answers):
    """Reads `hook_resid_post` of layer l but adds h at `hook_resid_pre` of the same layer."""
    return _seed_style(model, icl_prompt, probes, answers, write=lambda l: f"blocks.{l}.hook_resid_pre")


FIND_TASK_LAYER.update({
    ftl_resid_pre_write: "added at `hook_resid_pre` of layer l",
})
