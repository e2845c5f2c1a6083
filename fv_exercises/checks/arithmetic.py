"""Check cells of notebook 04 (arithmetic): ``average_function_vector`` and ``decode_vector``.

Shared machinery (calling the learner safely, comparing, naming mistakes) is in
:mod:`fv_exercises.checks.core`.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    as_tensor,
    call_learner,
    compare,
    padding_message,
    quiet,
    repeat_consistent,
    stale_state_message,
    token_lengths,
)

Head = tuple[int, int]

# --------------------------------------------------------------------------------------------
# average_function_vector
# --------------------------------------------------------------------------------------------

# Prompts of different token lengths (3, 2 and 4 demonstrations), so a batched version reading
# [:, -1] of right-padded rows fails visibly. Heads as fractions of (depth, width): two heads of
# one layer and one of another, in no sorted order. The second case has other prompts, heads and
# a different number of prompts: a value or a count kept from the first call shows.
_AFV_CASES = (
    (Case("antonym", seed=0, layer_fraction=0.6, n_prompts=3), ((0.6, 0.0), (0.45, 1.0), (0.6, 0.5))),
    (Case("present_past", seed=2, layer_fraction=0.5, n_prompts=2), ((0.7, 0.2), (0.3, 0.9))),
)
_AFV_HIDDEN = (
    (Case("singular_plural", seed=3, layer_fraction=0.5, n_prompts=3), ((0.5, 0.3), (0.75, 0.7), (0.5, 0.9))),
    (Case("capitalize", seed=5, layer_fraction=0.5, n_prompts=2), ((0.4, 0.0), (0.65, 0.6))),
)


def case_heads(model, fractions: Sequence[tuple[float, float]]) -> list[Head]:
    """``(layer, head)`` from fractions of the depth and width: the same case on any model."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    return [(int(round(a * (n_layers - 1))), int(round(b * (n_heads - 1)))) for a, b in fractions]


def _z_rows(model, prompts: list[str], layers: set[int], *, padded: bool = False,
            raw_tokenizer: bool = False) -> dict[int, Tensor]:
    """``{layer: z}``, where ``z[i]`` is prompt ``i``'s ``[pos, n_heads, d_head]``.

    Default: one prompt at a time (a list per layer: the prompts differ in length). ``padded``:
    all prompts in one right-padded batch (a ``[n_prompts, pos, n_heads, d_head]`` tensor, so
    ``z[i][-1]`` is padding for the shorter prompts). ``raw_tokenizer``: tokenized with
    ``model.tokenizer``, which prepends BOS on the embedded model."""
    names = {f"blocks.{l}.attn.hook_z" for l in layers}
    if padded:
        _, cache = model.run_with_cache(prompts, names_filter=lambda n: n in names)
        return {l: cache[f"blocks.{l}.attn.hook_z"] for l in layers}
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for p in prompts:
        raw = torch.tensor([model.tokenizer(p)["input_ids"]], device=model_device(model))
        tokens = (raw if raw_tokenizer
                  else model.to_tokens(p))
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        for l in layers:
            out[l].append(cache[f"blocks.{l}.attn.hook_z"][0])
    return out


def _afv_from_z(model, z: dict[int, list[Tensor]] | dict[int, Tensor], heads: list[Head],
                n_prompts: int, pos=-1, reduce_prompts: str = "mean", reduce_heads: str = "sum",
                every_head: bool = False, b_O: bool = False) -> Tensor:
    """A function vector from recorded ``z`` with the options a mistake changes."""
    W_O = model.W_O
    per_prompt = []
    for i in range(n_prompts):
        outs = []
        for l, h in heads:
            zi = z[l][i]  # [pos, n_heads, d_head]
            zi = zi.mean(0) if pos == "all" else zi[pos]  # [n_heads, d_head]
            if every_head:
                outs.append(torch.einsum("hd,hdm->m", zi, W_O[l]))
                continue
            out = zi[h] @ W_O[l, h]
            if b_O:
                out = out + model.b_O[l]
            outs.append(out)
        stacked = torch.stack(outs)
        per_prompt.append(stacked.sum(0) if reduce_heads == "sum" else stacked.mean(0))
    stacked = torch.stack(per_prompt)
    return stacked.sum(0) if reduce_prompts == "sum" else stacked.mean(0)


def _has_b_O(model) -> bool:
    try:
        b = model.b_O
    except Exception:  # bias-free models raise instead of returning zeros
        return False
    return isinstance(b, Tensor) and bool(b.abs().max() > 0)


def _afv_variants(model, prompts: list[str], heads: list[Head]) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``average_function_vector`` and the vectors they give (lazy)."""
    layers = {l for l, _ in heads}
    n = len(prompts)
    z = _z_rows(model, prompts, layers)
    yield ("you SUMMED over prompts instead of taking the mean.",
           _afv_from_z(model, z, heads, n, reduce_prompts="sum"))
    yield ("you took the MEAN over heads; the function vector is the SUM of the heads' outputs "
           "(averaged over prompts only).", _afv_from_z(model, z, heads, n, reduce_heads="mean"))
    yield ("you read z at the FIRST position of each prompt; use the final position (-1).",
           _afv_from_z(model, z, heads, n, pos=0))
    yield ("you averaged z over all positions of each prompt; use the final position (-1) only.",
           _afv_from_z(model, z, heads, n, pos="all"))
    yield ("you added the output of EVERY head of each listed layer (the whole attention output, "
           "`hook_attn_out`); use only the listed heads: `z[-1, head] @ W_O[layer, head]`.",
           _afv_from_z(model, z, heads, n, every_head=True))
    one_per_layer = list(dict(heads).items())
    if len(one_per_layer) < len(heads):
        yield ("you kept ONE head per layer: `dict(heads)` (or `{layer: head ...}`) maps each "
               "layer to a single head, so a layer listed twice keeps only its last head. Loop "
               "over the list of `(layer, head)` pairs itself.",
               _afv_from_z(model, z, one_per_layer, n))
    if _has_b_O(model):
        yield ("you added the attention output bias `b_O` to each head's output. The bias is added "
               "once per layer, not per head: a head's output is `z[-1, head] @ W_O[layer, head]` "
               "without it.", _afv_from_z(model, z, heads, n, b_O=True))
    lengths = token_lengths(model, prompts)
    if len(set(lengths)) > 1:
        yield (padding_message("average_function_vector", lengths),
               _afv_from_z(model, _z_rows(model, prompts, layers, padded=True), heads, n))
    bos = model.tokenizer.bos_token_id
    raw = model.tokenizer(prompts[0])["input_ids"]
    if bos is not None and raw and raw[0] == bos and model.to_tokens(prompts[0])[0, 0] != bos:
        yield ("the prompts were tokenized with `model.tokenizer(...)`, which prepends the BOS token "
               f"{model.tokenizer.decode([bos])!r}; the course's prompts have no BOS. Pass the "
               "strings to the model (`model.run_with_cache(prompt)`) or use `model.to_tokens`.",
               _afv_from_z(model, _z_rows(model, prompts, layers, raw_tokenizer=True), heads, n))


def _afv_scale_causes(n_prompts: int, n_heads: int, expected: Tensor,
                      n_first: int | None = None) -> dict[float, str]:
    causes = {float(n_prompts): "you SUMMED over prompts instead of taking the mean",
              1.0 / n_heads: "you took the MEAN over heads; sum the heads' outputs"}
    if n_first and n_first != n_prompts:
        causes[n_prompts / n_first] = (
            f"you divided by {n_first}, the number of prompts of the FIRST call, not by this call's "
            f"{n_prompts}: something from the first call survives into the next (a global or a "
            "default argument). Use `len(prompts)` of each call, or `.mean(0)`")
    if expected.norm() > 0:
        causes[1 / expected.norm().item()] = ("you normalised the vector to unit length; the "
                                              "exercise asks for the raw mean")
    return causes


_AFV_REF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _afv_reference(model, prompts: list[str], heads: list[Head]) -> Tensor:
    """The reference vector, computed once per model and inputs (tests call the check often)."""
    from fv_exercises.reference.arithmetic import average_function_vector as reference

    per_model = _AFV_REF.setdefault(model, {})
    key = (tuple(prompts), tuple(heads))
    if key not in per_model:
        per_model[key] = reference(model, list(prompts), list(heads)).detach().float()
    return per_model[key]


def _afv_result(result, model, name: str) -> Tensor:
    """The learner's result as ``[d_model]``, naming a vector of ``z``'s size first."""
    d_head, d_model = model.cfg.d_head, model.cfg.d_model
    if isinstance(result, Tensor) and result.shape[-1:] == (d_head,) and d_head != d_model:
        raise CheckFailure(
            f"`{name}` returned shape {tuple(result.shape)}: that is the size of z (d_head = "
            f"{d_head}), not of the residual stream (d_model = {d_model}). A head's output is its "
            "z multiplied by its output matrix: `z[-1, head] @ model.W_O[layer, head]`.")
    return as_tensor(result, name, (d_model,), "function vector [d_model]")


def check_average_function_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``average_function_vector(model, prompts, heads) -> [d_model]``.

    The first case is called twice with the same inputs (nothing may leak between runs); the
    second has other prompts (another count), other heads and layers (state kept between calls
    shows). The prompts and heads passed in must come back unchanged.
    """
    name = "average_function_vector"
    first: str | None = None
    n_first: int | None = None
    with quiet(model):
        for i, (case, fractions) in enumerate(_AFV_HIDDEN if hidden else _AFV_CASES):
            prompts, heads = list(case.mixed().prompts), case_heads(model, fractions)
            expected = _afv_reference(model, prompts, heads)
            prompts_in, heads_in = list(prompts), list(heads)
            got = _afv_result(call_learner(fn, name, model, prompts_in, heads_in), model, name)
            if prompts_in != prompts or heads_in != heads:
                raise CheckFailure(f"`{name}` changed the list of prompts or heads it was given; "
                                   "read from the arguments, never edit them.")
            context = (f"task {case.task}, {len(prompts)} prompts, heads "
                       f"{', '.join(f'{l}.{h}' for l, h in heads)}")
            compare(got, expected, lambda: _afv_variants(model, prompts, heads), name,
                    "function vector", atol=1e-3, context=context,
                    scale_causes=lambda: _afv_scale_causes(len(prompts), len(heads), expected, n_first),
                    unexplained=stale_state_message(name, first, context) if first else None,
                    hint="Check the hook name `blocks.{layer}.attn.hook_z`, the head index, the "
                         "final position (-1), and `@ model.W_O[layer, head]`.")
            if i == 0:
                if not hidden:  # the hidden run scores the same function: no need to repeat
                    again = _afv_result(call_learner(fn, name, model, list(prompts), list(heads)),
                                        model, name)
                    repeat_consistent(got, again, name, atol=1e-3)
                first, n_first, norm = context, len(prompts), expected.norm().item()
    if not hidden:
        print(f"average_function_vector matches the reference ({first}: |FV| = {norm:.1f}; and a "
              "second case with other prompts and heads).")


# --------------------------------------------------------------------------------------------
# decode_vector
# --------------------------------------------------------------------------------------------

# (task, seed, layer fraction, k) of a real residual-stream vector (the final-position state of a
# few-shot prompt: it decodes to sensible tokens), then a random direction with another k.
_DV_CASES = (("antonym", 0, 1.0, 8), ("random", 1, 0.0, 5))
_DV_HIDDEN = (("present_past", 3, 0.9, 12), ("random", 7, 0.0, 3))


def _dv_vector(model, task: str, seed: int, layer_fraction: float) -> Tensor:
    """A vector to decode: a residual-stream state, or a random direction of a typical norm."""
    if task == "random":
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(model.cfg.d_model, generator=g, device="cpu")
        return (v * 20 / v.norm()).to(model_device(model))
    case = Case(task, seed=seed, layer_fraction=layer_fraction)
    name = f"blocks.{case.layer(model)}.hook_resid_post"
    _, cache = model.run_with_cache(case.dataset().prompts[0], names_filter=lambda n: n == name)
    return cache[name][0, -1].detach().clone()


def _logits(model, vector: Tensor, norm: bool = True, bias: bool = True,
            matrix: str = "W_U") -> Tensor:
    """``[d_vocab]`` logits of one vector: through the final norm (or not) and the unembedding."""
    x = vector.float()[None, None]
    if norm:
        x = model.ln_final(x)
    if matrix == "W_E":
        return (x @ model.W_E.T)[0, 0]
    out = x @ model.W_U
    if bias and getattr(model, "b_U", None) is not None:
        out = out + model.b_U
    return out[0, 0]


def _strings(model, ids) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


def _dv_variants(model, vector: Tensor, k: int) -> Iterator[tuple[str, list[str]]]:
    """Known mistakes of ``decode_vector`` and the token lists they give (lazy)."""
    right = _logits(model, vector)
    yield ("you left out the final norm: decode `model.ln_final(vector)`, not the raw vector. The "
           "residual stream is normalised (with per-dimension weights) before the unembedding, so "
           "skipping it changes which tokens win.",
           _strings(model, _logits(model, vector, norm=False).topk(k).indices))
    yield ("you returned the k tokens with the LOWEST logits (ascending order, or "
           "`largest=False`); take the highest: `logits.topk(k)`.",
           _strings(model, right.topk(k, largest=False).indices))
    yield ("you returned the k most likely tokens in ascending order (e.g. the last k of "
           "`argsort()`): list them most likely first.",
           _strings(model, right.topk(k).indices.flip(0)))
    yield ("you took a softmax over the wrong dimension (over a length-1 batch or position "
           "dimension every probability is 1, so the ranking is arbitrary): use the vocabulary "
           "dimension (-1).",
           _strings(model, torch.ones_like(right).topk(k).indices))
    b_U = getattr(model, "b_U", None)
    if b_U is not None and bool(b_U.abs().max() > 0):
        yield ("you left out the unembedding bias `b_U`: decode with the model's own unembedding, "
               "`model.unembed(...)` (or `@ model.W_U + model.b_U`).",
               _strings(model, _logits(model, vector, bias=False).topk(k).indices))
    if not torch.allclose(model.W_E.T, model.W_U):
        yield ("you multiplied by the embedding matrix `W_E` (tokens -> vectors); decoding uses "
               "the UNembedding `W_U` (vectors -> logits).",
               _strings(model, _logits(model, vector, matrix="W_E").topk(k).indices))
    ids = right.topk(k).indices.tolist()
    yield ("you returned byte-level token names (`convert_ids_to_tokens` writes a leading space as "
           "'Ġ'); decode each id on its own with `model.tokenizer.decode([token_id])` (or "
           "`model.to_single_str_token(token_id)`).",
           model.tokenizer.convert_ids_to_tokens(ids))
    split, stripped = _decoded_together(model, ids), [s.strip() for s in _strings(model, ids)]
    if split == stripped:  # every token one word with its space: the two look alike here
        yield _EITHER, split
    else:
        yield _SPLIT, split
        yield _STRIPPED, stripped


_STRIPPED = ("you stripped the tokens' whitespace: keep them as decoded (' cold' and 'cold' are "
             "different tokens).")
_EITHER = "SPLIT-OR-STRIPPED"  # resolved by :func:`_split_or_stripped` on the later cases
_SPLIT = ("you decoded the k ids TOGETHER and split the text (`decode(ids).split()`): that loses "
          "each token's leading space and merges tokens that have none into the word before "
          "them. Decode each id on its own: `[model.tokenizer.decode([i]) for i in top_ids]`.")


def _decoded_together(model, ids) -> list[str]:
    """What ``model.tokenizer.decode(ids).split()`` gives: the k tokens as one text, split."""
    return model.tokenizer.decode([int(i) for i in ids]).split()


def _as_strings(result, name: str, k: int, split: list[str] | None = None) -> list[str]:
    """The learner's result as a list of ``k`` strings, or a failure that says what is off
    (``split``: what decoding the reference's ids together and splitting gives)."""
    if result is None:
        raise CheckFailure(f"`{name}` returned None; it should return a list of {k} token "
                           "strings. Did you forget a `return`?")
    if isinstance(result, str):
        raise CheckFailure(f"`{name}` returned one string ({result[:40]!r}); return a LIST of the "
                           f"{k} tokens, each decoded on its own: "
                           "`[model.tokenizer.decode([i]) for i in top_ids]`.")
    if isinstance(result, Tensor):
        raise CheckFailure(f"`{name}` returned a tensor (token ids?); return the tokens as strings: "
                           "`[model.tokenizer.decode([i]) for i in top_ids.tolist()]`.")
    if isinstance(result, tuple) and len(result) == 2 and not isinstance(result[0], str):
        raise CheckFailure(f"`{name}` returned a tuple; return only the list of token strings.")
    try:
        items = list(result)
    except TypeError:
        raise CheckFailure(f"`{name}` should return a list of strings, got "
                           f"{type(result).__name__}.") from None
    if not all(isinstance(s, str) for s in items):
        kinds = sorted({type(s).__name__ for s in items if not isinstance(s, str)})
        raise CheckFailure(f"`{name}` should return a list of strings; it holds {', '.join(kinds)} "
                           "(token ids?). Decode each id: `model.tokenizer.decode([i])`.")
    if len(items) != k and split is not None and items == split:
        raise CheckFailure(f"`{name}` returned {len(items)} strings for k = {k}: {items}.\nYour "
                           f"output matches a common mistake: {_SPLIT}")
    if len(items) != k:
        hint = (" A single token: `argmax` gives the top one only; use `topk(k)`." if len(items) == 1
                else " Is the result cut short (or `k` ignored)?")
        raise CheckFailure(f"`{name}` returned {len(items)} tokens; expected k = {k}.{hint}")
    return items


def _equivalent(got: list[str], model, logits: Tensor, k: int, tol: float) -> bool:
    """True when ``got`` is a top-``k`` list of ``logits`` (ties within ``tol`` may swap)."""
    top = logits.topk(min(logits.numel(), k + 20))
    ref_vals = top.values.tolist()
    candidates: dict[str, list[float]] = {}
    for s, v in zip(_strings(model, top.indices), ref_vals):
        candidates.setdefault(s, []).append(v)
    if len(set(got)) != len(got) and len(set(_strings(model, top.indices[:k]))) == k:
        return False
    return all(any(abs(v - ref_vals[i]) <= tol for v in candidates.get(s, []))
               for i, s in enumerate(got))


def _split_or_stripped(fn: Callable, name: str, model, later: Sequence[tuple]) -> str:
    """Which of two mistakes that look alike on one case (every token a word with its leading
    space) the learner made, told apart on the ``later`` cases; both if none tells them apart."""
    for task, seed, fraction, k in later:
        vector = _dv_vector(model, task, seed, fraction)
        ids = _logits(model, vector).topk(k).indices
        split = _decoded_together(model, ids)
        stripped = [s.strip() for s in _strings(model, ids)]
        if split == stripped:
            continue
        try:
            got = _as_strings(call_learner(fn, name, model, vector.clone(), k), name, k, split=split)
        except CheckFailure as exc:
            if _SPLIT in str(exc):
                return _SPLIT
            continue
        if got == split:
            return _SPLIT
        if got == stripped:
            return _STRIPPED
    return f"{_SPLIT} (Or you stripped each token's whitespace: that gives the same here.)"


def _dv_explain(name: str, got: list[str], expected: list[str], model, vector: Tensor, k: int,
                context: str, unexplained: str | None,
                resolve: Callable[[], str] | None = None) -> str:
    head = (f"`{name}` gives the wrong tokens ({context}):\n  yours:     {got}\n"
            f"  reference: {expected}")
    for description, wrong in _dv_variants(model, vector, k):
        if list(wrong) == got:
            if description == _EITHER:
                description = resolve() if resolve else _split_or_stripped(None, name, model, ())
            return f"{head}\nYour output matches a common mistake: {description}"
    if sorted(got) == sorted(expected):
        return (f"{head}\nSame tokens in a different order: list them by decreasing logit, most "
                "likely first (`topk` already does).")
    if unexplained:
        return f"{head}\n{unexplained}"
    return (f"{head}\nDecode `model.unembed(model.ln_final(vector))`: the final norm, then the "
            "unembedding, then the k largest logits, each token decoded on its own.")


def check_decode_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``decode_vector(model, vector, k) -> list[str]`` (top-``k`` tokens, most likely first).

    The first case (a residual-stream state) is called twice with the same inputs; the second
    (a random direction, another ``k``) shows a value or a ``k`` kept from the first call. The
    vector passed in must come back unchanged.
    """
    name = "decode_vector"
    first: str | None = None
    with quiet(model):
        cases = _DV_HIDDEN if hidden else _DV_CASES
        for i, (task, seed, fraction, k) in enumerate(cases):
            vector = _dv_vector(model, task, seed, fraction)
            logits = _logits(model, vector)
            expected = _strings(model, logits.topk(k).indices)
            tol = 1e-4 * (1 + logits.abs().max().item())
            vector_in = vector.clone()
            got = _as_strings(call_learner(fn, name, model, vector_in, k), name, k,
                              split=_decoded_together(model, logits.topk(k).indices))
            if not torch.equal(vector_in, vector):
                raise CheckFailure(f"`{name}` changed the vector it was given in place (e.g. "
                                   "`vector /= ...` or `vector.mul_(...)`); the caller's vector "
                                   "would be modified. Compute on a new tensor.")
            context = ("a random direction" if task == "random"
                       else f"final-position resid_post of one {task} prompt") + f", k = {k}"
            if not _equivalent(got, model, logits, k, tol):
                later = cases[i + 1:]
                raise CheckFailure(_dv_explain(
                    name, got, expected, model, vector, k, context,
                    stale_state_message(name, first, context) if first else None,
                    resolve=lambda: _split_or_stripped(fn, name, model, later)))
            if i == 0 and not hidden:
                again = _as_strings(call_learner(fn, name, model, vector.clone(), k), name, k)
                if again != got:
                    raise CheckFailure(f"Calling `{name}` twice with the same vector gave different "
                                       f"tokens ({got} then {again}). Something is kept or "
                                       "modified between calls.")
            if i == 0:
                first, shown = context, expected
    if not hidden:
        print(f"decode_vector matches the reference ({first}: {shown}; and a second vector).")
