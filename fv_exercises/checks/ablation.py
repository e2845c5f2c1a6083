"""Check cell of notebook 05 (ablation): ``ablate_function_vector``.

Same contract as every check (:mod:`fv_exercises.checks.core`): the learner's logits are compared
with the reference's on the same model, prompt, vector and layer; a passing check prints one line,
a failing one raises ``CheckFailure`` naming the first thing that is wrong and, where a known
mistake reproduces the learner's logits, that mistake.

What the check does, in order:

1. case 1 (a few-shot prompt, a task vector, a middle layer): call, then make sure the caller's
   ``fv`` was not edited in place (``fv /= fv.norm()`` gives the right logits and a wrong vector
   to every later caller), compare the logits, call again with the same inputs (nothing may
   accumulate between runs);
2. case 2 (a prompt of another token length, another task's vector, another layer): call and
   compare (a direction or layer kept from the first call shows here).

Known mistakes are computed only after a mismatch: the ones that differ only inside the hook run
as rows of one batched forward pass, the ones on other hook points one pass each.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    as_tensor,
    call_learner,
    compare,
    quiet,
    repeat_consistent,
    stale_state_message,
    token_lengths,
)
from fv_exercises.evaluation import mean_resid_post, resid_post_name

# Prompts of different token lengths (3 and 4 demonstrations), vectors of different tasks and
# layers at different depths: whatever a learner keeps from the first call shows in the second.
_CASES = (Case("antonym", seed=0, layer_fraction=0.45, n_prompts=3, n_shots=3),
          Case("present_past", seed=2, layer_fraction=0.7, n_prompts=3, n_shots=4))
_HIDDEN = (Case("capitalize", seed=4, layer_fraction=0.6, n_prompts=3, n_shots=2),
           Case("singular_plural", seed=1, layer_fraction=0.35, n_prompts=3, n_shots=4))
_ATOL = 1e-3
_NAME = "ablate_function_vector"
_INPUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def case_inputs(model, case: Case) -> tuple[str, Tensor, int, Tensor]:
    """``(prompt, fv, layer, reference logits)`` of a case, computed once per model.

    ``fv`` is the mean final-position ``resid_post`` of the case's few-shot prompts at the case's
    layer (the seed's ``h``, averaged): its norm is far from 1, so a missing normalisation shows,
    and it has a clear component at every position, the last one included, so an ablation at the
    wrong positions shows. (The mean *difference* from zero-shot states can be almost orthogonal
    to a prompt's last position.)
    """
    from fv_exercises.reference.ablation import ablate_function_vector as reference

    per_model = _INPUTS.setdefault(model, {})
    if case not in per_model:
        model.reset_hooks()
        ds, layer = case.dataset(), case.layer(model)
        fv = mean_resid_post(model, ds.prompts)[layer]
        prompt = ds.prompts[0]
        expected = reference(model, prompt, fv.clone(), layer).float()
        per_model[case] = (prompt, fv, layer, expected)
    prompt, fv, layer, expected = per_model[case]
    return prompt, fv.clone(), layer, expected


# --------------------------------------------------------------------------------------------
# Known mistakes
# --------------------------------------------------------------------------------------------

def _hook_variants(fv: Tensor) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """Mistakes made inside the hook on the right hook point: ``resid [1, pos, d] -> new resid``."""
    u = fv / fv.norm()
    norm = fv.norm().item()

    def proj(r: Tensor, v: Tensor = u) -> Tensor:
        return (r @ u)[..., None] * v

    def last_only(r: Tensor) -> Tensor:
        out = r.clone()
        out[:, -1] = r[:, -1] - (r[:, -1] @ u)[..., None] * u
        return out

    def subtract_last(r: Tensor) -> Tensor:
        out = r.clone()
        out[:, -1] = r[:, -1] - fv
        return out

    return [
        ("nothing was projected out: your logits equal a plain run of the prompt. Does your hook "
         "RETURN the edited activation, and is it registered on "
         "`blocks.{layer}.hook_resid_post`?", lambda r: r),
        (f"fv was not normalised: `(resid @ fv) * fv` removes |fv|^2 = {norm ** 2:.4g} times the "
         "projection. Divide by the norm first: `fv_unit = fv / fv.norm()`, then "
         "`(resid @ fv_unit)[..., None] * fv_unit`.", lambda r: r - (r @ fv)[..., None] * fv),
        (f"fv was normalised in only one of the two places: `(resid @ fv_unit) * fv` is |fv| = "
         f"{norm:.4g} times the projection. Use the unit vector in both: "
         "`(resid @ fv_unit)[..., None] * fv_unit`.", lambda r: r - proj(r, fv)),
        ("you subtracted the vector fv itself (`resid - fv`): that shifts every position by a "
         "fixed vector. Ablation removes only the component ALONG fv, which differs from position "
         "to position: `resid - (resid @ fv_unit)[..., None] * fv_unit`.", lambda r: r - fv),
        ("you subtracted the unit vector itself (`resid - fv_unit`), a fixed shift. Remove the "
         "component along it: `resid - (resid @ fv_unit)[..., None] * fv_unit`.", lambda r: r - u),
        ("you subtracted fv at the final position only, as when ADDING a task vector in notebook "
         "01. Ablation removes the component along fv at EVERY position: "
         "`resid - (resid @ fv_unit)[..., None] * fv_unit`.", subtract_last),
        ("the projection was removed at the final position only (`resid[:, -1]`). Remove it at "
         "EVERY position: the direction can reach the final position through attention from "
         "earlier ones.", last_only),
        ("the projection was computed along the wrong axis: the dot product summed over "
         "POSITIONS (dim 1) instead of over d_model (dim -1). `resid @ fv_unit` (shape "
         "[batch, pos]) sums over d_model.",
         lambda r: r - (r * u).sum(1, keepdim=True) * u),
        ("the coefficient is a MEAN over d_model instead of a sum (`(resid * fv_unit).mean(-1)`):"
         " the projection is d_model times too small. Use `resid @ fv_unit` (a sum).",
         lambda r: r - (r * u).mean(-1, keepdim=True) * u),
        ("the projection was ADDED instead of subtracted (`resid + projection`).",
         lambda r: r + proj(r)),
        ("you returned the projection itself (the component along fv), not the residual with it "
         "removed: return `resid - projection`.", proj),
        ("the projection was subtracted twice (e.g. an in-place `resid -= projection` AND then "
         "`return resid - projection`): that reflects the residual instead of projecting.",
         lambda r: r - 2 * proj(r)),
    ]


def _batched_hook_logits(model, prompt: str, layer: int,
                         transforms: list[Callable[[Tensor], Tensor]]) -> Tensor:
    """Logits ``[len(transforms), 1, seq, d_vocab]``: row ``i`` with ``transforms[i]`` applied to
    ``resid_post`` of ``layer``, all rows in one forward pass."""
    tokens = model.to_tokens(prompt)

    def hook(resid: Tensor, hook=None) -> Tensor:
        return torch.cat([t(resid[i:i + 1]) for i, t in enumerate(transforms)])

    logits = model.run_with_hooks(tokens.repeat(len(transforms), 1),
                                  fwd_hooks=[(resid_post_name(layer), hook)])
    return logits[:, None]


def _ablate_at(model, prompt: str, fv: Tensor, hook_name: str) -> Tensor:
    """The correct projection, on another hook point."""
    u = fv / fv.norm()
    return model.run_with_hooks(
        prompt, fwd_hooks=[(hook_name, lambda r, hook=None: r - (r @ u)[..., None] * u)])


def _variants(model, prompt: str, fv: Tensor, layer: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes and the logits they give (lazy: computed only after a mismatch)."""
    named = _hook_variants(fv)
    logits = _batched_hook_logits(model, prompt, layer, [t for _, t in named])
    for (description, _), row in zip(named, logits):
        yield description.replace("{layer}", str(layer)), row
    yield (f"you projected at `blocks.{layer}.hook_resid_pre`, the residual stream BEFORE block "
           f"{layer} (= the output of block {layer - 1}). Use `blocks.{layer}.hook_resid_post`.",
           _ablate_at(model, prompt, fv, f"blocks.{layer}.hook_resid_pre"))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            yield (f"you projected at layer {other}, not at `blocks.{layer}.hook_resid_post` "
                   "(off by one?).", _ablate_at(model, prompt, fv, resid_post_name(other)))


# --------------------------------------------------------------------------------------------
# The learner's result
# --------------------------------------------------------------------------------------------

_SEED_EXPRESSION = (
    "This is the seed's line `projection = (resid @ fv_norm) * fv_norm`: `resid @ fv_norm` has "
    "shape [batch, pos] (one number per position), and multiplying it by `fv_norm` ([d_model]) "
    "lines up `pos` with `d_model`, which fails unless they happen to be equal. Give the "
    "coefficient a trailing axis: `(resid @ fv_norm)[..., None] * fv_norm` "
    "([batch, pos, 1] * [d_model] -> [batch, pos, d_model]).")


def _call(fn: Callable, model, prompt: str, fv: Tensor, layer: int) -> object:
    """Call the learner with a copy of ``fv``; name the seed's broadcasting error; make sure the
    copy it was given comes back unchanged."""
    given = fv.clone()
    try:
        result = call_learner(fn, _NAME, model, prompt, given, layer)
    except CheckFailure as failure:
        text = str(failure)
        if "must match the size of tensor" in text or "size of tensor a" in text:
            raise CheckFailure(f"{text}\n{_SEED_EXPRESSION}") from None
        raise
    if given.shape != fv.shape or not torch.equal(given, fv):
        after = given.norm().item() if given.shape == fv.shape else float("nan")
        raise CheckFailure(
            f"`{_NAME}` changed the `fv` it was given, in place (its norm went from "
            f"{fv.norm():.4g} to {after:.4g}). An in-place edit such as `fv /= fv.norm()` or "
            "`fv.div_(...)` (also through an alias: `v = fv; v /= ...`) reaches the caller's "
            "tensor, so the next experiment silently uses the edited vector. Make a new tensor: "
            "`fv_unit = fv / fv.norm()`.")
    return result


def _logits(result, model, prompt: str, expected: Tensor) -> Tensor:
    """The learner's result as logits of ``expected``'s shape, or a failure that says what it is."""
    shape = tuple(expected.shape)
    if isinstance(result, Tensor) and result.ndim == 3 and result.shape[-1] == model.cfg.d_model \
            and result.shape[-1] != shape[-1]:
        raise CheckFailure(
            f"`{_NAME}` returned shape {tuple(result.shape)}: that is the residual stream "
            f"([batch, pos, d_model = {model.cfg.d_model}]), not the logits. Return what "
            f"`model.run_with_hooks(...)` returns, shape {shape}.")
    if isinstance(result, Tensor) and result.is_floating_point() and result.shape == shape \
            and not torch.isfinite(result).all():
        raise CheckFailure(
            f"`{_NAME}` returned NaN or infinite logits. Is `fv` normalised with its norm "
            "(`fv / fv.norm()`), and is the coefficient `resid @ fv_unit`?")
    return as_tensor(result, _NAME, shape, "logits [1, seq_len, d_vocab]")


def check_ablate_function_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``ablate_function_vector(model, prompt, fv, layer) -> logits [1, seq, d_vocab]``."""
    cases = _HIDDEN if hidden else _CASES
    with quiet():
        first: str | None = None
        for i, case in enumerate(cases):
            prompt, fv, layer, expected = case_inputs(model, case)
            got = _logits(_call(fn, model, prompt, fv, layer), model, prompt, expected)
            context = f"task {case.task} vector at layer {layer}, a {expected.shape[1]}-token prompt"
            compare(got, expected, lambda: _variants(model, prompt, fv, layer), _NAME, "logits",
                    atol=_ATOL, context=context,
                    unexplained=stale_state_message(_NAME, first, context) if first else None,
                    hint="Remove `(resid @ fv_unit)[..., None] * fv_unit` from `resid` at every "
                         f"position of `blocks.{layer}.hook_resid_post`, and return the logits.")
            if i == 0:
                again = _logits(_call(fn, model, prompt, fv, layer), model, prompt, expected)
                repeat_consistent(got, again, _NAME, atol=_ATOL)
                first = context
    if not hidden:
        lengths = token_lengths(model, [case_inputs(model, c)[0] for c in cases])
        print(f"{_NAME} matches the reference ({cases[0].task} vector at layer "
              f"{cases[0].layer(model)} and {cases[1].task} vector at layer {cases[1].layer(model)}; "
              f"prompts of {lengths[0]} and {lengths[1]} tokens; your `fv` was left unchanged).")
