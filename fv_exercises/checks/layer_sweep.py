"""Check cell of notebook 02 (``find_task_layer``): per-layer accuracies against the reference.

Same contract as every check (:mod:`fv_exercises.checks.core`): a passing check prints one line,
a failing one raises ``CheckFailure`` naming the first layer that differs (with both numbers) and,
where a known mistake reproduces the learner's accuracies, that mistake.

Speed: the reference sweep (the probes' last position recomputed from each layer up) is kept per
model and case; known mistakes are only computed after a mismatch, cheapest first, each also in
one batched pass.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    answer_id_variants,
    cached_per_model,
    call_learner,
    describe_scale,
    padding_message,
    quiet,
    stale_state_message,
    token_lengths,
)
from fv_exercises.evaluation import (answer_token_ids, layer_sweep, resid_post_name,
                                     tokenize_right_padded, top1_accuracy)

# Probes are the zero-shot prompts of a case, of DIFFERENT token lengths (a batched version that
# reads [:, -1] of right-padded rows fails visibly); the ICL prompt is the case's first few-shot
# prompt (its own query is probe 0, so late layers, where the ICL state dominates, get that one
# right). Accuracies are multiples of 1/n, exact in float32 and in Python floats. The second case
# (other prompts) exposes state kept between calls. Cases were chosen so that their per-layer
# profiles differ from every known mistake's (tests/test_checks_02.py).
_FTL_CASES = (Case("lowercase", seed=3, layer_fraction=0.0, n_prompts=4),
              Case("first_letter", seed=0, layer_fraction=0.0, n_prompts=4))
# One hidden case (other prompts): enough to catch an answer fitted to the visible cases; each
# learner call is a sweep of every layer, the check's largest cost. Its probes differ in token
# length and, like the visible cases', its per-layer profile differs from every known mistake's
# (h added at `hook_resid_pre` of the same layer included; tests/test_checks_02.py).
_FTL_HIDDEN = (Case("first_letter", seed=2, layer_fraction=0.0, n_prompts=4),)
_ATOL = 1e-6


def _case_inputs(case: Case) -> tuple[str, list[str], list[str]]:
    ds = case.dataset()
    return ds.prompts[0], list(ds.zero_shot_prompts), list(ds.answers)


def _reference(model, case: Case) -> dict[int, float]:
    """The reference's accuracies for ``case``, computed once per model (weights are guarded).

    The reference (``fv_exercises.reference.layer_sweep.find_task_layer``: one forward pass per
    layer) computed the cheap way, by :func:`fv_exercises.evaluation.layer_sweep` (the probes run
    once and only their last position is recomputed from each layer up); tests/test_checks_02.py
    asserts the same accuracies.
    """
    def compute() -> dict[int, float]:
        icl, probes, answers = _case_inputs(case)
        names = [resid_post_name(layer) for layer in range(model.cfg.n_layers)]
        _, cache = model.run_with_cache(icl, names_filter=lambda hook_name: hook_name in names)
        states = torch.stack([cache[name][0, -1] for name in names])  # [n_layers, d_model]
        return dict(enumerate(layer_sweep(model, states, probes, answers).tolist()))

    return cached_per_model(model, ("find_task_layer", case), compute)


def _as_accuracy_dict(result, name: str, n_layers: int) -> dict[int, float]:
    if isinstance(result, Tensor):
        raise CheckFailure(
            f"`{name}` returned a tensor of shape {tuple(result.shape)}; return a dict "
            "{layer: accuracy} with one entry per layer, as in the seed "
            "(e.g. `results[layer] = accuracy`)."
        )
    if not isinstance(result, dict):
        raise CheckFailure(f"`{name}` should return a dict {{layer: accuracy}}, got {type(result).__name__}.")
    out = {}
    for key, value in result.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise CheckFailure(f"`{name}`'s dict has a key {key!r}; keys should be layer numbers (int).") from None
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)):
            raise CheckFailure(
                f"`{name}`'s value for layer {layer} is a {type(value).__name__}; it should be one "
                "number, the fraction of probes answered correctly."
            )
        out[layer] = float(value)
    expected = set(range(n_layers))
    missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing layers {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        raise CheckFailure(
            f"`{name}` should return one entry for every layer 0..{n_layers - 1} "
            f"(`range(model.cfg.n_layers)`): {'; '.join(parts)}."
        )
    return out


def _fmt(acc: dict[int, float] | list[float]) -> str:
    values = acc.values() if isinstance(acc, dict) else acc
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


def _sweep_variant(model, icl_prompt: str, probes: list[str], answers: list[str],
                   read: Callable[[int], str] = resid_post_name, write: Callable[[int], str] = resid_post_name,
                   every_position: bool = False, padded: bool = False,
                   answer_ids: list[int] | None = None) -> list[float]:
    """Per-layer accuracy of a variant recipe: all layers in one batched forward pass.

    Rows ``l * n .. (l + 1) * n - 1`` are the probes with layer ``l``'s vector (read at hook
    ``read(l)``, final position of the ICL prompt) added at hook ``write(l)``. ``padded``: add at
    and read from the batch's last position ``[:, -1]`` instead of each probe's own last token.
    """
    n_layers, n = model.cfg.n_layers, len(probes)
    names = {read(layer) for layer in range(n_layers)}
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda hook_name: hook_name in names)
    tokens, last = tokenize_right_padded(model, probes)
    if padded:
        last = torch.full_like(last, tokens.shape[1] - 1)
    batch, last_all = tokens.repeat(n_layers, 1), last.repeat(n_layers)
    hooks = []
    for layer in range(n_layers):
        rows = torch.arange(layer * n, (layer + 1) * n, device=batch.device)
        h = cache[read(layer)][0, -1]

        def hook(resid: Tensor, hook=None, rows=rows, h=h) -> Tensor:
            resid = resid.clone()
            if every_position:
                resid[rows] += h
            else:
                resid[rows, last_all[rows]] += h
            return resid

        hooks.append((write(layer), hook))
    logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    ids = (answer_token_ids(model, answers) if answer_ids is None
           else torch.tensor(answer_ids, device=logits.device))
    rows_all = torch.arange(len(last_all), device=logits.device)
    correct = logits[rows_all, last_all].argmax(-1) == ids.repeat(n_layers)
    return correct.view(n_layers, n).float().mean(1).tolist()


def _variants(model, icl: str, probes: list[str], answers: list[str],
              ref: list[float]) -> Iterator[tuple[str, list[float | None]]]:
    """Known mistakes and the accuracies they give, cheapest first (a generator: lazy)."""
    yield ("your accuracies are the reference's shifted up by one layer: you read AND added at "
           "`hook_resid_pre` (the residual stream BEFORE block l). Use `blocks.{l}.hook_resid_post` "
           "for both."), [None] + ref[:-1]
    zero_shot = top1_accuracy(model, probes, answers)
    yield ("the same accuracy at every layer, equal to the plain zero-shot accuracy: h was never "
           "added. Does your hook return the modified activation, and is it registered on "
           "`blocks.{l}.hook_resid_post`?"), [zero_shot] * len(ref)
    lengths = token_lengths(model, probes)
    if len(set(lengths)) > 1:
        yield padding_message("find_task_layer", lengths), _sweep_variant(model, icl, probes, answers, padded=True)
    for description, ids in answer_id_variants(model, answers).items():
        yield description, _sweep_variant(model, icl, probes, answers, answer_ids=ids)
    pre = lambda layer: f"blocks.{layer}.hook_resid_pre"  # noqa: E731
    yield ("h was read from `hook_resid_pre` (the residual stream BEFORE block l, i.e. layer l-1's "
           "output; off by one) and added at `hook_resid_post` of layer l. Read `resid_post` of "
           "the same layer you add it to."), _sweep_variant(model, icl, probes, answers, read=pre)
    yield ("h was added at EVERY position of each probe; add it at the final position only "
           "(`resid[:, -1] += h`)."), _sweep_variant(model, icl, probes, answers, every_position=True)
    yield ("h was read from `resid_post` of layer l but added at `hook_resid_pre` of layer l "
           "(= after layer l-1; off by one)."), _sweep_variant(model, icl, probes, answers, write=pre)

    def first_position(layer_read: Callable[[int], str]) -> list[float]:
        # the vector from the ICL prompt's FIRST token: a single-token run gives exactly that state
        first_token = model.to_string(model.to_tokens(icl)[0, :1])
        return _sweep_variant(model, first_token, probes, answers, read=layer_read)

    yield ("h was taken from the FIRST position of the ICL prompt (index 0); the task is encoded "
           "at the final position (-1)."), first_position(resid_post_name)


def _known_mistakes(model, icl: str, probes: list[str], answers: list[str],
                    ref: list[float]) -> list[tuple[str, list[float | None]]]:
    """:func:`_variants`, computed once per model and inputs (a second wrong attempt on the same
    case, or the next wrong version a test tries, costs nothing; weights are guarded)."""
    return cached_per_model(model, ("find_task_layer mistakes", icl, tuple(probes), tuple(answers)),
                            lambda: list(_variants(model, icl, probes, answers, ref)))


def _matches(got: list[float], variant: list[float | None]) -> bool:
    pairs = [(g, v) for g, v in zip(got, variant) if v is not None]
    return all(abs(g - v) <= _ATOL for g, v in pairs)


def _explain(name: str, got: dict[int, float], ref: dict[int, float], model, icl: str,
             probes: list[str], answers: list[str], context: str, unexplained: str | None) -> str:
    layers = sorted(ref)
    first = next(layer for layer in layers if abs(got[layer] - ref[layer]) > _ATOL)
    head = (f"`{name}` gives the wrong accuracy ({context}): first difference at layer {first}, "
            f"yours {got[first]:.4g}, reference {ref[first]:.4g}.\n"
            f"yours:     {_fmt(got)}\nreference: {_fmt(ref)}")
    got_list, ref_list = [got[layer] for layer in layers], [ref[layer] for layer in layers]
    k = _scale(got_list, ref_list)
    if k is not None:
        n = len(probes)
        return f"{head}\n" + describe_scale(k, {
            float(n): f"accuracy as a COUNT of correct probes; divide by the number of probes ({n})",
            100.0: "accuracy in percent; return a fraction between 0 and 1"})
    matching = [d for d, variant in _known_mistakes(model, icl, probes, answers, ref_list)
                if _matches(got_list, variant)]
    if len(matching) == 1:
        return f"{head}\nYour output matches a common mistake: {matching[0]}"
    if matching:
        return (f"{head}\nSeveral common mistakes give exactly your numbers; one of them is yours:\n"
                + "\n".join(f"  - {d}" for d in matching))
    if unexplained:
        return f"{head}\n{unexplained}"
    if all(v == 0 for v in got_list):
        best = max(layers, key=lambda layer: ref[layer])
        return (f"{head}\nYours is 0 at every layer; the reference reaches {ref[best]:.2f} at layer "
                f"{best}. Several mistakes give zeros: the answer token taken without its leading "
                "space or with a special token (use the first token of `\" \" + answer` without "
                "special tokens, as `answer_token_ids` does); h taken from the wrong position of "
                "the ICL prompt; or the probes never run with h added.")
    return (f"{head}\nCheck: `resid_post` of each layer at the final position (-1) of the ICL "
            "prompt, added at that layer's `hook_resid_post`, final position of each probe only; "
            "top-1 compared with the first token of `\" \" + answer`; accuracy as a fraction.")


def _scale(got: list[float], ref: list[float]) -> float | None:
    """``k`` if every layer's accuracy is ``k`` times the reference's (k != 1), else None."""
    nonzero = [(g, r) for g, r in zip(got, ref) if r != 0]
    if not nonzero or any(g != 0 for g, r in zip(got, ref) if r == 0):
        return None
    k = nonzero[0][0] / nonzero[0][1]
    if k == 0 or abs(k - 1) < 1e-9 or any(abs(g - k * r) > 1e-6 * max(1.0, abs(k)) for g, r in nonzero):
        return None
    return k


def check_find_task_layer(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_layer(model, icl_prompt, zero_shot_probes, correct_answers) -> {layer: acc}``.

    Two cases with probes of different token lengths; the second has other prompts, so a result
    kept from the first call shows.
    """
    name = "find_task_layer"
    n_layers = model.cfg.n_layers
    cases = _FTL_HIDDEN if hidden else _FTL_CASES
    with quiet(model):
        first = None
        for case in cases:
            ref = _reference(model, case)
            icl, probes, answers = _case_inputs(case)
            got = _as_accuracy_dict(call_learner(fn, name, model, icl, list(probes), list(answers)),
                                    name, n_layers)
            context = f"task {case.task}, 1 ICL prompt, {len(probes)} probes"
            if any(abs(got[layer] - ref[layer]) > _ATOL for layer in ref):
                stale = stale_state_message(name, first, context) if first else None
                raise CheckFailure(_explain(name, got, ref, model, icl, probes, answers, context, stale))
            first = first or context
    if not hidden:
        ref = _reference(model, cases[0])
        best = max(ref, key=lambda layer: ref[layer])
        print(f"find_task_layer matches the reference (tasks {cases[0].task} and {cases[1].task}, "
              f"probes of different lengths, all {n_layers} layers; best layer {best} at "
              f"{ref[best]:.2f} on {cases[0].task}).")
