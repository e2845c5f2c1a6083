"""Check cells of notebook 01 (task vectors): ``find_task_vector`` and ``mean_task_vector``.

Shared machinery (calling the learner safely, comparing, naming mistakes) is in
:mod:`fv_exercises.checks.core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    as_tensor,
    cached_per_model,
    call_learner,
    compare,
    padding_message,
    quiet,
    repeat_consistent,
    stale_state_message,
    token_lengths,
)
from fv_exercises.evaluation import resid_post_name as _post
from fv_exercises.evaluation import last_position_states

# --------------------------------------------------------------------------------------------
# find_task_vector
# --------------------------------------------------------------------------------------------

# (visible, second call with other inputs); hidden cases are scored by nbgrader only.
_FTV_CASES = (Case("antonym", seed=0, layer_fraction=0.65), Case("capitalize", seed=3, layer_fraction=0.5))
_FTV_HIDDEN = (Case("present_past", seed=3, layer_fraction=0.4), Case("country_capital", seed=5, layer_fraction=0.9))


def add_state_variant(model, icl_prompt: str | Tensor, zero_prompt: str | Tensor, read: str,
                      write: str, read_pos: int = -1, every_position: bool = False,
                      scale: float = 1.0, replace: bool = False) -> Tensor:
    """Logits of ``zero_prompt`` with the ICL state at hook ``read`` added at hook ``write``
    (prompts as text or as ``[1, seq]`` tokens; a variant of the recipe for naming mistakes).
    ``replace``: the final state is replaced by it instead."""
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda n: n == read)
    h = cache[read][:, read_pos] * scale

    def hook(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        if replace:
            resid[:, -1] = h
        elif every_position:
            resid += h[:, None]
        else:
            resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_prompt, fwd_hooks=[(write, hook)])


def _ftv_variants(model, icl: str, zero: str, layer: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``find_task_vector`` and the logits they give (lazy, cheapest first)."""
    yield ("no vector was added at all (the output equals the plain zero-shot run). Does your hook "
           f"return the modified tensor, and is it registered on `blocks.{layer}.hook_resid_post`?",
           model(zero))
    yield ("h was taken from the FIRST position of the ICL prompt (index 0); the task is encoded "
           "at the final position (index -1).",
           add_state_variant(model, icl, zero, _post(layer), _post(layer), read_pos=0))
    yield ("h was added at EVERY position of the zero-shot prompt; add it at the final position "
           "only.", add_state_variant(model, icl, zero, _post(layer), _post(layer), every_position=True))
    yield ("h was added twice (or doubled).",
           add_state_variant(model, icl, zero, _post(layer), _post(layer), scale=2.0))
    # blocks.{l}.hook_resid_pre is the same tensor as blocks.{l-1}.hook_resid_post.
    early = f" (or `hook_resid_pre`, which is the residual stream BEFORE block {layer})"
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            hint = early if other == layer - 1 else ""
            yield (f"h was read from layer {other}{hint}, not from `hook_resid_post` of layer "
                   f"{layer} (off by one?).", add_state_variant(model, icl, zero, _post(other), _post(layer)))
            yield (f"h was added at layer {other}{hint}, not at `hook_resid_post` of layer {layer} "
                   "(off by one?).", add_state_variant(model, icl, zero, _post(layer), _post(other)))


def logits_tensor(result, name: str, shape: tuple[int, ...]) -> Tensor:
    """``result`` as float32 logits of ``shape`` (``[1, seq, d_vocab]``); a result one position
    longer or shorter than the zero-shot prompt is named as the BOS token it almost always is."""
    if (isinstance(result, Tensor) and result.dim() == 3 and result.shape[0] == 1
            and result.shape[2] == shape[2] and abs(result.shape[1] - shape[1]) == 1):
        longer = result.shape[1] > shape[1]
        raise CheckFailure(
            f"`{name}` returned logits for {result.shape[1]} positions; the zero-shot prompt has "
            f"{shape[1]} tokens. One position {'longer' if longer else 'shorter'}: "
            f"{'a BOS token was prepended' if longer else 'the BOS token the model uses is missing'}"
            "? The course tokenizes as the model's own setting says "
            "(`model.cfg.default_prepend_bos`): pass the prompt strings to the model as they are, "
            "or use `model.to_tokens(prompt)` without `prepend_bos=`.")
    return as_tensor(result, name, shape, "logits [1, seq_len, d_vocab]")


def _ftv_inputs(model, case: Case) -> tuple[str, str, int]:
    ds = case.dataset()
    return ds.prompts[0], ds.zero_shot_prompts[0], case.layer(model)


def check_find_task_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_vector(model, icl_prompt, zero_shot_prompt, layer) -> logits``.

    Two cases, in order: the first is compared (and called twice: nothing may leak between runs),
    the second has another prompt and layer (a value kept from the first call shows there).
    """
    from fv_exercises.reference.task_vectors import find_task_vector as reference

    name = "find_task_vector"
    cases = _FTV_HIDDEN if hidden else _FTV_CASES
    with quiet(model):
        first: tuple[Tensor, str] | None = None
        for i, case in enumerate(cases):
            icl, zero, layer = _ftv_inputs(model, case)
            expected = reference(model, icl, zero, layer).float()
            shape = tuple(expected.shape)
            got = logits_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape)
            context = f"task {case.task}, layer {layer}"
            stale = stale_state_message(name, first[1], context) if first else None
            compare(got, expected, lambda: _ftv_variants(model, icl, zero, layer), name, "logits",
                    atol=1e-3, context=context, unexplained=stale)
            if i == 0 and not hidden:  # the visible run checks repeat calls and list lengths
                again = as_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape, "logits")
                repeat_consistent(got, again, name, atol=1e-3)
                first = (got, context)
    if not hidden:
        case = cases[0]
        print(f"find_task_vector matches the reference (task {case.task}, layer {case.layer(model)}, "
              f"and a second prompt at layer {cases[1].layer(model)}).")


# --------------------------------------------------------------------------------------------
# mean_task_vector
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListsCase(Case):
    """A case whose two lists differ in length: the first ``n_icl`` few-shot prompts against the
    first ``n_zero`` zero-shot prompts (0: all ``n_prompts``), so a mean over
    ``zip(icl, zero_shot)`` (which stops at the shorter list) or a division by one list's length
    shows."""

    n_icl: int = 0
    n_zero: int = 0


def case_lists(case: Case) -> tuple[list[str], list[str]]:
    """``(icl_prompts, zero_shot_prompts)`` of a case (prompts of different token lengths)."""
    ps = case.mixed()
    icl, zero = list(ps.prompts), list(ps.zero_shot_prompts)
    if isinstance(case, ListsCase):
        icl, zero = icl[:case.n_icl or None], zero[:case.n_zero or None]
    return icl, zero


# Prompts of different token lengths (2, 1 and 3 demonstrations; zero-shot queries of 6-9
# tokens), so a batched version that reads [:, -1] of right-padded rows fails visibly.
_MTV_CASES = (Case("lowercase", seed=3, layer_fraction=0.65, n_prompts=4, n_shots=2),
              Case("country_capital", seed=2, layer_fraction=0.5, n_prompts=3, n_shots=2))
# The hidden run calls each case once, so its cases carry what the visible run's extra calls
# test: lists of different lengths (3 few-shot vs 2 zero-shot prompts, then 2 vs 4), prompts of
# different token lengths (2, 1 and 3 demonstrations) in both. Few, short prompts: grading time.
_MTV_HIDDEN = (ListsCase("country_capital", seed=7, layer_fraction=0.3, n_prompts=3, n_shots=2,
                         n_zero=2),
               ListsCase("lowercase", seed=5, layer_fraction=0.8, n_prompts=4, n_shots=2, n_icl=2))


def reference_mean_task_vector(model, icl: list[str], zero: list[str], layer: int) -> Tensor:
    """``[d_model]``: the reference's ``mean_task_vector`` (one forward pass per prompt), computed
    with one right-padded pass per list that stops after ``layer``, once per model and inputs.
    Notebook 08's ``sycophancy_vector`` is the same computation. tests/test_checks_01.py and
    tests/test_checks_08.py assert that it agrees with both references."""
    def compute() -> Tensor:
        return (last_position_states(model, icl, layer).float().mean(0)
                - last_position_states(model, zero, layer).float().mean(0))

    return cached_per_model(model, ("mean_task_vector", tuple(icl), tuple(zero), layer), compute)


def _padded_final_states(model, prompts: list[str], hook_name: str) -> Tensor:
    """What a batched version gets: all prompts in one right-padded batch, position -1 of each row."""
    _, cache = model.run_with_cache(prompts, names_filter=lambda n: n == hook_name)
    return cache[hook_name][:, -1]


def _all_states(model, prompts: list[str], layers: list[int]) -> dict[int, list[Tensor]]:
    """``{layer: [resid_post of prompt i, [seq_i, d_model]]}``: one forward pass per prompt, once
    per model and inputs (the variants of notebooks 01 and 09 read the same states)."""
    def compute() -> dict[int, list[Tensor]]:
        names = {_post(l) for l in layers}
        out: dict[int, list[Tensor]] = {l: [] for l in layers}
        for p in prompts:
            _, cache = model.run_with_cache(p, names_filter=lambda n: n in names)
            for l in layers:
                out[l].append(cache[_post(l)][0])
        return out

    return cached_per_model(model, ("resid_post states", tuple(prompts), tuple(layers)), compute)


def neighbour_layers(model, layer: int) -> list[int]:
    """``layer`` and the layers either side of it that exist (off-by-one mistakes read those)."""
    return [l for l in (layer - 1, layer, layer + 1) if 0 <= l < model.cfg.n_layers]


def _mtv_variants(model, icl: list[str], zero: list[str], layer: int,
                  name: str = "mean_task_vector") -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``mean_task_vector``, all derived from one run per prompt (and, for
    padding, one batched run per list)."""
    layers = neighbour_layers(model, layer)
    A, B = _all_states(model, icl, layers), _all_states(model, zero, layers)

    def mean_at(states: list[Tensor], pos: int) -> Tensor:
        return torch.stack([s[pos] for s in states]).mean(0)

    a, b = torch.stack([s[-1] for s in A[layer]]), torch.stack([s[-1] for s in B[layer]])
    yield ("you returned the mean ICL state without subtracting the zero-shot mean.", a.mean(0))
    yield "the subtraction is the wrong way round (zero-shot minus ICL).", b.mean(0) - a.mean(0)
    yield ("you SUMMED over prompts instead of taking the mean.", a.sum(0) - b.sum(0))
    n = len(icl)
    yield (f"you divided both sums by the number of ICL prompts ({n}); divide each sum by the "
           "length of its own list (or use `.mean(0)`).", (a.sum(0) - b.sum(0)) / n)
    m = min(len(icl), len(zero))
    if len(icl) != len(zero):
        left = abs(len(icl) - len(zero))
        longer = "ICL" if len(icl) > len(zero) else "zero-shot"
        yield (f"you paired the lists with `zip` ({len(icl)} ICL vs {len(zero)} zero-shot "
               f"prompts): `zip` stops at the shorter list, so the last {left} {longer} "
               f"prompt{'s were' if left > 1 else ' was'} left out. The lists need not have the "
               "same length: take the mean of each list on its own, then subtract.",
               a[:m].mean(0) - b[:m].mean(0))
    if max(len(icl), len(zero)) > 1:
        yield ("only the LAST prompt of each list counts: the state is overwritten in your loop "
               "(`h = ...`) instead of collected (`states.append(...)`), so your 'mean' is one "
               "prompt's state. Collect every prompt's state, then take the mean.", a[-1] - b[-1])
    yield ("you took the FIRST position of each prompt; use the final position (-1).",
           mean_at(A[layer], 0) - mean_at(B[layer], 0))
    yield ("you averaged over all positions of each prompt; use the final position only.",
           torch.stack([s.mean(0) for s in A[layer]]).mean(0)
           - torch.stack([s.mean(0) for s in B[layer]]).mean(0))
    for other in layers:
        if other != layer:
            hint = f" (or `hook_resid_pre` of layer {layer}, which is the same tensor)" if other < layer else ""
            yield (f"you read layer {other}{hint}, not `hook_resid_post` of layer {layer} (off by one?).",
                   mean_at(A[other], -1) - mean_at(B[other], -1))
    lengths = token_lengths(model, icl) + token_lengths(model, zero)
    post = _post(layer)
    yield (padding_message(name, lengths),
           _padded_final_states(model, icl, post).mean(0) - _padded_final_states(model, zero, post).mean(0))


def _mtv_scale_causes(n_icl: int, expected: Tensor) -> dict[float, str]:
    causes = {float(n_icl): "you SUMMED over prompts instead of taking the mean"}
    if expected.norm() > 0:
        causes[1 / expected.norm().item()] = ("you normalised the vector to unit length; the "
                                              "exercise asks for the raw mean difference")
    return causes


def check_mean_task_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``mean_task_vector(model, icl_prompts, zero_shot_prompts, layer) -> [d_model]``.

    Each case's prompts have different token lengths; in the visible run the first case is called
    twice with the same inputs (nothing may leak), then with 2 ICL prompts against all zero-shot
    prompts (a fixed count shows); the second case has other prompts and another layer (state
    kept between calls shows). The hidden run calls each of its cases once (grading time); their
    lists differ in length (:class:`ListsCase`).
    """
    name = "mean_task_vector"
    cases = _MTV_HIDDEN if hidden else _MTV_CASES
    with quiet(model):
        first: tuple[Tensor, str] | None = None
        for i, case in enumerate(cases):
            (icl, zero), layer = case_lists(case), case.layer(model)
            expected = reference_mean_task_vector(model, icl, zero, layer)
            shape = tuple(expected.shape)
            got = as_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape,
                            "task vector [d_model]")
            context = (f"task {case.task}, {len(icl)} prompts, layer {layer}" if len(icl) == len(zero)
                       else f"task {case.task}, {len(icl)} ICL vs {len(zero)} zero-shot prompts, "
                       f"layer {layer}")
            compare(got, expected, lambda: _mtv_variants(model, icl, zero, layer), name,
                    "task vector", atol=1e-3, context=context,
                    scale_causes=lambda: _mtv_scale_causes(len(icl), expected),
                    unexplained=stale_state_message(name, first[1], context) if first else None)
            if i == 0 and not hidden:  # the visible run checks repeat calls and list lengths
                again = as_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape, "task vector")
                repeat_consistent(got, again, name, atol=1e-3)
                first = (got, context)
                # Different list lengths: a learner who divides by one fixed count fails here.
                few = icl[:2]
                uneven = as_tensor(call_learner(fn, name, model, few, zero, layer), name, shape, "task vector")
                compare(uneven, reference_mean_task_vector(model, few, zero, layer),
                        lambda: _mtv_variants(model, few, zero, layer), name, "task vector",
                        atol=1e-3, context=f"{context}, but 2 ICL prompts vs {len(zero)} zero-shot prompts")
    if not hidden:
        print(f"mean_task_vector matches the reference (tasks {cases[0].task} and {cases[1].task}, "
              f"prompts of different lengths, layers {cases[0].layer(model)} and "
              f"{cases[1].layer(model)}; |h| = {expected.norm():.1f}).")
