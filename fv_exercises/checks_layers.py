"""Check cell for notebook 02 (``find_task_layer``): per-layer accuracies against the reference.

Same contract as :mod:`fv_exercises.checks`: a passing check prints one line to stdout, a
failing one raises ``CheckFailure`` naming the first layer that differs (with both numbers)
and, where a known mistake reproduces the learner's accuracies, that mistake. Nothing goes
to stderr; hooks a learner leaves registered are removed and reported.

Speed: the reference sweep (one batched forward pass per layer) is computed once per model
and case and kept; known mistakes are only computed after a mismatch, cheapest first, and the
costly ones run every layer in a single batched forward pass.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks import Case, CheckFailure, _quiet, call_learner
from fv_exercises.evaluation import answer_token_ids, resid_post_name, tokenize_right_padded, top1_accuracy

# 4 probes: accuracies are multiples of 1/4, exact in float32 and in Python floats.
# Probes are the case's zero-shot prompts; the ICL prompt is the first few-shot prompt (its own
# query is probe 0, so late layers, where the ICL state dominates, get that one right). These
# cases were chosen because their per-layer profiles differ from every known mistake's.
_FTL_CASES = (Case("capitalize", seed=2, layer_fraction=0.0, n_prompts=4),)
_FTL_HIDDEN = (Case("first_letter", seed=2, layer_fraction=0.0, n_prompts=4),)
_ATOL = 1e-6
_REFERENCE_CACHE: dict[tuple, dict[int, float]] = {}


def _case_inputs(case: Case) -> tuple[str, list[str], list[str]]:
    ds = case.dataset()
    return ds.prompts[0], list(ds.zero_shot_prompts), list(ds.answers)


def _reference(model, case: Case) -> dict[int, float]:
    from fv_exercises.reference.layer_sweep import find_task_layer as reference

    key = (id(model), case)
    if key not in _REFERENCE_CACHE:
        model.reset_hooks()
        icl, probes, answers = _case_inputs(case)
        _REFERENCE_CACHE[key] = {int(k): float(v) for k, v in reference(model, icl, probes, answers).items()}
    return _REFERENCE_CACHE[key]


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


def _sweep_variant(model, icl_prompt: str, probes: list[str], answers: list[str], read: Callable[[int], str],
                   write: Callable[[int], str], every_position: bool = False) -> list[float]:
    """Per-layer accuracy of a variant recipe: all layers in one batched forward pass.

    Rows ``l * n .. (l + 1) * n - 1`` are the probes with layer ``l``'s vector (read at hook
    ``read(l)``, final position of the ICL prompt) added at hook ``write(l)``.
    """
    n_layers, n = model.cfg.n_layers, len(probes)
    names = {read(layer) for layer in range(n_layers)}
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda hook_name: hook_name in names)
    tokens, last = tokenize_right_padded(model, probes)
    batch, last_all = tokens.repeat(n_layers, 1), last.repeat(n_layers)
    hooks = []
    for layer in range(n_layers):
        rows = torch.arange(layer * n, (layer + 1) * n)
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
    correct = logits[torch.arange(len(last_all)), last_all].argmax(-1) == answer_token_ids(model, answers).repeat(n_layers)
    return correct.view(n_layers, n).float().mean(1).tolist()


def _variants(model, icl: str, probes: list[str], answers: list[str],
              ref: list[float]) -> Iterator[tuple[str, list[float]]]:
    """Known mistakes and the accuracies they give, cheapest first (a generator: lazy)."""
    n = len(probes)
    yield (f"accuracy as a COUNT of correct probes; divide by the number of probes ({n}) to get "
           "a fraction."), [v * n for v in ref]
    yield "accuracy in percent; return a fraction between 0 and 1.", [v * 100 for v in ref]
    yield ("your accuracies are the reference's shifted up by one layer: you read AND added at "
           "`hook_resid_pre` (the residual stream BEFORE block l). Use `blocks.{l}.hook_resid_post` "
           "for both."), [None] + ref[:-1]
    zero_shot = top1_accuracy(model, probes, answers)
    yield ("the same accuracy at every layer, equal to the plain zero-shot accuracy: h was never "
           "added. Does your hook return the modified activation, and is it registered on "
           "`blocks.{l}.hook_resid_post`?"), [zero_shot] * len(ref)
    pre = lambda layer: f"blocks.{layer}.hook_resid_pre"  # noqa: E731
    yield ("h was read from `hook_resid_pre` (the residual stream BEFORE block l, i.e. layer l-1's "
           "output; off by one) and added at `hook_resid_post` of layer l. Read `resid_post` of "
           "the same layer you add it to."), _sweep_variant(model, icl, probes, answers, pre, resid_post_name)
    yield ("h was added at EVERY position of each probe; add it at the final position only "
           "(`resid[:, -1] += h`)."), _sweep_variant(model, icl, probes, answers, resid_post_name,
                                                     resid_post_name, every_position=True)
    yield ("h was read from `resid_post` of layer l but added at `hook_resid_pre` of layer l "
           "(= after layer l-1; off by one)."), _sweep_variant(model, icl, probes, answers, resid_post_name, pre)


def _matches(got: list[float], variant: list[float]) -> bool:
    pairs = [(g, v) for g, v in zip(got, variant) if v is not None]
    return all(abs(g - v) <= _ATOL for g, v in pairs)


def _explain(name: str, got: dict[int, float], ref: dict[int, float], model, icl: str,
             probes: list[str], answers: list[str], context: str) -> str:
    layers = sorted(ref)
    first = next(layer for layer in layers if abs(got[layer] - ref[layer]) > _ATOL)
    head = (f"`{name}` gives the wrong accuracy ({context}): first difference at layer {first}, "
            f"yours {got[first]:.4g}, reference {ref[first]:.4g}.\n"
            f"yours:     {_fmt(got)}\nreference: {_fmt(ref)}")
    got_list, ref_list = [got[layer] for layer in layers], [ref[layer] for layer in layers]
    if all(v == 0 for v in got_list):
        best = max(layers, key=lambda layer: ref[layer])
        return (f"{head}\nYours is 0 at every layer; the reference reaches {ref[best]:.2f} at layer "
                f"{best}. Common causes: the answer token is taken without its leading space (score "
                "against the first token of `\" \" + answer`, as `answer_token_ids` does); h was "
                "taken from the FIRST position of the ICL prompt instead of the final one (-1); "
                "or the probes were never run with h added.")
    for description, variant in _variants(model, icl, probes, answers, ref_list):
        if _matches(got_list, variant):
            return f"{head}\nYour output matches a common mistake: {description}"
    return (f"{head}\nCheck: `resid_post` of each layer at the final position (-1) of the ICL "
            "prompt, added at that layer's `hook_resid_post`, final position of each probe only; "
            "top-1 compared with the first token of `\" \" + answer`; accuracy as a fraction.")


def check_find_task_layer(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_layer(model, icl_prompt, zero_shot_probes, correct_answers) -> {layer: acc}``."""
    name = "find_task_layer"
    n_layers = model.cfg.n_layers
    with _quiet():
        for case in _FTL_HIDDEN if hidden else _FTL_CASES:
            ref = _reference(model, case)
            icl, probes, answers = _case_inputs(case)
            got = _as_accuracy_dict(call_learner(fn, name, model, icl, list(probes), list(answers)),
                                    name, n_layers)
            if any(abs(got[layer] - ref[layer]) > _ATOL for layer in ref):
                context = f"task {case.task}, 1 ICL prompt, {len(probes)} probes"
                raise CheckFailure(_explain(name, got, ref, model, icl, probes, answers, context))
    if not hidden:
        best = max(ref, key=lambda layer: ref[layer])
        print(f"find_task_layer matches the reference (task {_FTL_CASES[0].task}, {len(probes)} probes, "
              f"all {n_layers} layers; best layer {best} at {ref[best]:.2f}).")
