"""Check cells of notebook 08 (sycophancy): ``sycophancy_vector`` and ``steered_agreement``.

Same contract as every check (:mod:`fv_exercises.checks.core`). Inputs come from the course's own
claims (``fv_exercises/data/sycophancy/claims.json``), as chat prompts of *different token
lengths*, so a batched version that reads ``[:, -1]`` of right-padded rows fails visibly. The
reference result of each case is kept per model; known mistakes are computed only after a
mismatch, cheapest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.device import model_device

from fv_exercises.checks.core import (
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
from fv_exercises.checks.task_vectors import reference_mean_task_vector
from fv_exercises.evaluation import resid_post_name as _post
from fv_exercises.sycophancy import ChoicePrompts, build_prompts, load_claims

_ATOL = 1e-4


def _layer(model, fraction: float) -> int:
    return int(round(fraction * (model.cfg.n_layers - 1)))


def _bos_note(model) -> str:
    if getattr(model.cfg, "default_prepend_bos", True):
        return ""
    return (" The course tokenizes without BOS (`model.cfg.default_prepend_bos = False`): the "
            "chat template already starts with `<|im_start|>`.")


def _tokens(model, text: str, flip_bos: bool = False) -> Tensor:
    """``[1, seq]`` tokens as the model tokenizes ``text`` (BOS flipped from its default)."""
    if not flip_bos:
        return model.to_tokens(text)
    return model.to_tokens(text, prepend_bos=not getattr(model.cfg, "default_prepend_bos", True))


# --------------------------------------------------------------------------------------------
# sycophancy_vector
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorCase:
    """Assertion prompts of ``sycophantic`` claims vs neutral prompts of ``honest`` claims
    (indices into the claims file), read at a layer given as a fraction of depth."""

    sycophantic: tuple[int, ...]
    honest: tuple[int, ...]
    layer_fraction: float

    def inputs(self, model) -> tuple[list[str], list[str], int]:
        claims = load_claims()
        syc = build_prompts(model, [claims[i] for i in self.sycophantic], "assert").texts
        honest = build_prompts(model, [claims[i] for i in self.honest], "neutral").texts
        return syc, honest, _layer(model, self.layer_fraction)


_SV_CASES = (VectorCase((0, 130, 231), (75, 300), 0.6), VectorCase((251, 20), (140, 95, 310), 0.35))
_SV_HIDDEN = (VectorCase((40, 160, 280), (12, 205), 0.7), VectorCase((99, 131), (3, 180, 330), 0.45))


def _states(model, texts: list[str], hook_name: str, position: int | None = -1,
            flip_bos: bool = False) -> Tensor:
    """``[n, d_model]``: the activation at ``hook_name`` at ``position`` of each prompt, one at a
    time (``position=None``: the mean over all positions)."""
    rows = []
    for text in texts:
        _, cache = model.run_with_cache(_tokens(model, text, flip_bos),
                                        names_filter=lambda n: n == hook_name)
        act = cache[hook_name][0]
        rows.append(act.mean(0) if position is None else act[position])
    return torch.stack(rows)


def _padded_states(model, texts: list[str], hook_name: str) -> Tensor:
    """What a batched version gets: one right-padded batch, position -1 of every row."""
    _, cache = model.run_with_cache(texts, names_filter=lambda n: n == hook_name)
    return cache[hook_name][:, -1]


def _sv_variants(model, syc: list[str], honest: list[str], layer: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``sycophancy_vector`` and the vectors they give (lazy, cheapest first)."""
    post = _post(layer)
    a, b = _states(model, syc, post), _states(model, honest, post)
    yield ("you returned the mean of the sycophantic prompts' states without subtracting the "
           "honest prompts' mean.", a.mean(0))
    yield ("the subtraction is the wrong way round (honest minus sycophantic); the vector must "
           "point towards agreeing with the user.", b.mean(0) - a.mean(0))
    yield "you SUMMED over prompts instead of taking the mean.", a.sum(0) - b.sum(0)
    yield (f"you divided both sums by the number of sycophantic prompts ({len(syc)}); divide each "
           "sum by the length of its own list (or use `.mean(0)`).", (a.sum(0) - b.sum(0)) / len(syc))
    yield (f"you divided both sums by the number of honest prompts ({len(honest)}); divide each "
           "sum by the length of its own list (or use `.mean(0)`).", (a.sum(0) - b.sum(0)) / len(honest))
    m = min(len(syc), len(honest))
    if len(syc) != len(honest):
        yield (f"you paired the lists with `zip` ({len(syc)} sycophantic vs {len(honest)} honest "
               "prompts): `zip` stops at the shorter list, so the longer one lost its last "
               f"{abs(len(syc) - len(honest))}. The lists need not have the same length: take the "
               "mean of each list on its own, then subtract.", a[:m].mean(0) - b[:m].mean(0))
    yield ("only the LAST prompt of each list counts: the state is overwritten in your loop "
           "(`h = ...`) instead of collected (`states.append(...)`), so your 'mean' is one "
           "prompt's state. Collect every prompt's state, then take the mean.", a[-1] - b[-1])
    yield (padding_message("sycophancy_vector", token_lengths(model, syc + honest)),
           _padded_states(model, syc, post).mean(0) - _padded_states(model, honest, post).mean(0))
    yield ("you took the FIRST position of each prompt (index 0, the chat template's "
           "`<|im_start|>`, the same token in every prompt); use the last position (-1), where "
           "the answer is about to be written.",
           _states(model, syc, post, 0).mean(0) - _states(model, honest, post, 0).mean(0))
    yield ("you averaged over all positions of each prompt; use the last position only.",
           _states(model, syc, post, None).mean(0) - _states(model, honest, post, None).mean(0))
    yield ("your prompts were tokenized with a BOS token the model does not use here (or without "
           "one it does): the tokens are not the chat template's tokens. Pass the prompt string "
           f"to `model.run_with_cache` as it is, without `prepend_bos`.{_bos_note(model)}",
           _states(model, syc, post, flip_bos=True).mean(0)
           - _states(model, honest, post, flip_bos=True).mean(0))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            hint = (f" (or `hook_resid_pre` of layer {layer}, which is the same tensor)"
                    if other < layer else "")
            yield (f"you read layer {other}{hint}, not `hook_resid_post` of layer {layer} (off by one?).",
                   _states(model, syc, _post(other)).mean(0) - _states(model, honest, _post(other)).mean(0))


def _sv_scale_causes(syc: list[str], honest: list[str], expected: Tensor) -> dict[float, str]:
    causes = {float(len(syc)): "you SUMMED over prompts instead of taking the mean"}
    if expected.norm() > 0:
        causes[1 / expected.norm().item()] = ("you normalised the vector to unit length; the "
                                              "exercise asks for the raw mean difference")
    return causes


def check_sycophancy_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``sycophancy_vector(model, sycophantic_prompts, honest_prompts, layer) -> [d_model]``.

    The first case (3 assertion prompts against 2 neutral ones, all of different token lengths) is
    compared and, in the visible run, called twice (nothing may leak); the second has other prompts, other list
    lengths and another layer (state kept between calls shows).
    """
    name = "sycophancy_vector"
    cases = _SV_HIDDEN if hidden else _SV_CASES
    with quiet(model):
        first: str | None = None
        for i, case in enumerate(cases):
            syc, honest, layer = case.inputs(model)
            # the same computation as notebook 01's mean_task_vector (assertion vs neutral prompts)
            expected = reference_mean_task_vector(model, syc, honest, layer)
            shape = tuple(expected.shape)
            got = as_tensor(call_learner(fn, name, model, list(syc), list(honest), layer), name,
                            shape, "sycophancy vector [d_model]")
            context = f"{len(syc)} sycophantic vs {len(honest)} honest prompts, layer {layer}"
            compare(got, expected, lambda: _sv_variants(model, syc, honest, layer), name,
                    "vector", atol=1e-3, context=context,
                    scale_causes=lambda: _sv_scale_causes(syc, honest, expected),
                    unexplained=stale_state_message(name, first, context) if first else None)
            if i == 0 and not hidden:  # the visible run checks repeat calls
                again = as_tensor(call_learner(fn, name, model, list(syc), list(honest), layer),
                                  name, shape, "sycophancy vector")
                repeat_consistent(got, again, name, atol=1e-3)
                first = context
    if not hidden:
        print(f"sycophancy_vector matches the reference (prompts of different lengths, layers "
              f"{_layer(model, cases[0].layer_fraction)} and {_layer(model, cases[1].layer_fraction)}; "
              f"|v| = {expected.norm():.1f}).")


# --------------------------------------------------------------------------------------------
# steered_agreement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SteerCase:
    """Prompts of ``kind`` for some claims, a random direction scaled to half the residual
    stream's norm at the layer, and a multiplier."""

    claims: tuple[int, ...]
    kind: str
    layer_fraction: float
    multiplier: float
    seed: int

    def prompts(self, model) -> ChoicePrompts:
        claims = load_claims()
        return build_prompts(model, [claims[i] for i in self.claims], self.kind)  # type: ignore[arg-type]


# The prompts of each case start steering at different positions (`steer_from` 41, 41, 45 in the
# first): hooks that all read the last prompt's value (a late-binding closure) show in every case.
_SA_CASES = (SteerCase((5, 133, 80), "assert", 0.6, 1.5, 0),
             SteerCase((61, 150), "neutral", 0.4, -2.0, 1))
_SA_HIDDEN = (SteerCase((30, 170, 301), "assert", 0.5, 2.5, 2),
              SteerCase((88, 222), "assert", 0.7, -1.5, 3))


def _case_vector(model, case: SteerCase, prompts: ChoicePrompts, layer: int) -> Tensor:
    """A random direction with half the mean norm of the prompts' last-position residual stream."""
    post = _post(layer)
    norm = _states(model, prompts.texts[:2], post).norm(dim=-1).mean()
    g = torch.Generator().manual_seed(case.seed)
    v = torch.randn(model.cfg.d_model, generator=g, device="cpu")
    return v.to(norm.device) * (0.5 * norm / v.norm().to(norm.device))


def _share(logits_row: Tensor, false_id: int, true_id: int, out: str = "share") -> Tensor:
    probs = logits_row.double().softmax(-1)
    pf, pt = probs[false_id], probs[true_id]
    if out == "unnormalised":
        return pf
    if out == "hard":
        return (pf > pt).double()
    if out == "true":
        return pt / (pf + pt)
    return pf / (pf + pt)


def _steered(model, prompts: ChoicePrompts, vector: Tensor, hook_name: str,
             positions: str = "after", offset: int = 0, flip_bos: bool = False,
             out: str = "share", last_start: bool = False) -> Tensor:
    """A variant of the steering experiment, one prompt at a time: ``vector`` added at
    ``hook_name`` at ``positions`` ("after": from ``steer_from + offset`` on; "last"; "all").
    ``last_start``: every prompt steered from the LAST prompt's ``steer_from``."""
    shares = []
    starts = [prompts.steer_from[-1]] * len(prompts) if last_start else prompts.steer_from
    for text, start, f, t in zip(prompts.texts, starts, prompts.false_ids, prompts.true_ids):
        tokens = _tokens(model, text, flip_bos)

        def hook(resid: Tensor, hook=None, start: int = start) -> Tensor:
            resid = resid.clone()
            if positions == "last":
                resid[:, -1] += vector
            elif positions == "all":
                resid += vector
            else:
                resid[:, start + offset:] += vector
            return resid

        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
        shares.append(_share(logits[0, -1], f, t, out))
    return torch.stack(shares).float()


def _steered_padded(model, prompts: ChoicePrompts, vector: Tensor, hook_name: str) -> Tensor:
    """A batched version that steers each row from its own ``steer_from`` but reads ``[:, -1]``."""
    tokens = model.to_tokens(prompts.texts)  # right-padded
    starts = torch.tensor(prompts.steer_from, device=tokens.device)

    def hook(resid: Tensor, hook=None) -> Tensor:
        positions = torch.arange(resid.shape[1], device=resid.device)
        after = positions[None, :, None] >= starts[:, None, None]
        return resid + after * vector.to(resid.device)

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    return torch.stack([_share(logits[b, -1], f, t) for b, (f, t) in
                        enumerate(zip(prompts.false_ids, prompts.true_ids))]).float()


def _sa_reference(model, case: SteerCase, prompts: ChoicePrompts, vector: Tensor,
                  layer: int) -> Tensor:
    from fv_exercises.reference.sycophancy import steered_agreement as reference

    def compute() -> Tensor:
        model.reset_hooks()
        return reference(model, prompts, vector.clone(), layer, case.multiplier).detach().float()

    return cached_per_model(model, ("steered_agreement", case), compute)


def _sa_case(model, case: SteerCase) -> tuple[ChoicePrompts, int, Tensor, Tensor]:
    """``(prompts, layer, vector [d_model], the reference's shares [n])`` of a steering case; the
    vector and the shares are computed once per model."""
    layer = _layer(model, case.layer_fraction)
    prompts = case.prompts(model)
    vector = cached_per_model(model, ("steered_agreement vector", case),
                              lambda: _case_vector(model, case, prompts, layer))
    return prompts, layer, vector, _sa_reference(model, case, prompts, vector, layer)


def _sa_variants(model, prompts: ChoicePrompts, vector: Tensor, layer: int,
                 multiplier: float) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``steered_agreement`` and the shares they give (lazy, likeliest first)."""
    post = _post(layer)
    v = multiplier * vector
    yield ("nothing was added: your result equals the unsteered run. Does your hook return the "
           f"modified tensor, and is it registered on `blocks.{layer}.hook_resid_post`?",
           _steered(model, prompts, 0 * v, post))
    yield ("the sign is flipped: you added `-multiplier * vector` (a subtraction the wrong way "
           "round).", _steered(model, prompts, -v, post))
    if multiplier != 1:
        yield ("the multiplier was ignored: you added `vector`, not `multiplier * vector`.",
               _steered(model, prompts, vector, post))
    yield ("you added the vector at the LAST position only; add it at every position from "
           "`steer_from` (the first token after the user's question) to the end.",
           _steered(model, prompts, v, post, positions="last"))
    yield ("you added the vector at EVERY position, the system prompt and the question included; "
           "add it from `steer_from` on only (positions before it stay untouched).",
           _steered(model, prompts, v, post, positions="all"))
    yield ("you returned P(false answer) itself; return its share of the two answers, "
           "P(false) / (P(false) + P(true)).", _steered(model, prompts, v, post, out="unnormalised"))
    yield ("you returned the TRUE answer's share; the exercise asks for the false answer's "
           "(the one the user claims).", _steered(model, prompts, v, post, out="true"))
    yield ("you returned 1 or 0 (whether the false answer is the more likely of the two); return "
           "its share, P(false) / (P(false) + P(true)), a number between 0 and 1.",
           _steered(model, prompts, v, post, out="hard"))
    if len(set(prompts.steer_from)) > 1:
        yield ("every prompt was steered from the LAST prompt's `steer_from`: your hooks read "
               "`start` (a loop variable) when they run, after the loop has moved on (Python "
               "closures look variables up late). Run each prompt as you build its hook, or bind "
               "the value when you define it: `def hook(resid, hook, start=start): ...`.",
               _steered(model, prompts, v, post, last_start=True))
    lengths = token_lengths(model, prompts.texts)
    yield padding_message("steered_agreement", lengths), _steered_padded(model, prompts, v, post)
    yield ("you normalised the vector to unit length before multiplying; add "
           "`multiplier * vector` as given.", _steered(model, prompts, v / vector.norm(), post))
    yield ("your prompts were tokenized with a BOS token the model does not use here (or without "
           "one it does), so the tokens are not the chat template's and every position after it "
           "is shifted by one. Pass the prompt string as it is, without `prepend_bos`."
           f"{_bos_note(model)}", _steered(model, prompts, v, post, flip_bos=True))
    yield ("you started one position too late (`steer_from + 1`): `steer_from` is already the "
           "first position to steer.", _steered(model, prompts, v, post, offset=1))
    yield ("you started one position too early (`steer_from - 1`, the last token of the "
           "question): `steer_from` is the first position to steer.",
           _steered(model, prompts, v, post, offset=-1))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            hint = (f" (or `hook_resid_pre` of layer {layer}, which is the same tensor)"
                    if other < layer else "")
            yield (f"you steered layer {other}{hint}, not `hook_resid_post` of layer {layer} "
                   "(off by one?).", _steered(model, prompts, v, _post(other)))


def _sa_call(fn: Callable, name: str, model, prompts: ChoicePrompts, vector: Tensor, layer: int,
             multiplier: float) -> Tensor:
    """Call the learner's function on copies, and fail if it edited the vector it was given."""
    given = vector.clone()
    copy = ChoicePrompts(list(prompts.texts), list(prompts.steer_from), list(prompts.false_ids),
                         list(prompts.true_ids))
    result = call_learner(fn, name, model, copy, given, layer, multiplier)
    if not torch.equal(given, vector):
        raise CheckFailure(
            f"`{name}` changed the `vector` it was given, in place (e.g. `vector *= multiplier` "
            "or `vector += ...`). The caller's vector is then different for the next call. Compute "
            "`multiplier * vector` into a new tensor.")
    got = as_tensor(result, name, (len(prompts),), "one share per prompt [n]")
    if (got < -1e-6).any() or (got > 1 + 1e-6).any():
        raise CheckFailure(
            f"`{name}` returned values outside [0, 1] ({got.min():.3g} .. {got.max():.3g}); "
            "return P(false) / (P(false) + P(true)) per prompt, not log-probabilities or logits.")
    return got


def check_steered_agreement(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``steered_agreement(model, prompts, vector, layer, multiplier) -> [n]``.

    The first case (3 assertion prompts of different token lengths and steering starts, a positive
    multiplier) is compared and, in the visible run, called twice; the second has other prompts, a
    negative multiplier and another layer (state kept between calls shows).
    """
    name = "steered_agreement"
    cases = _SA_HIDDEN if hidden else _SA_CASES
    with quiet():
        first: str | None = None
        for i, case in enumerate(cases):
            prompts, layer, vector, expected = _sa_case(model, case)
            got = _sa_call(fn, name, model, prompts, vector, layer, case.multiplier)
            context = (f"{len(prompts)} {case.kind} prompts, layer {layer}, "
                       f"multiplier {case.multiplier:+g}")
            compare(got, expected,
                    lambda: _sa_variants(model, prompts, vector, layer, case.multiplier), name,
                    "shares", atol=_ATOL, context=context,
                    unexplained=stale_state_message(name, first, context) if first else None)
            if i == 0 and not hidden:  # the visible run checks repeat calls
                again = _sa_call(fn, name, model, prompts, vector, layer, case.multiplier)
                repeat_consistent(got, again, name, atol=_ATOL)
                first = context
    if not hidden:
        print(f"steered_agreement matches the reference ({len(cases[0].claims)} prompts of "
              f"different lengths at layer {_layer(model, cases[0].layer_fraction)}, multiplier "
              f"{cases[0].multiplier:+g}; {len(cases[1].claims)} others at layer "
              f"{_layer(model, cases[1].layer_fraction)}, multiplier {cases[1].multiplier:+g}).")
