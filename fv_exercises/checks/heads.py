"""Check cell of notebook 03 (heads): ``find_task_heads``.

Shared machinery (calling the learner safely, comparing, naming mistakes) is in
:mod:`fv_exercises.checks.core`.
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
    scale_factor,
    stale_state_message,
    token_lengths,
)
from fv_exercises.evaluation import answer_token_ids
from fv_exercises.heads import head_effects, mean_head_z

# Two layers (18 heads on the embedded model): more than the 10 a learner might keep, so a result
# cut short shows. Shuffled-label prompts of different token lengths (2 and 1 demonstrations),
# so a batched version reading [:, -1] of right-padded rows fails visibly. The second case has
# other prompts and layers: a result kept from the first call shows.
_CASES = (Case("antonym", seed=0, layer_fraction=0.7, n_prompts=2, n_shots=2),
          Case("capitalize", seed=1, layer_fraction=0.55, n_prompts=2, n_shots=2))
# One hidden case (other task, prompts and layers): enough to catch an answer fitted to the
# visible ones. A learner's scan is the check's largest cost (a forward pass per head and prompt),
# so it has two short prompts (2 and 1 demonstrations): of different token lengths, so a padded
# batch shows, and two, so a baseline computed once and reused for every prompt shows.
_HIDDEN = (Case("present_past", seed=4, layer_fraction=0.5, n_prompts=2, n_shots=2),)


def _layers(model, case: Case) -> list[int]:
    """Two adjacent layers from the case: enough heads to expose truncation, cheap to loop over."""
    layer = case.layer(model)
    return [layer, layer + 1] if layer + 1 < model.cfg.n_layers else [layer - 1, layer]


def _final_logits(model, mean_z: Tensor, prompts: list[str], heads: list[tuple[int, int]] | None,
                  where: str = "last", padded: bool = False) -> Tensor:
    """Final-position logits with each head of ``heads`` patched in turn: ``[len(heads), n, d_vocab]``.

    ``heads=None``: the unpatched run, ``[1, n, d_vocab]``. All heads of one prompt travel as one
    batch (row ``r`` patches ``heads[r]``), so a scan costs one forward pass per prompt.
    ``where``: patch ``z`` at the ``"last"``, ``"first"`` or ``"all"`` positions. ``padded``: all
    prompts in one right-padded batch, patching and reading ``[:, -1]`` (what a batched version
    that ignores padding does).
    """
    heads = heads or []
    R = max(1, len(heads))
    pos = {"last": -1, "first": 0, "all": slice(None)}[where]
    hooks = []
    for layer in sorted({l for l, _ in heads}):
        rows = torch.tensor([r for r, (l, _) in enumerate(heads) if l == layer],
                            device=mean_z.device)
        cols = torch.tensor([h for l, h in heads if l == layer], device=mean_z.device)

        def patch(z: Tensor, hook=None, layer=layer, rows=rows, cols=cols) -> Tensor:
            z = z.clone()
            n = z.shape[0] // R  # prompts per row group (padded: all prompts in one batch)
            for r, h in zip(rows.tolist(), cols.tolist()):
                z[r * n:(r + 1) * n, pos, h] = mean_z[layer, h]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", patch))
    if padded:
        tokens = model.to_tokens(prompts)  # right-padded
        logits = model.run_with_hooks(tokens.repeat(R, 1), fwd_hooks=hooks)[:, -1]
        return logits.view(R, len(prompts), -1)
    out = [model.run_with_hooks(model.to_tokens(p).repeat(R, 1), fwd_hooks=hooks)[:, -1]
           for p in prompts]
    return torch.stack(out, dim=1)  # [R, n, d_vocab]


def _score(logits: Tensor, ids: list[int], metric: str) -> Tensor:
    """Score of each answer from final logits ``[..., n, d_vocab]`` -> ``[..., n]``."""
    ids_t = torch.tensor(ids, device=logits.device)
    if metric == "prob":
        return logits.softmax(-1).gather(-1, ids_t.expand(logits.shape[:-1])[..., None])[..., 0]
    if metric == "hit":
        return (logits.argmax(-1) == ids_t).float()
    return logits.gather(-1, ids_t.expand(logits.shape[:-1])[..., None])[..., 0]


def _effects(patched: Tensor, base: Tensor, heads: list[tuple[int, int]], ids: list[int], *,
             metric: str = "prob", baseline: bool = True, reduce: str = "mean") -> dict:
    """``{head: effect}`` from patched ``[R, n, d_vocab]`` and unpatched ``[1, n, d_vocab]`` logits."""
    gains = _score(patched, ids, metric) - (_score(base, ids, metric) if baseline else 0.0)
    values = gains.mean(1) if reduce == "mean" else gains.sum(1)
    return dict(zip(heads, values.tolist()))


def _mistake_effects(model, mean_z: Tensor, prompts: list[str], answers: list[str],
                     heads: list[tuple[int, int]]) -> Iterator[tuple[str, dict]]:
    """Known mistakes and the effects they give. Scoring mistakes reuse one scan's logits."""
    ids = answer_token_ids(model, answers).tolist()
    base = _final_logits(model, mean_z, prompts, None)
    patched = _final_logits(model, mean_z, prompts, heads)
    scoring = {
        "you compared logits, not probabilities: use `logits[0, -1].softmax(-1)[answer_id]`.":
            {"metric": "logit"},
        "you counted top-1 hits (argmax == answer, 0 or 1 per prompt) instead of the probability "
        "of the answer token: use `logits[0, -1].softmax(-1)[answer_id]`.": {"metric": "hit"},
        "you returned P_patched without subtracting P_corrupted (the unpatched run).":
            {"baseline": False},
        "you SUMMED the gains over prompts instead of taking the mean.": {"reduce": "sum"},
    }
    for description, options in scoring.items():
        yield description, _effects(patched, base, heads, ids, **options)
    if len(prompts) > 1:
        p_first = _score(base, ids, "prob")[0, 0]  # the first prompt's unpatched P(its answer)
        gains = _score(patched, ids, "prob") - p_first
        yield ("every prompt's gain was measured against ONE baseline, the first prompt's "
               "unpatched probability, computed once and reused. Each prompt has its own "
               "baseline: P(its answer) on that prompt without the patch (`p_corrupted[i]`).",
               dict(zip(heads, gains.mean(1).tolist())))
    for description, wrong_ids in answer_id_variants(model, answers).items():
        yield description, _effects(patched, base, heads, wrong_ids)
    for where, description in (("first", "you patched z at the FIRST position; patch the final "
                                "position (-1) only."),
                               ("all", "you patched z at EVERY position; patch the final position "
                                "(-1) only.")):
        yield description, _effects(_final_logits(model, mean_z, prompts, heads, where), base, heads, ids)
    lengths = token_lengths(model, prompts)
    if len(set(lengths)) > 1:
        yield padding_message("find_task_heads", lengths), _effects(
            _final_logits(model, mean_z, prompts, heads, padded=True),
            _final_logits(model, mean_z, prompts, None, padded=True), heads, ids)


def _known_mistakes(model, mean_z: Tensor, prompts: list[str], answers: list[str],
                    heads: list[tuple[int, int]]) -> list[tuple[str, dict]]:
    """:func:`_mistake_effects`, computed once per model and inputs (weights are guarded)."""
    key = ("find_task_heads mistakes", tuple(prompts), tuple(answers), tuple(heads),
           hash(mean_z.detach().cpu().numpy().tobytes()))
    return cached_per_model(model, key, lambda: list(_mistake_effects(model, mean_z, prompts,
                                                                      answers, heads)))


def _as_effects(got_list, name: str) -> dict[tuple[int, int], float]:
    if isinstance(got_list, dict):
        raise CheckFailure(f"`{name}` should return a list of ((layer, head), effect) tuples sorted "
                           "by effect, as the seed does (`sorted(effects.items(), key=...)`); got a dict.")
    if not isinstance(got_list, list) or not all(
            isinstance(item, tuple) and len(item) == 2 for item in got_list):
        raise CheckFailure(f"`{name}` should return a list of ((layer, head), effect) tuples; got "
                           f"{type(got_list).__name__}.")
    try:
        return {tuple(int(x) for x in key): float(value) for key, value in got_list}
    except (TypeError, ValueError):
        raise CheckFailure(f"`{name}`'s items should look like ((layer, head), effect), e.g. "
                           f"((14, 1), 0.012); got {got_list[0]!r}.") from None


def _case(model, case: Case) -> tuple[list[int], Tensor, list[str], list[str], dict]:
    """``(layers, mean_z, corrupted prompts, answers, {head: reference effect})``, once per model.

    The reference effects are the reference's (``fv_exercises.reference.heads.find_task_heads``:
    one forward pass per head and prompt) computed with the course's exact scan
    (:func:`fv_exercises.heads.head_effects`: each prompt's prefix once, the last position
    recomputed per head); tests/test_checks_03.py asserts the two agree to 1e-5, ten times
    inside the check's tolerance.
    """
    def compute():
        ps = case.mixed()
        layers = _layers(model, case)
        mean_z = mean_head_z(model, ps.prompts)
        prompts, answers = list(ps.corrupted_prompts), list(ps.answers)
        heads = [(layer, head) for layer in layers for head in range(model.cfg.n_heads)]
        effects = head_effects(model, prompts, answers, mean_z, heads=heads)  # [n_layers, n_heads]
        return layers, mean_z, prompts, answers, {h: effects[h].item() for h in heads}

    return cached_per_model(model, ("find_task_heads", case), compute)


def check_find_task_heads(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_heads(model, mean_z, corrupted_prompts, answers, layers)``."""
    name = "find_task_heads"
    first: str | None = None  # context of the first case, once it matched
    with quiet(model):
        for case in _HIDDEN if hidden else _CASES:
            layers, mean_z, prompts, answers, expected = _case(model, case)
            mean_z = mean_z.clone()
            mean_z_before = mean_z.clone()
            got_list = call_learner(fn, name, model, mean_z, prompts, answers, layers)
            if not torch.equal(mean_z, mean_z_before):
                raise CheckFailure(f"`{name}` modified `mean_z` in place; every later scan would "
                                   "use the edited values. Read from it, never assign into it.")
            got = _as_effects(got_list, name)
            context = f"task {case.task}, layers {layers}, {len(prompts)} prompts"
            if set(got) != set(expected):
                missing = sorted(set(expected) - set(got))
                extra = sorted(set(got) - set(expected))[:4]
                cut = (f" You returned only {len(got)}: return EVERY head, not just the top ones."
                       if got and set(got) < set(expected) else "")
                raise CheckFailure(f"`{name}` returned {len(got)} heads for layers {layers}; "
                                   f"expected {len(expected)} (every head of those layers). "
                                   f"Missing e.g. {missing[:4]}; unexpected e.g. {extra}.{cut}")
            values = [float(v) for _, v in got_list]
            if values != sorted(values, reverse=True):
                raise CheckFailure(f"`{name}` must return heads sorted by effect, LARGEST first.")
            worst = max(expected, key=lambda k: abs(got[k] - expected[k]))
            if abs(got[worst] - expected[worst]) > 1e-4:
                stale = stale_state_message(name, first, context) if first else None
                raise CheckFailure(_explain(name, model, mean_z, prompts, answers, got, expected,
                                            worst, context, stale))
            if first is None:
                first = context
                top = max(expected, key=expected.get)
                summary = (f"{context}; top head {top[0]}.{top[1]}, effect {expected[top]:+.4f}")
    if not hidden:
        print(f"find_task_heads matches the reference ({summary}; and a second task).")


def _explain(name: str, model, mean_z: Tensor, prompts: list[str], answers: list[str],
             got: dict, expected: dict, worst: tuple[int, int], context: str,
             unexplained: str | None) -> str:
    msg = (f"`{name}` gives the wrong effect for head {worst[0]}.{worst[1]} ({context}): yours "
           f"{got[worst]:+.5f}, reference {expected[worst]:+.5f}.")
    keys = sorted(expected)
    k = scale_factor(torch.tensor([got[h] for h in keys]), torch.tensor([expected[h] for h in keys]))
    if k is not None:
        return f"{msg}\n" + describe_scale(k, {
            float(len(prompts)): "you SUMMED the gains over prompts instead of taking the mean",
            100.0: "the gain is in percentage points; return a difference of probabilities"})
    # Several mistakes can give near-zero effects: compare with all of them, report exact matches.
    matching = [d for d, effects in _known_mistakes(model, mean_z, prompts, answers, keys)
                if max(abs(got[h] - v) for h, v in effects.items()) <= 1e-4]
    if len(matching) == 1:
        return f"{msg}\nYour output matches a common mistake: {matching[0]}"
    if matching:
        return (f"{msg}\nSeveral common mistakes give exactly your numbers; one of them is yours:\n"
                + "\n".join(f"  - {d}" for d in matching))
    if unexplained:
        return f"{msg}\n{unexplained}"
    return (msg + " Check the hook name `blocks.{layer}.attn.hook_z`, the head index, the position "
            "(-1), and that P(answer) is a softmax probability of the first token of ' ' + answer.")
