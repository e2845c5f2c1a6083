"""Check cells of notebook 06 (generation): ``generate_with_function_vector``.

The intervention graded (see :mod:`fv_exercises.generation`): greedy decoding with ``fv`` added
to ``blocks.{layer}.hook_resid_post`` at the prompt's final position and at every generated
position, each once, when that position is computed (what a KV cache does). The text returned
is the generated part only, ``model.tokenizer.decode(new_tokens)`` as it is (no prompt, no EOS
token, nothing stripped).

Results are compared as text. Greedy decoding is exact, but a different (correct) order of float
operations could flip a near-tie between the two most likely tokens; the cases are chosen with a
clear margin at every step (a test keeps it so).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks.core import CheckFailure, call_learner, quiet, stale_state_message
from fv_exercises.evaluation import mean_resid_post, resid_post_name
from fv_exercises.generation import (
    Intervention,
    at_last_position,
    generate_tokens,
)
from fv_exercises.tasks import ICLDataset


@dataclass(frozen=True)
class GenCase:
    """A prompt, a vector (the mean task vector of ``task`` from a few train prompts, times
    ``scale``) at a layer given as a fraction of depth, and ``max_tokens``."""

    prompt: str
    task: str
    layer_fraction: float
    max_tokens: int
    scale: float = 1.0

    def layer(self, model) -> int:
        return int(round(self.layer_fraction * (model.cfg.n_layers - 1)))


_CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# (first case, second call with other inputs, a case that ends at EOS before max_tokens)
_CASES = (GenCase("Q: young\nA:", "antonym", 0.6, 8),
          GenCase("The word 'hot' means", "antonym", 0.4, 6),
          GenCase(_CHAT.format("Reply with one word: yes or no?"), "antonym", 0.5, 12, scale=0.25))
_HIDDEN = (GenCase("Q: narrow\nA:", "antonym", 0.65, 9),
           GenCase("Q: Kenya\nA:", "country_capital", 0.8, 7),
           GenCase(_CHAT.format("Name a colour. One word."), "antonym", 0.5, 12, scale=0.25))

_VECTORS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_EXPECTED: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def case_vector(model, case: GenCase) -> Tensor:
    """Mean final-position ``resid_post`` of 6 few-shot train prompts minus that of their
    zero-shot prompts, at the case's layer, times ``scale``: ``[d_model]`` (kept per model)."""
    per_model = _VECTORS.setdefault(model, {})
    if case.task not in per_model:  # every layer at once: [n_layers, d_model]
        ds = ICLDataset.build(case.task, 6, n_shots=4, seed=11, split="train")
        per_model[case.task] = (mean_resid_post(model, ds.prompts)
                                - mean_resid_post(model, ds.zero_shot_prompts))
    return per_model[case.task][case.layer(model)] * case.scale


# --------------------------------------------------------------------------------------------
# The known mistakes, as texts
# --------------------------------------------------------------------------------------------


def _text(model, tokens: list[int]) -> str:
    return model.tokenizer.decode(tokens)


def _gen(model, prompt: str, max_tokens: int, intervention: Intervention | None,
         use_cache: bool = True, prepend_bos: bool | None = None, **kwargs) -> list[int]:
    tokens = model.to_tokens(prompt, prepend_bos=prepend_bos) if prepend_bos is not None \
        else model.to_tokens(prompt)
    return generate_tokens(model, tokens, max_tokens, intervention, use_cache=use_cache,
                           **kwargs)[0]


def _every_position(layer: int, fv: Tensor) -> Intervention:
    """``resid + fv``: every position a pass computes, the whole prompt included."""
    return lambda start: [(resid_post_name(layer), lambda resid, hook=None: resid + fv)]


def _first_pass_only(layer: int, fv: Tensor) -> Intervention:
    """Only the first forward pass gets the hook (with a cache: the prompt's final position)."""
    hooks = at_last_position(layer, fv)
    return lambda start: hooks(start) if start == 0 else []


class _FirstStepOnly:
    """Uncached: the hook only in the first step; later steps re-run everything without it."""

    def __init__(self, layer: int, fv: Tensor):
        self.hooks, self.calls = at_last_position(layer, fv), 0

    def __call__(self, start: int):
        self.calls += 1
        return self.hooks(start) if self.calls == 1 else []


def _seed_loop_message(layer: int) -> str:
    return (
        "your loop re-runs the whole sequence every step and adds `fv` at `[:, -1]` of each run "
        "(the seed's loop). Then a position has the vector only while it is the last one: in the "
        "next step it is recomputed WITHOUT it, so the tokens generated so far are read as if the "
        "vector had never been there. The intervention asked for adds `fv` to every position "
        "from the prompt's final one onward, each once, when it is computed, and keeps it. With a "
        "KV cache that is exactly your hook: pass `past_key_values=cache` and feed only the new "
        "token, so each pass computes (and `[:, -1]` is) one new position. Without a cache, add "
        f"`fv` at every position from the prompt's last onward, in every step (layer {layer})."
    )


def _variants(model, prompt: str, fv: Tensor, layer: int, max_tokens: int,
              expected: str) -> Iterator[tuple[str, str]]:
    """Known mistakes and the text each gives, cheapest first (computed lazily)."""
    eos = model.tokenizer.eos_token_id
    eos_text = model.tokenizer.decode([eos]) if eos is not None else None
    include = ("you returned the prompt as well; return only the generated text (decode the new "
               "tokens only).")
    yield include, prompt + expected
    if expected.strip() != expected:
        yield ("you stripped the whitespace around the text (`.strip()`): return "
               "`model.tokenizer.decode(new_tokens)` as it is: the space the model writes first "
               f"is part of its output ({expected[:12]!r}...).", expected.strip())
    if eos_text:
        yield (f"your text ends with the EOS token {eos_text!r}. Generation stops when the model "
               "produces EOS, and EOS is not part of the text: stop before appending it.",
               expected + eos_text)
    if "\n" in expected:
        cut = expected.index("\n")
        stop = ("you stopped at the first newline; stop only at the EOS token (or after "
                "`max_tokens` new tokens).")
        yield stop, expected[:cut]
        yield stop, expected[:cut + 1]
    right = _gen(model, prompt, max_tokens, at_last_position(layer, fv))
    yield include, _text(model, model.to_tokens(prompt)[0].tolist() + right)
    yield _seed_loop_message(layer), _text(model, _gen(model, prompt, max_tokens,
                                                       at_last_position(layer, fv), use_cache=False))
    yield ("`fv` is added only at the prompt's final position: the generated positions never get "
           "it. Keep the hook on in every step, so each new position gets `fv` when it is "
           "computed.", _text(model, _gen(model, prompt, max_tokens, _first_pass_only(layer, fv))))
    yield ("`fv` is added only in the first step; the later steps re-run the sequence with no "
           "vector at all. Keep the hook on in every step.",
           _text(model, _gen(model, prompt, max_tokens, _FirstStepOnly(layer, fv), use_cache=False)))
    yield ("no vector was added at all (your text is the model's plain greedy continuation). Does "
           f"your hook return the modified tensor, and is it on `blocks.{layer}.hook_resid_post`?",
           _text(model, _gen(model, prompt, max_tokens, None)))
    yield ("`fv` was added at EVERY position, the prompt's earlier positions included. Add it "
           "at the prompt's final position and at each generated position only (`[:, -1]` of "
           "each pass, with a cache).",
           _text(model, _gen(model, prompt, max_tokens, _every_position(layer, fv))))
    for n, what in ((max_tokens + 1, "one token too many"), (max_tokens - 1, "one token too few")):
        if n >= 0:
            tokens = _gen(model, prompt, n, at_last_position(layer, fv))
            yield (f"{what}: you generated {len(tokens)} new tokens with max_tokens={max_tokens}. "
                   "Generate at most `max_tokens` new tokens (`for _ in range(max_tokens)`), "
                   "counting the EOS token if it comes.", _text(model, tokens))
    if eos is not None:
        full = _gen(model, prompt, max_tokens, at_last_position(layer, fv), stop_at_eos=False)
        if eos in full:
            no_stop = (f"generation did not stop at the EOS token {eos_text!r}: stop as soon as "
                       "the model produces it (and leave it out of the text).")
            yield no_stop, _text(model, full)
            yield no_stop, model.tokenizer.decode(full, skip_special_tokens=True)
    default = bool(model.cfg.default_prepend_bos)
    yield ((f"the prompt was tokenized {'without' if default else 'with'} a BOS token "
            f"(`prepend_bos={not default}`). Tokenize with `model.to_tokens(prompt)`, which uses "
            "the model's own setting."),
           _text(model, _gen(model, prompt, max_tokens, at_last_position(layer, fv),
                             prepend_bos=not default)))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            yield (f"`fv` was added at layer {other}, not at `blocks.{layer}.hook_resid_post` (off "
                   "by one? `hook_resid_pre` of a block is `hook_resid_post` of the one before).",
                   _text(model, _gen(model, prompt, max_tokens, at_last_position(other, fv))))
    for k, what in ((2.0, "added twice (or doubled)"), (-1.0, "subtracted instead of added")):
        yield (f"`fv` was {what}.",
               _text(model, _gen(model, prompt, max_tokens, at_last_position(layer, k * fv))))


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def _as_text(result, name: str) -> str:
    if result is None:
        raise CheckFailure(f"`{name}` returned None; it should return the generated text (a str). "
                           "Did you forget a `return`?")
    if isinstance(result, Tensor) or (isinstance(result, (list, tuple)) and result
                                      and all(isinstance(t, int) for t in result)):
        raise CheckFailure(f"`{name}` returned token ids ({type(result).__name__}); return the "
                           "text: `model.tokenizer.decode(new_tokens)`.")
    if not isinstance(result, str):
        raise CheckFailure(f"`{name}` should return a str (the generated text), got "
                           f"{type(result).__name__}.")
    return result


def _same(got: str, expected: str) -> bool:
    """Equal, character for character: the text is ``model.tokenizer.decode(new_tokens)``, and
    its leading space is part of it (``" old"``, not ``"old"``)."""
    return got == expected


def _reference_text(model, case: GenCase) -> str:
    """The reference's text for ``case`` (kept per model)."""
    from fv_exercises.reference.generation import generate_with_function_vector as reference

    per_model = _EXPECTED.setdefault(model, {})
    if case not in per_model:
        per_model[case] = reference(model, case.prompt, case_vector(model, case),
                                    case.layer(model), case.max_tokens)
    return per_model[case]


def _piecewise(model, case: GenCase) -> str:
    """The reference's tokens decoded one at a time and joined (a correct way to build the
    text; it differs from decoding them together only where a character spans two tokens)."""
    fv, layer = case_vector(model, case), case.layer(model)
    tokens = _gen(model, case.prompt, case.max_tokens, at_last_position(layer, fv))
    return "".join(model.tokenizer.decode([t]) for t in tokens)


def _describe(got: str, expected: str) -> str:
    common = 0
    while common < min(len(got), len(expected)) and got[common] == expected[common]:
        common += 1
    return (f"yours:         {got!r}\nthe reference: {expected!r}\n(they agree on the first "
            f"{common} characters)")


def check_generate_with_function_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``generate_with_function_vector(model, prompt, fv, layer, max_tokens) -> str``.

    Three cases: the first is called twice (greedy decoding gives the same text every time), the
    second has another prompt, vector, layer and ``max_tokens`` (state kept between calls shows),
    the third is a chat prompt the model answers briefly, so generation must stop at EOS.
    """
    name = "generate_with_function_vector"
    cases = _HIDDEN if hidden else _CASES
    with quiet(model):
        first_context = None
        for i, case in enumerate(cases):
            fv, layer = case_vector(model, case), case.layer(model)
            expected = _reference_text(model, case)
            context = f"prompt {case.prompt!r}, layer {layer}, max_tokens {case.max_tokens}"
            got = _as_text(call_learner(fn, name, model, case.prompt, fv.clone(), layer,
                                        case.max_tokens), name)
            if i == 0 and not hidden:  # the visible run checks repeat calls
                again = _as_text(call_learner(fn, name, model, case.prompt, fv.clone(), layer,
                                              case.max_tokens), name)
                if again != got:
                    raise CheckFailure(
                        f"Calling `{name}` twice with the same inputs gave two different texts "
                        f"({got!r} and {again!r}). Greedy decoding is deterministic: pick the "
                        "most likely token (`logits[0, -1].argmax()`), do not sample. (Or "
                        "something from the first call leaks into the second.)")
            if _same(got, expected) or _same(got, _piecewise(model, case)):
                if i == 0:
                    first_context = context
                continue
            head = f"`{name}` gives a different text ({context}).\n{_describe(got, expected)}"
            for description, text in _variants(model, case.prompt, fv, layer, case.max_tokens,
                                               expected):
                if text != expected and _same(got, text):
                    raise CheckFailure(f"{head}\nYour text matches a common mistake: {description}")
            if first_context is not None:
                raise CheckFailure(f"{head}\n{stale_state_message(name, first_context, context)}")
            raise CheckFailure(
                f"{head}\nNo common mistake reproduces it. Check: greedy `argmax` on the last "
                "position's logits; `fv` added at `[:, -1]` of "
                f"`blocks.{layer}.hook_resid_post` in every pass; with a cache, feed only the new "
                "token with `past_key_values=cache`; stop at EOS; return only the new text.")
    if not hidden:
        print(f"generate_with_function_vector matches the reference ({len(cases)} prompts: "
              f"layers {', '.join(str(c.layer(model)) for c in cases)}; the chat prompt stops at "
              "EOS).")
