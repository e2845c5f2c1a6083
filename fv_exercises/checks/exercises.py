"""Check cells of notebook 09 (the seed's exercises): ``extract_function_vector``,
``test_function_vector`` and ``find_minimal_heads``.

Shared machinery (calling the learner safely, comparing, naming mistakes) is in
:mod:`fv_exercises.checks.core`.

- ``extract_function_vector`` returns a vector: compared with the reference like notebook 01's
  ``mean_task_vector`` (its zero-shot baseline is derived from the prompts themselves).
- ``test_function_vector`` returns one accuracy, which many mistakes can share; the check also
  calls it on **each prompt alone**, so every mistake leaves a per-prompt pattern of 0s and 1s,
  and names every known mistake whose pattern is exactly the learner's.
- ``find_minimal_heads`` is run on synthetic head shares built from a real task vector so that
  ranking by norm, by cosine, by absolute value or the wrong way round, an absolute threshold, a
  strict ``>``, an off-by-one and a hard-coded threshold each give a different set; ties (equal
  shares) make several answers right, and every one of them is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    as_number,
    as_tensor,
    cached_per_model,
    call_learner,
    compare,
    quiet,
    repeat_consistent,
    stale_state_message,
)
from fv_exercises.checks.task_vectors import _all_states, _mtv_variants, neighbour_layers
from fv_exercises.evaluation import resid_post_name as _post
from fv_exercises.evaluation import top1_accuracy, top1_correct
from fv_exercises.exercises import projections, query_alone
from fv_exercises.tasks import ICLDataset

Head = tuple[int, int]

# --------------------------------------------------------------------------------------------
# extract_function_vector
# --------------------------------------------------------------------------------------------

_EFV_CASES = (Case("antonym", seed=3, layer_fraction=0.55, n_prompts=4),
              Case("present_past", seed=2, layer_fraction=0.35, n_prompts=3, n_shots=2))
_EFV_HIDDEN = (Case("country_capital", seed=7, layer_fraction=0.45, n_prompts=3),
               Case("lowercase", seed=5, layer_fraction=0.75, n_prompts=5))


def _efv_variants(model, prompts: list[str], layer: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``extract_function_vector``: notebook 01's (the baseline taken from the
    prompts' queries), then the normalisations the exercise does not ask for."""
    queries = [query_alone(p) for p in prompts]
    for description, value in _mtv_variants(model, prompts, queries, layer,
                                            name="extract_function_vector"):
        yield (description.replace("zero-shot mean", "mean of the queries alone (the baseline)")
               .replace("(zero-shot minus ICL)", "(queries alone minus few-shot)")), value
    # the same states notebook 01's variants above read (kept per model: not run again)
    layers = neighbour_layers(model, layer)
    with_demos = torch.stack([s[-1] for s in _all_states(model, prompts, layers)[layer]])
    alone = torch.stack([s[-1] for s in _all_states(model, queries, layers)[layer]])
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    yield ("you normalised each prompt's state to unit length before averaging; average the raw "
           "states, then subtract.", unit(with_demos).mean(0) - unit(alone).mean(0))
    firsts = [p.split("\n\n", 1)[0] for p in prompts]
    first_states = torch.stack([s[-1] for s in _all_states(model, firsts, [layer])[layer]])
    yield ("your baseline is the FIRST block of each prompt (`split(\"\\n\\n\")[0]`, the first "
           "demonstration with its answer); the query alone is the LAST block, "
           "`prompt.rsplit(\"\\n\\n\", 1)[-1]`.", with_demos.mean(0) - first_states.mean(0))
    no_answer = [p[: p.rindex("A:")].rstrip("\n") if "A:" in p else p for p in queries]
    bare = torch.stack([s[-1] for s in _all_states(model, no_answer, [layer])[layer]])
    yield ("your baseline prompts lost their final `A:` (e.g. `\"Q: big\"`); the query alone is "
           "`\"Q: big\\nA:\"`, ending where the model writes the answer.", with_demos.mean(0) - bare.mean(0))


def _efv_scale_causes(n: int, expected: Tensor) -> dict[float, str]:
    causes = {float(n): "you SUMMED over prompts instead of taking the mean"}
    if expected.norm() > 0:
        causes[1 / expected.norm().item()] = (
            "you normalised the vector to unit length. \"Normalise appropriately\" here means "
            "subtracting the zero-shot baseline, not rescaling: a unit vector added to a state of "
            "norm in the hundreds does nothing")
    return causes


def check_extract_function_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``extract_function_vector(model, task_prompts, layer) -> [d_model]``.

    Prompts of different token lengths; the first case is called twice (nothing may leak), the
    second has other prompts and another layer (state kept between calls shows).
    """
    from fv_exercises.reference.exercises import extract_function_vector as reference

    name = "extract_function_vector"
    cases = _EFV_HIDDEN if hidden else _EFV_CASES
    first: tuple[Tensor, str] | None = None
    with quiet(model):
        for i, case in enumerate(cases):
            prompts, layer = list(case.mixed().prompts), case.layer(model)
            expected = cached_per_model(model, ("extract_function_vector", case),
                                        lambda: reference(model, list(prompts), layer).float())
            shape = tuple(expected.shape)
            got = as_tensor(call_learner(fn, name, model, list(prompts), layer), name, shape,
                            "function vector [d_model]")
            context = f"task {case.task}, {len(prompts)} prompts, layer {layer}"
            compare(got, expected, lambda: _efv_variants(model, prompts, layer), name,
                    "function vector", atol=1e-3, context=context,
                    scale_causes=lambda: _efv_scale_causes(len(prompts), expected),
                    unexplained=stale_state_message(name, first[1], context) if first else None)
            if i == 0:
                again = as_tensor(call_learner(fn, name, model, list(prompts), layer), name, shape,
                                  "function vector")
                repeat_consistent(got, again, name, atol=1e-3)
                first = (got, context)
    if not hidden:
        print(f"extract_function_vector matches the reference (tasks {cases[0].task} and "
              f"{cases[1].task}, prompts of different lengths, layers {cases[0].layer(model)} and "
              f"{cases[1].layer(model)}; |fv| = {expected.norm():.1f}).")


# --------------------------------------------------------------------------------------------
# test_function_vector
# --------------------------------------------------------------------------------------------


def _case_vector(model, task: str, seed: int, layer: int, n_train: int) -> Tensor:
    """``[d_model]``: the reference extraction from ``n_train`` train prompts of ``task``, once per
    model (the cases of test_function_vector and find_minimal_heads share some vectors)."""
    def compute() -> Tensor:
        from fv_exercises.reference.exercises import extract_function_vector

        train = ICLDataset.build(task, n_train, seed=seed, split="train")
        return extract_function_vector(model, list(train.prompts), layer).float()

    return cached_per_model(model, ("case vector", task, seed, layer, n_train), compute)


@dataclass(frozen=True)
class VectorCase:
    """A vector (the reference extraction from ``n_train`` train prompts, times ``scale``) and
    zero-shot test queries of different token lengths to score it on."""

    task: str
    seed: int
    layer_fraction: float
    n_test: int = 8
    n_train: int = 12
    scale: float = 1.0

    def layer(self, model) -> int:
        return int(round(self.layer_fraction * (model.cfg.n_layers - 1)))

    def inputs(self, model) -> tuple[Tensor, int, list[str], list[str]]:
        layer = self.layer(model)
        fv = _case_vector(model, self.task, self.seed, layer, self.n_train) * self.scale
        test = ICLDataset.build(self.task, self.n_test, seed=self.seed + 1, split="test")
        return fv, layer, list(test.zero_shot_prompts), list(test.answers)


# Vectors that work (zero-shot accuracy between 1/8 and 7/8 on their 8 queries), so that adding
# them wrongly changes the per-prompt outcomes; every known mistake changes them in at least one
# visible case (tests/test_checks_09.py), and the last case's queries differ in token length.
_TFV_CASES = (VectorCase("capitalize", seed=5, layer_fraction=0.62),
              VectorCase("antonym", seed=5, layer_fraction=0.55, scale=2.0),
              VectorCase("lowercase", seed=2, layer_fraction=0.62, scale=2.0))
# Hidden: the first shares its vector with a hidden find_minimal_heads case; the second's queries
# differ in token length (a padded batch scores 0 of 8, the reference 3) and one of its answers
# the vector makes the model start has several tokens (compared whole, it scores 2), and every
# known mistake changes its outcomes (tests/test_checks_09.py).
_TFV_HIDDEN = (VectorCase("singular_plural", seed=5, layer_fraction=0.62, scale=3.0),
               VectorCase("country_language", seed=5, layer_fraction=0.62, scale=2.0))


def _batched_argmax(model, prompts: Sequence[str], fv: Tensor, hook_name: str,
                    where: str = "last") -> Tensor:
    """Top-1 next token of each prompt with ``fv`` added at ``hook_name`` (``where``: its last
    position, every position, or the first): ``[n]``, one right-padded batch."""
    from fv_exercises.evaluation import tokenize_right_padded

    tokens, last = tokenize_right_padded(model, prompts)
    rows = torch.arange(len(prompts), device=last.device)
    fv = fv.to(last.device)

    def hook(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        if where == "last":
            resid[rows, last] += fv
        elif where == "every":
            resid += fv  # padding positions too: they come after each row's last real token
        elif where == "first":
            resid[:, 0] += fv
        return resid

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    return logits[rows, last].argmax(-1)


def _answer_ids(model, answers: Sequence[str], how: str = "right") -> Tensor:
    tok = model.tokenizer
    if how == "no space":
        ids = [tok.encode(a, add_special_tokens=False)[0] for a in answers]
    elif how == "bos":
        ids = [tok.encode(" " + a)[0] for a in answers]
    elif how == "last token":
        ids = [tok.encode(" " + a, add_special_tokens=False)[-1] for a in answers]
    else:
        ids = [tok.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    return torch.tensor(ids, device=model_device(model))


def _tfv_variants(model, fv: Tensor, layer: int, prompts: list[str],
                  answers: list[str]) -> dict[str, tuple[str, list[int]]]:
    """Known mistakes of ``test_function_vector``: ``{key: (description, per-prompt outcomes)}``
    (one batched forward pass per way of adding the vector)."""
    post = _post(layer)
    right = _answer_ids(model, answers)

    def outcomes(predicted: Tensor, ids: Tensor = right) -> list[int]:
        return [int(x) for x in (predicted == ids)]

    at_last = _batched_argmax(model, prompts, fv, post)
    out = {
        "none": ("no vector was added at all (the plain zero-shot outcomes). Does your hook "
                 f"return the edited tensor, and is it on `blocks.{layer}.hook_resid_post`?",
                 outcomes(_batched_argmax(model, prompts, fv * 0, post))),
        "every": ("the vector was added at EVERY position; add it at the last position only "
                  "(`resid[:, -1] += fv`).", outcomes(_batched_argmax(model, prompts, fv, post, "every"))),
        "first": ("the vector was added at the FIRST position (index 0); add it at the last (-1).",
                  outcomes(_batched_argmax(model, prompts, fv, post, "first"))),
        "minus": ("the vector was SUBTRACTED; add it.", outcomes(_batched_argmax(model, prompts, -fv, post))),
        "double": ("the vector was added twice (or doubled).",
                   outcomes(_batched_argmax(model, prompts, 2 * fv, post))),
        "unit": ("you added the vector normalised to unit length; add `fv` as it is.",
                 outcomes(_batched_argmax(model, prompts, fv / fv.norm(), post))),
        "no space": ("the answer token was encoded without its leading space: after `A:` the "
                     "model writes the answer with a space in front (`' cold'`, not `'cold'`); "
                     "use `' ' + answer`.", outcomes(at_last, _answer_ids(model, answers, "no space"))),
        "bos": ("the answer ids include a special token: `tokenizer.encode(...)` adds BOS "
                "(`<|im_start|>` here) at index 0 by default. Use "
                "`tokenizer.encode(' ' + answer, add_special_tokens=False)[0]`.",
                outcomes(at_last, _answer_ids(model, answers, "bos"))),
        "whole": ("you compared the decoded top-1 token with the WHOLE answer (e.g. "
                  "`decode([top1]).strip() == answer`): an answer of several tokens (' Buenos "
                  "Aires') never equals one token. Compare token ids with the answer's FIRST "
                  "token, `tokenizer.encode(' ' + answer, add_special_tokens=False)[0]`.",
                  [int(model.tokenizer.decode([int(t)]).strip() == a.strip())
                   for t, a in zip(at_last, answers)]),
        "last token": ("you compared with the LAST token of the answer; use its first token.",
                       outcomes(at_last, _answer_ids(model, answers, "last token"))),
        "resid_pre": (f"the vector was added at `blocks.{layer}.hook_resid_pre` (= `resid_post` "
                      f"of layer {layer - 1}); add it at `blocks.{layer}.hook_resid_post`.",
                      outcomes(_batched_argmax(model, prompts, fv, f"blocks.{layer}.hook_resid_pre"))),
    }
    if layer + 1 < model.cfg.n_layers:
        out["next layer"] = (f"the vector was added after layer {layer + 1}, not {layer} (off by "
                             "one).", outcomes(_batched_argmax(model, prompts, fv, _post(layer + 1))))
    return out


def _tfv_case_variants(model, case: "VectorCase") -> dict[str, tuple[str, list[int]]]:
    """:func:`_tfv_variants` of a case, computed once per model (every wrong version reuses it)."""
    fv, layer, prompts, answers, _ = _tfv_case(model, case)
    return cached_per_model(model, ("test_function_vector variants", case),
                            lambda: _tfv_variants(model, fv, layer, prompts, answers))


def _consistent(observations: list[tuple[dict[str, tuple[str, object]], object]], same) -> list[str]:
    """Descriptions (from the first observation) of the known mistakes that explain EVERY
    observation: ``observations`` is ``[(variants {key: (description, value)}, learner's value)]``;
    ``same(variant_value, learner_value)`` says whether one observation is explained."""
    first = observations[0][0]
    keys = [k for k in first if all(k in v and same(v[k][1], got) for v, got in observations)]
    if not keys:  # nothing explains all cases: what explains the first failing one
        keys = [k for k in first if same(first[k][1], observations[0][1])]
    return [first[k][0] for k in keys]


def _named(head: str, matching: list[str], fallback: str) -> CheckFailure:
    if len(matching) == 1:
        return CheckFailure(f"{head}\nYour result matches a common mistake: {matching[0]}")
    if matching:
        return CheckFailure(f"{head}\nYour results match each of these mistakes on every case "
                            "tried (which one is yours?):\n" + "\n".join(f"- {d}" for d in matching))
    return CheckFailure(f"{head}\n{fallback}")


def _as_outcome(value: float, name: str, prompt: str) -> int:
    if value not in (0.0, 1.0):
        raise CheckFailure(
            f"`{name}` called with one prompt ({prompt!r}) returned {value}; with one prompt the "
            "accuracy can only be 0 or 1. Do you divide by the number of prompts you were given?")
    return int(value)


def _scalar_result(fn, name, model, fv, layer, prompts, answers) -> float:
    """Call the learner; return the accuracy, failing if ``fv`` was edited in place."""
    passed = fv.clone()
    value = as_number(call_learner(fn, name, model, passed, layer, list(prompts), list(answers)),
                      name, "the fraction of prompts answered correctly")
    if not torch.equal(passed, fv):
        raise CheckFailure(
            f"`{name}` changed `fv` in place (max change {(passed - fv).abs().max():.3g}): the "
            "caller's vector is different after your function returns, and the next call would "
            "use the edited one. Edit the activation in your hook, never `fv` (no `fv /= ...`, no "
            "`fv += ...`; `fv = fv / fv.norm()` would make a new tensor, but the exercise adds "
            "`fv` as it is).")
    return value


def _tfv_case(model, case: VectorCase):
    """``(fv, layer, prompts, answers, reference outcomes)`` of a case, computed once per model."""
    def compute():
        fv, layer, prompts, answers = case.inputs(model)
        ref = [int(c) for c in top1_correct(model, prompts, answers, add={layer: fv})]
        return fv, layer, prompts, answers, ref

    return cached_per_model(model, ("test_function_vector", case), compute)


def _per_prompt(fn, name, model, fv, layer, prompts, answers) -> list[int]:
    return [_as_outcome(_scalar_result(fn, name, model, fv, layer, [p], [a]), name, p)
            for p, a in zip(prompts, answers)]


def _tfv_failure(fn, name: str, model, cases: Sequence[VectorCase], got: float) -> CheckFailure:
    """The learner's accuracy differs on ``cases[0]``: call it on each prompt alone, there and on
    the later cases, and name the mistakes that explain every case."""
    fv, layer, prompts, answers, ref = _tfv_case(model, cases[0])
    context = f"task {cases[0].task}, {len(prompts)} prompts, layer {layer}"
    pattern = _per_prompt(fn, name, model, fv, layer, prompts, answers)
    ref_acc = sum(ref) / len(ref)
    if pattern == ref:
        lengths = [int(model.to_tokens(p).shape[1]) for p in prompts]
        return CheckFailure(
            f"`{name}` is right on every prompt alone but returns {got:g} on all {len(prompts)} "
            f"together; the reference {ref_acc:g} ({context}). With prompts of different token "
            f"lengths ({lengths}) batched and right-padded, `[:, -1]` is a padding token for the "
            "shorter ones: run prompts one at a time or read each row at its last real token. "
            "Also check that you divide by the number of prompts.")
    head = (f"`{name}` returns {got:g}, the reference {ref_acc:g} ({context}). Called on one "
            f"prompt at a time, yours: {pattern}, reference: {ref} (1 = the top-1 token is the "
            "answer).")
    observations = [(_tfv_case_variants(model, cases[0]), pattern)]
    for case in cases[1:]:
        fv2, layer2, prompts2, answers2, _ = _tfv_case(model, case)
        try:
            mine = _per_prompt(fn, name, model, fv2, layer2, prompts2, answers2)
        except CheckFailure:
            continue
        observations.append((_tfv_case_variants(model, case), mine))
    return _named(head, _consistent(observations, lambda a, b: a == b),
                  "None of the usual mistakes gives exactly these results. Check the hook point "
                  "(`hook_resid_post` of `layer`), the position (-1), that you add `fv` "
                  "unchanged, and the answer's first token with its leading space.")


def check_test_function_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``test_function_vector(model, fv, layer, test_prompts, expected) -> float``.

    Per case: all prompts at once (the accuracy, between 0 and 1, and ``fv`` left unchanged),
    then, in the visible run, again (nothing may leak). On a wrong accuracy the learner's function
    is called on each prompt alone, on that case and the later ones, and the known mistakes whose
    per-prompt outcomes match on every one of them are named.
    """
    name = "test_function_vector"
    cases = _TFV_HIDDEN if hidden else _TFV_CASES
    with quiet(model):
        for i, case in enumerate(cases):
            fv, layer, prompts, answers, ref = _tfv_case(model, case)
            ref_acc = sum(ref) / len(ref)
            context = f"task {case.task}, {len(prompts)} prompts, layer {layer}"
            got = _scalar_result(fn, name, model, fv, layer, prompts, answers)
            if got > 1 + 1e-6:
                if abs(got - 100 * ref_acc) < 1e-4:
                    raise CheckFailure(f"`{name}` returned {got:g} ({context}); the reference "
                                       f"{ref_acc:g}. Return a fraction between 0 and 1, not a "
                                       "percentage.")
                raise CheckFailure(f"`{name}` returned {got:g} ({context}), more than 1. Return "
                                   "the FRACTION of prompts answered correctly (correct / number "
                                   "of prompts), not a count.")
            if abs(got - ref_acc) > 1e-6:
                raise _tfv_failure(fn, name, model, cases[i:], got)
            if hidden:  # the visible run checks repeat calls; the hidden one grades accuracy
                continue
            again = _scalar_result(fn, name, model, fv, layer, prompts, answers)
            if again != got:
                raise CheckFailure(
                    f"Calling `{name}` twice with the same inputs gave {got:g}, then {again:g}. "
                    "Something is modified in place and leaks into the next run (a hook left "
                    "registered, the vector edited, a global counter).")
    if not hidden:
        print(f"test_function_vector matches the reference (tasks "
              f"{', '.join(c.task for c in cases)}, {len(prompts)} prompts each, of different "
              f"token lengths in the last; last accuracy {ref_acc:.0%}).")


# --------------------------------------------------------------------------------------------
# find_minimal_heads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharesCase:
    """Synthetic head shares of a real task vector ``v`` (reference extraction, ``n_train`` train
    prompts): share ``i`` is ``a[i] * v`` plus a component orthogonal to ``v`` of norm
    ``noise[i] * |v|`` (the orthogonal parts sum to zero, so the shares sum to ``sum(a) * v``).
    Heads with equal ``(a, noise)`` get identical shares: ties."""

    task: str
    seed: int
    layer_fraction: float
    a: tuple[float, ...]
    noise: tuple[float, ...]
    threshold: float
    scale: float = 1.0
    n_test: int = 8  # accuracies are multiples of 1/8: exact in float32 and float64
    n_train: int = 12

    def layer(self, model) -> int:
        return int(round(self.layer_fraction * (model.cfg.n_layers - 1)))

    def heads(self) -> list[Head]:
        return [(10 + (3 * i) % 7, (5 * i + 2) % 9) for i in range(len(self.a))]

    def inputs(self, model) -> tuple[Tensor, int, dict[Head, Tensor], list[str], list[str]]:
        layer = self.layer(model)
        v = _case_vector(model, self.task, self.seed, layer, self.n_train) * self.scale
        g = torch.Generator().manual_seed(self.seed)
        # orthogonal directions, one per distinct (a, noise), made orthogonal to v
        kinds = sorted(set(zip(self.a, self.noise)))
        raw = torch.randn(len(kinds), v.shape[0], generator=g, device="cpu").to(v.device, v.dtype)
        raw = raw - (raw @ v)[:, None] * v / (v @ v)
        raw = raw / raw.norm(dim=-1, keepdim=True)
        per_kind = {k: raw[i] for i, k in enumerate(kinds)}
        orth = [per_kind[(a, s)] * s * v.norm() for a, s in zip(self.a, self.noise)]
        drift = sum(orth) / len(orth)  # remove the mean so the orthogonal parts sum to zero
        shares = {h: a * v + o - drift for h, a, o in zip(self.heads(), self.a, orth)}
        fv = torch.stack(list(shares.values())).sum(0)
        test = ICLDataset.build(self.task, self.n_test, seed=self.seed + 1, split="test")
        return fv, layer, shares, list(test.zero_shot_prompts), list(test.answers)


# Ranking by component (a), by norm, by cosine and by |component| all differ; one pure, tiny
# share has cosine 1; one share points against the vector; two shares are equal (a tie). Every
# known mistake gives a different set in at least one visible case (tests/test_checks_09.py):
# the last case (threshold 1.0) has a prefix whose accuracy equals the target exactly.
_FMH_CASES = (
    SharesCase("capitalize", seed=5, layer_fraction=0.62, a=(0.45, 0.3, 0.03, 0.25, 0.12, -0.3),
               noise=(0.1, 0.6, 0.0, 0.2, 1.0, 0.3), threshold=0.9),
    SharesCase("lowercase", seed=2, layer_fraction=0.62, scale=2.0,
               a=(0.2, 0.35, 0.2, 0.05, 0.3, -0.1), noise=(0.3, 0.1, 0.3, 0.0, 0.8, 0.4),
               threshold=0.5),
    SharesCase("lowercase", seed=2, layer_fraction=0.62, scale=2.0,
               a=(0.2, 0.35, 0.2, 0.05, 0.3, -0.1), noise=(0.3, 0.1, 0.3, 0.0, 0.8, 0.4),
               threshold=1.0),
)
_FMH_HIDDEN = (
    SharesCase("antonym", seed=5, layer_fraction=0.48, scale=2.0,
               a=(0.3, 0.3, 0.25, 0.02, 0.2, -0.07), noise=(0.2, 0.2, 0.5, 0.0, 0.9, 0.2),
               threshold=0.6),
    # a share against the vector as large as a top one: ranking by |component| shows here too
    SharesCase("singular_plural", seed=5, layer_fraction=0.62, scale=3.0,
               a=(0.5, 0.1, 0.25, 0.2, -0.3), noise=(0.1, 0.7, 0.3, 0.0, 0.2), threshold=0.75),
)


def _accuracy(model, vector: Tensor, layer: int, prompts, answers) -> float:
    return top1_accuracy(model, prompts, answers, add={layer: vector})


def _prefix_choice(acc_of: Callable[[tuple[Head, ...]], float], order: list[Head], target: float,
                   strict: bool = False, single: bool = False) -> list[Head]:
    """The first prefix of ``order`` (or, with ``single``, the first head alone) whose accuracy
    (``acc_of(heads)``: the accuracy of their summed shares) reaches ``target``; all of ``order``
    if none does."""
    for k, head in enumerate(order, start=1):
        acc = acc_of((head,) if single else tuple(order[:k]))
        if acc > target if strict else acc >= target:
            return [head] if single else list(order[:k])
    return list(order)


def _fmh_variants(model, fv, layer, shares, prompts, answers, threshold, full_acc,
                  ranked, k) -> Iterator[tuple[str, str, list[Head]]]:
    """Known mistakes of ``find_minimal_heads``: ``(key, description, the heads it returns)``."""
    direction = fv / fv.norm()
    comp = projections(shares, fv)
    by = lambda key, reverse=True: sorted(shares, key=key, reverse=reverse)  # noqa: E731
    target = threshold * full_acc
    known: dict[frozenset, float] = {}  # the mistakes' orders share many head sets

    def acc_of(heads: tuple[Head, ...]) -> float:
        key = frozenset(heads)
        if key not in known:
            vector = torch.zeros_like(fv)
            for h in heads:  # summed in order, as a learner's loop sums them
                vector = vector + shares[h]
            known[key] = _accuracy(model, vector, layer, prompts, answers)
        return known[key]

    choose = lambda order, **kw: _prefix_choice(acc_of, order, kw.pop("target", target), **kw)  # noqa: E731
    yield ("ascending", "you ranked the heads SMALLEST component first; rank largest first "
           "(`sorted(..., reverse=True)`).", choose(by(comp.get, reverse=False)))
    yield ("norm", "you ranked the heads by the NORM of their share; a large share orthogonal to "
           "`fv` writes none of it. Rank by the component along `fv`, `share @ fv / fv.norm()`.",
           choose(by(lambda h: float(shares[h].norm()))))
    yield ("cosine", "you ranked the heads by COSINE similarity with `fv`; a tiny share exactly "
           "along `fv` has cosine 1 but writes almost none of it. Rank by the component "
           "`share @ fv / fv.norm()` (not divided by the share's norm).",
           choose(by(lambda h: float(shares[h] @ direction / shares[h].norm()))))
    yield ("abs", "you ranked the heads by the ABSOLUTE value of their component; a share pointing "
           "against `fv` (negative component) takes some of it away. Rank by the signed "
           "component.", choose(by(lambda h: abs(comp[h]))))
    yield ("absolute", f"you compared the accuracy with `threshold` itself ({threshold:g}); the "
           f"target is `threshold` times the full vector's accuracy ({threshold:g} x {full_acc:g}).",
           choose(ranked, target=threshold))
    yield ("0.9", "you used 0.9 instead of the `threshold` argument.",
           choose(ranked, target=0.9 * full_acc))
    yield ("strict", "you used `>`; a set whose accuracy EQUALS the target qualifies (`>=`).",
           choose(ranked, strict=True))
    yield ("plus one", "you returned one head too many (the prefix AFTER the first one that "
           "qualifies?).", list(ranked[:k + 1]))
    yield ("minus one", "you returned one head too few (the prefix BEFORE the first one that "
           "qualifies?).", list(ranked[:max(k - 1, 0)]))
    yield ("alone", "you tested each head's share ALONE; test the SUM of the top-k shares (the "
           "vector of those k heads together).", choose(ranked, single=True))
    yield ("all", "you returned every head (did you forget to stop at the first k that "
           "qualifies?).", list(ranked))
    yield ("sorted", "you returned the right heads sorted by (layer, head); return them in ranked "
           "order, largest component first: `ranked[:k]` as it is.", sorted(ranked[:k]))


@dataclass(frozen=True)
class _FmhData:
    """A case's inputs and the reference's answer (computed once per model)."""

    fv: Tensor
    layer: int
    shares: dict[Head, Tensor]
    prompts: list[str]
    answers: list[str]
    comp: dict[Head, float]
    ranked: list[Head]
    expected: list[Head]
    full_acc: float


def _fmh_case(model, case: SharesCase) -> _FmhData:
    def compute() -> _FmhData:
        from fv_exercises.reference import exercises as reference

        fv, layer, shares, prompts, answers = case.inputs(model)
        comp = projections(shares, fv)
        expected = reference.find_minimal_heads(model, fv, layer, case.threshold,
                                                head_outputs=shares, test_prompts=prompts,
                                                expected=answers)
        return _FmhData(fv, layer, shares, prompts, answers, comp,
                        sorted(shares, key=comp.get, reverse=True), list(expected),
                        _accuracy(model, fv, layer, prompts, answers))

    return cached_per_model(model, ("find_minimal_heads", case), compute)


def _fmh_call(fn, name: str, model, case: SharesCase, d: _FmhData) -> list[Head]:
    passed = {h: s.clone() for h, s in d.shares.items()}
    result = call_learner(fn, name, model, d.fv.clone(), d.layer, case.threshold,
                          head_outputs=passed, test_prompts=list(d.prompts),
                          expected=list(d.answers))
    if any(not torch.equal(passed[h], d.shares[h]) for h in d.shares):
        raise CheckFailure(f"`{name}` changed the tensors in `head_outputs` in place (e.g. "
                           "`partial = head_outputs[h]; partial += ...`). Build the sum in a new "
                           "tensor: `partial = partial + share`.")
    return _as_heads(result, name, list(d.shares))


def _fmh_observation(model, case: SharesCase, d: _FmhData, got: list[Head]):
    """``({key: (description, valid-or-heads)}, learner's)`` for :func:`_consistent`: a variant
    explains the learner's answer when both give the same heads in the same order, or both give a
    valid answer (the top k, in ranked order)."""
    k = len(d.expected)
    variants = cached_per_model(model, ("find_minimal_heads variants", case), lambda: {
        key: (desc, heads) for key, desc, heads in _fmh_variants(
            model, d.fv, d.layer, d.shares, d.prompts, d.answers, case.threshold, d.full_acc,
            d.ranked, k)})
    def mark(heads: list[Head]):
        return "valid" if _valid(heads, d.comp, k) and _ranked_order(heads, d.comp) else tuple(heads)

    return {key: (desc, mark(heads)) for key, (desc, heads) in variants.items()}, mark(got)


def _as_heads(result, name: str, candidates: Sequence[Head]) -> list[Head]:
    if result is None:
        raise CheckFailure(f"`{name}` returned None; return the list of heads. Did you forget a "
                           "`return`?")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        raise CheckFailure(f"`{name}` returned a number ({result}); return the heads themselves, "
                           "a list of `(layer, head)` tuples.")
    if isinstance(result, dict):
        raise CheckFailure(f"`{name}` returned a dict ({len(result)} entries); return a LIST of "
                           "`(layer, head)` tuples, the chosen heads in ranked order (largest "
                           "component first), e.g. `ranked[:k]`.")
    try:
        heads = [(int(h[0]), int(h[1])) for h in result]
        if any(len(h) != 2 for h in result):
            raise TypeError
    except (TypeError, IndexError, ValueError):
        raise CheckFailure(f"`{name}` should return a list of `(layer, head)` tuples, the keys of "
                           f"`head_outputs`; got {str(result)[:120]}.") from None
    unknown = [h for h in heads if h not in set(candidates)]
    if unknown:
        raise CheckFailure(f"`{name}` returned heads that are not keys of `head_outputs`: "
                           f"{unknown[:4]}. Return keys of `head_outputs`, e.g. {candidates[0]}.")
    if len(set(heads)) != len(heads):
        raise CheckFailure(f"`{name}` returned a head more than once: {heads}.")
    return heads


def _valid(heads: list[Head], comp: dict[Head, float], k: int, tol: float = 1e-4) -> bool:
    """Is ``heads`` the top ``k`` by component under some order of ties?"""
    if len(heads) != k:
        return False
    cut = sorted(comp.values(), reverse=True)[k - 1]
    chosen = set(heads)
    return (all(comp[h] >= cut - tol for h in chosen)
            and all(h in chosen for h, c in comp.items() if c > cut + tol))


def _ranked_order(heads: list[Head], comp: dict[Head, float], tol: float = 1e-4) -> bool:
    """Are ``heads`` in ranked order, largest component first (equal components in any order)?"""
    values = [comp[h] for h in heads]
    return all(a >= b - tol * (1 + abs(b)) for a, b in zip(values, values[1:]))


def check_find_minimal_heads(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_minimal_heads(model, fv, layer, threshold, *, head_outputs, test_prompts,
    expected) -> [(layer, head), ...]`` on synthetic shares (see :class:`SharesCase`).

    An answer is right when it is the top ``k`` heads by component, in ranked order (largest
    first) under some order of ties, for the reference's ``k``. On a wrong answer the later cases
    are tried too, and the known mistakes that explain every case are named.
    """
    name = "find_minimal_heads"
    cases = _FMH_HIDDEN if hidden else _FMH_CASES
    with quiet(model):
        for i, case in enumerate(cases):
            d = _fmh_case(model, case)
            got = _fmh_call(fn, name, model, case, d)
            k = len(d.expected)
            right_set = _valid(got, d.comp, k)
            if right_set and _ranked_order(got, d.comp):
                continue
            components = ", ".join(f"{h}: {d.comp[h]:.1f}" for h in d.ranked)
            if right_set:  # the right heads in another order: a ranking mistake, or no ranking
                head = (f"`{name}` returned the right heads in the wrong order: {got}. The "
                        f"reference returns them in ranked order, largest component along `fv` "
                        f"first: {d.expected}.")
                fallback = (f"Components along `fv`, largest first: {components}. Return "
                            "`ranked[:k]` of that ranking, in its order.")
            else:
                context = (f"task {case.task}, layer {d.layer}, {len(d.shares)} candidate heads, "
                           f"threshold {case.threshold:g}, {len(d.prompts)} queries")
                got_vec = (torch.stack([d.shares[h] for h in got]).sum(0) if got
                           else torch.zeros_like(d.fv))
                ref_vec = torch.stack([d.shares[h] for h in d.expected]).sum(0)
                head = (f"`{name}` returned {got} ({len(got)} heads, accuracy "
                        f"{_accuracy(model, got_vec, d.layer, d.prompts, d.answers):g}) "
                        f"({context}).\nThe reference: the top {k} by component, {d.expected} "
                        f"(accuracy {_accuracy(model, ref_vec, d.layer, d.prompts, d.answers):g}; "
                        f"the full vector {d.full_acc:g}, so the target is {case.threshold:g} x "
                        f"{d.full_acc:g} = {case.threshold * d.full_acc:g}).")
                fallback = (f"Components along `fv`, largest first: {components}. Keep the "
                            "smallest k whose summed shares reach the target.")
            observations = [_fmh_observation(model, case, d, got)]
            for later in cases[i + 1:]:
                dl = _fmh_case(model, later)
                try:
                    observations.append(_fmh_observation(model, later, dl,
                                                         _fmh_call(fn, name, model, later, dl)))
                except CheckFailure:
                    continue
            raise _named(head, _consistent(observations, lambda a, b: a == b), fallback)
    if not hidden:
        print(f"find_minimal_heads matches the reference ({len(cases)} cases, thresholds "
              f"{', '.join(f'{c.threshold:g}' for c in cases)}; shares built so that ranking by "
              "norm, cosine or |component| gives other heads).")
