"""Check cells: compare a learner's function with the reference on the same model and inputs.

Each ``check_*`` function runs the learner's function, and if the result differs from the
reference it names the first thing that is wrong, with numbers. Where a known mistake (wrong
position, wrong layer, sum instead of mean, ...) reproduces the learner's output, the message
names that mistake. A passing check prints one line to stdout; a failing one raises
``CheckFailure`` (an ``AssertionError``, which nbgrader counts as a failed test). Nothing is
written to stderr, since nbgrader scores a grade cell that writes to stderr zero.

Every check also guards the shared model: hooks left registered by the learner's function are
removed (and reported), so one bug never poisons the next check.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.tasks import ICLDataset


class CheckFailure(AssertionError):
    """A learner's function disagrees with the reference; the message says how."""


@dataclass(frozen=True)
class Case:
    """Inputs a check uses: prompts from the course's own data, a layer as a fraction of depth."""

    task: str
    seed: int
    layer_fraction: float
    n_prompts: int = 1

    def layer(self, model) -> int:
        return int(self.layer_fraction * (model.cfg.n_layers - 1))

    def dataset(self) -> ICLDataset:
        return ICLDataset.build(self.task, self.n_prompts, n_shots=3, seed=self.seed)


def _hooked_names(model) -> list[str]:
    return [name for name, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings (stderr) and no autograd while checking."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def call_learner(fn: Callable, name: str, model, *args):
    """Call the learner's ``fn``; turn crashes and leaked hooks into clear ``CheckFailure``s."""
    if not callable(fn):
        raise CheckFailure(f"`{name}` is not a function (got {type(fn).__name__}). Did you run its cell?")
    if _hooked_names(model):
        model.reset_hooks()  # left over from an earlier cell: not this function's fault
    try:
        result = fn(model, *args)
    except NotImplementedError:
        raise CheckFailure(
            f"`{name}` is not implemented yet: replace `raise NotImplementedError()` with your code."
        ) from None
    except Exception as exc:
        model.reset_hooks()
        raise CheckFailure(f"`{name}` raised {type(exc).__name__}: {exc}") from exc
    leaked = _hooked_names(model)
    if leaked:
        model.reset_hooks()
        raise CheckFailure(
            f"`{name}` left hooks registered on the model ({', '.join(leaked[:3])}). They would "
            "change every later run. Use `model.run_with_hooks(...)` (it removes its hooks when "
            "it returns) or `with model.hooks(...):` instead of `model.add_hook`. "
            "(They have been removed now.)"
        )
    return result


def _as_tensor(result, name: str, shape: tuple[int, ...], what: str) -> Tensor:
    if isinstance(result, tuple) and result and isinstance(result[0], Tensor):
        raise CheckFailure(f"`{name}` returned a tuple; return only the {what} tensor.")
    if not isinstance(result, Tensor):
        raise CheckFailure(f"`{name}` should return a torch.Tensor ({what}), got {type(result).__name__}.")
    if tuple(result.shape) != shape:
        raise CheckFailure(
            f"`{name}` returned shape {tuple(result.shape)}; expected {shape} ({what})."
        )
    return result.detach().float()


def _diagnose(got: Tensor, variants: dict[str, Tensor], atol: float) -> str | None:
    """The description of the first known mistake whose output matches ``got``, if any."""
    for description, value in variants.items():
        if value.shape == got.shape and torch.allclose(got, value, atol=atol, rtol=1e-4):
            return description
    return None


def _compare(got: Tensor, expected: Tensor, variants: Callable[[], dict[str, Tensor]],
             name: str, what: str, atol: float, context: str) -> float:
    """Max |got - expected|; on a mismatch, compute the known mistakes (only then) and raise."""
    diff = (got - expected).abs().max().item()
    if diff <= atol:
        return diff
    mistake = _diagnose(got, variants(), atol)
    head = f"`{name}` gives the wrong {what} ({context}): max |yours - reference| = {diff:.3g}."
    if mistake:
        raise CheckFailure(f"{head}\nYour output matches a common mistake: {mistake}")
    raise CheckFailure(
        f"{head}\nNorm of yours {got.norm():.4g}, of the reference {expected.norm():.4g}. "
        "Check the hook name, the position (-1) and that you return the right tensor."
    )


def _repeat_consistent(first: Tensor, second: Tensor, name: str, atol: float) -> None:
    diff = (first - second).abs().max().item()
    if diff > atol:
        raise CheckFailure(
            f"Calling `{name}` twice with the same inputs gave different results "
            f"(max |difference| = {diff:.3g}). Something is modified in place and leaks into "
            "the next run: e.g. a cached activation you edit, or a tensor shared between calls. "
            "Clone before editing, or edit only the activation passed to your hook."
        )


# --------------------------------------------------------------------------------------------
# 01 · find_task_vector
# --------------------------------------------------------------------------------------------

_FTV_CASES = (Case("antonym", seed=0, layer_fraction=0.65),)
_FTV_HIDDEN = (Case("present_past", seed=3, layer_fraction=0.4), Case("capitalize", seed=5, layer_fraction=0.9))


def _add_state_variant(model, icl_prompt: str, zero_prompt: str, read: str, write: str,
                       read_pos: int = -1, every_position: bool = False, scale: float = 1.0) -> Tensor:
    """Logits of ``zero_prompt`` with the ICL state at hook ``read`` added at hook ``write``."""
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda n: n == read)
    h = cache[read][:, read_pos] * scale

    def hook(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        if every_position:
            resid += h[:, None]
        else:
            resid[:, -1] += h
        return resid

    return model.run_with_hooks(zero_prompt, fwd_hooks=[(write, hook)])


def _ftv_variants(model, icl: str, zero: str, layer: int) -> dict[str, Tensor]:
    post = lambda l: f"blocks.{l}.hook_resid_post"  # noqa: E731
    last = model.cfg.n_layers - 1
    variants = {
        "no vector was added at all (the output equals the plain zero-shot run). Does your hook "
        "return the modified tensor, and is it registered on `blocks.{layer}.hook_resid_post`?":
            model(zero),
        "h was taken from the FIRST position of the ICL prompt (index 0); the task is encoded "
        "at the final position (index -1).":
            _add_state_variant(model, icl, zero, post(layer), post(layer), read_pos=0),
        "h was added at EVERY position of the zero-shot prompt; add it at the final position only.":
            _add_state_variant(model, icl, zero, post(layer), post(layer), every_position=True),
        "h was added twice (or doubled).":
            _add_state_variant(model, icl, zero, post(layer), post(layer), scale=2.0),
    }
    # blocks.{l}.hook_resid_pre is the same tensor as blocks.{l-1}.hook_resid_post.
    early = " (or `hook_resid_pre`, which is the residual stream BEFORE block {layer})"
    for other in (layer - 1, layer + 1):
        if 0 <= other <= last:
            hint = early if other == layer - 1 else ""
            variants[f"h was read from layer {other}{hint}, not from `hook_resid_post` of layer "
                     f"{layer} (off by one?)."] = (
                _add_state_variant(model, icl, zero, post(other), post(layer)))
            variants[f"h was added at layer {other}{hint}, not at `hook_resid_post` of layer "
                     f"{layer} (off by one?)."] = (
                _add_state_variant(model, icl, zero, post(layer), post(other)))
    return {k.replace("{layer}", str(layer)): v for k, v in variants.items()}


def check_find_task_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``find_task_vector(model, icl_prompt, zero_shot_prompt, layer) -> logits``."""
    from fv_exercises.reference.task_vectors import find_task_vector as reference

    name = "find_task_vector"
    with _quiet():
        for case in _FTV_HIDDEN if hidden else _FTV_CASES:
            ds, layer = case.dataset(), case.layer(model)
            icl, zero = ds.prompts[0], ds.zero_shot_prompts[0]
            expected = reference(model, icl, zero, layer).float()
            shape = tuple(expected.shape)
            got = _as_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape,
                             "logits [1, seq_len, d_vocab]")
            context = f"task {case.task}, layer {layer}"
            _compare(got, expected, lambda: _ftv_variants(model, icl, zero, layer), name, "logits",
                     atol=1e-3, context=context)
            again = _as_tensor(call_learner(fn, name, model, icl, zero, layer), name, shape, "logits")
            _repeat_consistent(got, again, name, atol=1e-3)
    if not hidden:
        print(f"find_task_vector matches the reference (task {_FTV_CASES[0].task}, "
              f"layer {_FTV_CASES[0].layer(model)}, all {expected.shape[1]} positions).")


# --------------------------------------------------------------------------------------------
# 01 · mean_task_vector
# --------------------------------------------------------------------------------------------

_MTV_CASES = (Case("antonym", seed=0, layer_fraction=0.65, n_prompts=4),)
_MTV_HIDDEN = (Case("country_capital", seed=7, layer_fraction=0.3, n_prompts=3),
               Case("singular_plural", seed=2, layer_fraction=0.8, n_prompts=5))


def _final_states(model, prompts: list[str], hook_name: str, position: int = -1) -> Tensor:
    """``[n, d_model]`` activation at ``hook_name``, ``position`` of each prompt."""
    rows = []
    for p in prompts:
        _, cache = model.run_with_cache(p, names_filter=lambda n: n == hook_name)
        rows.append(cache[hook_name][0, position])
    return torch.stack(rows)


def _mtv_variants(model, icl: list[str], zero: list[str], layer: int) -> dict[str, Tensor]:
    post = lambda l: f"blocks.{l}.hook_resid_post"  # noqa: E731
    a, b = _final_states(model, icl, post(layer)), _final_states(model, zero, post(layer))
    all_pos_mean = lambda ps: torch.stack(  # noqa: E731
        [model.run_with_cache(p, names_filter=lambda n: n == post(layer))[1][post(layer)][0].mean(0)
         for p in ps])
    variants = {
        f"you SUMMED over prompts instead of taking the mean (yours is {len(icl)}x too large when "
        "both lists have the same length).": a.sum(0) - b.sum(0),
        "you returned the mean ICL state without subtracting the zero-shot mean.": a.mean(0),
        "the subtraction is the wrong way round (zero-shot minus ICL).": b.mean(0) - a.mean(0),
        "you took the FIRST position of each prompt; use the final position (-1).":
            _final_states(model, icl, post(layer), 0).mean(0)
            - _final_states(model, zero, post(layer), 0).mean(0),
        "you averaged over all positions of each prompt; use the final position only.":
            all_pos_mean(icl).mean(0) - all_pos_mean(zero).mean(0),
    }
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            hint = f" (or `hook_resid_pre` of layer {layer}, which is the same tensor)" if other < layer else ""
            variants[f"you read layer {other}{hint}, not `hook_resid_post` of layer {layer} "
                     "(off by one?)."] = (
                _final_states(model, icl, post(other)).mean(0)
                - _final_states(model, zero, post(other)).mean(0))
    return variants


def check_mean_task_vector(fn: Callable, model, hidden: bool = False) -> None:
    """Check ``mean_task_vector(model, icl_prompts, zero_shot_prompts, layer) -> [d_model]``."""
    from fv_exercises.reference.task_vectors import mean_task_vector as reference

    name = "mean_task_vector"
    with _quiet():
        for case in _MTV_HIDDEN if hidden else _MTV_CASES:
            ds, layer = case.dataset(), case.layer(model)
            icl, zero = list(ds.prompts), list(ds.zero_shot_prompts)
            expected = reference(model, icl, zero, layer).float()
            got = _as_tensor(call_learner(fn, name, model, icl, zero, layer), name,
                             tuple(expected.shape), "task vector [d_model]")
            context = f"task {case.task}, {len(icl)} prompts, layer {layer}"
            _compare(got, expected, lambda: _mtv_variants(model, icl, zero, layer), name,
                     "task vector", atol=1e-3, context=context)
            again = _as_tensor(call_learner(fn, name, model, icl, zero, layer), name,
                               tuple(expected.shape), "task vector")
            _repeat_consistent(got, again, name, atol=1e-3)
            # Different lengths: a learner who divides by a fixed count would pass the above.
            uneven = call_learner(fn, name, model, icl[:2], zero, layer)
            expected_uneven = reference(model, icl[:2], zero, layer).float()
            _compare(_as_tensor(uneven, name, tuple(expected.shape), "task vector"),
                     expected_uneven, dict, name, "task vector",
                     atol=1e-3, context=f"{context}, 2 ICL prompts vs {len(zero)} zero-shot prompts")
    if not hidden:
        print(f"mean_task_vector matches the reference (task {_MTV_CASES[0].task}, "
              f"{_MTV_CASES[0].n_prompts} prompts, layer {_MTV_CASES[0].layer(model)}, "
              f"|h| = {expected.norm():.1f}).")
