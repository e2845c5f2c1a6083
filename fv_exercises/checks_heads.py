"""Check cells of notebook 03 (heads). Shared machinery lives in :mod:`fv_exercises.checks`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fv_exercises.checks import CheckFailure, Case, _quiet, call_learner
from fv_exercises.heads import mean_head_z

_CASES = (Case("antonym", seed=0, layer_fraction=0.7, n_prompts=2),)
_HIDDEN = (Case("present_past", seed=4, layer_fraction=0.5, n_prompts=3),)


def _layers(model, case: Case) -> list[int]:
    """One layer, from the case: small enough for a loop of full forward passes."""
    return [case.layer(model)]


def _scan(model, mean_z: Tensor, prompts: list[str], answers: list[str], layers: list[int], *,
          where: str = "last", metric: str = "prob", baseline: bool = True, reduce: str = "mean",
          space: bool = True) -> dict[tuple[int, int], float]:
    """The head scan with switchable details, used to name a learner's mistake."""
    ids = [model.tokenizer.encode((" " if space else "") + a, add_special_tokens=False)[0]
           for a in answers]

    def score(logits: Tensor, i: int) -> Tensor:
        row = logits[0, -1]
        return row.softmax(-1)[i] if metric == "prob" else row[i]

    base = [score(model(p), i) for p, i in zip(prompts, ids)]
    out = {}
    for layer in layers:
        for head in range(model.cfg.n_heads):
            def patch(z, hook, layer=layer, head=head):
                z = z.clone()
                pos = {"last": -1, "first": 0, "all": slice(None)}[where]
                z[:, pos, head] = mean_z[layer, head]
                return z

            gains = torch.stack([
                score(model.run_with_hooks(p, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]), i)
                - (b if baseline else 0.0)
                for p, i, b in zip(prompts, ids, base)])
            out[(layer, head)] = (gains.mean() if reduce == "mean" else gains.sum()).item()
    return out


_MISTAKES = {
    "you patched z at the FIRST position; patch the final position (-1) only.": {"where": "first"},
    "you patched z at EVERY position; patch the final position (-1) only.": {"where": "all"},
    "you compared logits, not probabilities: use `logits[0, -1].softmax(-1)[answer_id]`.":
        {"metric": "logit"},
    "you returned P_patched without subtracting P_corrupted (the unpatched run).":
        {"baseline": False},
    "you SUMMED the gains over prompts instead of taking the mean.": {"reduce": "sum"},
    "the answer token was encoded without its leading space: use `' ' + answer`.": {"space": False},
}


def check_find_task_heads(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_heads(model, mean_z, corrupted_prompts, answers, layers)``."""
    from fv_exercises.reference.heads import find_task_heads as reference

    name = "find_task_heads"
    with _quiet():
        for case in _HIDDEN if hidden else _CASES:
            ds = case.dataset()
            layers = _layers(model, case)
            mean_z = mean_head_z(model, list(ds.prompts))
            prompts, answers = list(ds.corrupted_prompts), list(ds.answers)
            expected = dict(reference(model, mean_z, prompts, answers, layers))
            mean_z_before = mean_z.clone()
            got_list = call_learner(fn, name, model, mean_z, prompts, answers, layers)
            if not torch.equal(mean_z, mean_z_before):
                raise CheckFailure(f"`{name}` modified `mean_z` in place; every later scan would "
                                   "use the edited values. Read from it, never assign into it.")
            if not isinstance(got_list, list) or not all(
                    isinstance(item, tuple) and len(item) == 2 for item in got_list):
                raise CheckFailure(f"`{name}` should return a list of ((layer, head), effect) "
                                   f"tuples; got {type(got_list).__name__}.")
            got = {tuple(int(x) for x in key): float(value) for key, value in got_list}
            if set(got) != set(expected):
                missing = sorted(set(expected) - set(got))[:4]
                extra = sorted(set(got) - set(expected))[:4]
                raise CheckFailure(f"`{name}` returned {len(got)} heads for layers {layers}; "
                                   f"expected {len(expected)} (every head of those layers). "
                                   f"Missing e.g. {missing}; unexpected e.g. {extra}.")
            values = [float(v) for _, v in got_list]
            if values != sorted(values, reverse=True):
                raise CheckFailure(f"`{name}` must return heads sorted by effect, LARGEST first.")
            worst = max(expected, key=lambda k: abs(got[k] - expected[k]))
            diff = abs(got[worst] - expected[worst])
            if diff > 1e-4:
                msg = (f"`{name}` gives the wrong effect for head {worst[0]}.{worst[1]} (task "
                       f"{case.task}, layers {layers}): yours {got[worst]:+.5f}, reference "
                       f"{expected[worst]:+.5f}.")
                # The closest known mistake (several give near-zero effects, so not the first).
                distance = {
                    description: max(abs(got[k] - v) for k, v in
                                     _scan(model, mean_z, prompts, answers, layers, **options).items())
                    for description, options in _MISTAKES.items()}
                closest = min(distance, key=distance.get)
                if distance[closest] <= 1e-4:
                    raise CheckFailure(f"{msg}\nYour output matches a common mistake: {closest}")
                raise CheckFailure(msg + " Check the hook name `blocks.{layer}.attn.hook_z`, "
                                   "the head index and the position.")
            top = max(expected, key=expected.get)
    if not hidden:
        print(f"find_task_heads matches the reference ({len(expected)} heads of layers {layers}, "
              f"{len(prompts)} prompts; top head {top[0]}.{top[1]}, effect {expected[top]:+.4f}).")
