"""Shared machinery of the check cells: call the learner's function safely, compare, name mistakes.

Every ``check_*`` function in this package follows one contract:

- it runs the learner's function on inputs from the course's own data and compares the result with
  the reference solution (``fv_exercises.reference``) on the **same model and inputs**, never with
  stored numbers;
- a passing check prints one line to stdout; a failing one raises :class:`CheckFailure` (an
  ``AssertionError``, which nbgrader counts as a failed test) whose message names the first thing
  that is wrong, with numbers, and, where a known mistake reproduces the learner's output, that
  mistake;
- nothing is written to stderr (nbgrader scores a grade cell that writes to stderr zero);
- a learner's bug never poisons the next check: :func:`call_learner` removes hooks left registered,
  restores weights edited in place, and resets the global torch state (default dtype, grad mode).

What a check module writes itself: its cases (prompts of *different token lengths*, so that a
batched version that reads ``[:, -1]`` on right-padded rows fails visibly), its known mistakes, and
a second call with *different* inputs (so a value cached in a global between calls shows).
"""

from __future__ import annotations

import contextlib
import linecache
import math
import sys
import traceback
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from fv_exercises.tasks import ICLDataset


class CheckFailure(AssertionError):
    """A learner's function disagrees with the reference; the message says how."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Inputs a check uses: prompts from the course's own data, a layer as a fraction of depth.

    Layers are fractions so that the same case runs on any model (no hard-coded 30 layers).
    """

    task: str
    seed: int
    layer_fraction: float
    n_prompts: int = 1
    n_shots: int = 3

    def layer(self, model) -> int:
        return int(round(self.layer_fraction * (model.cfg.n_layers - 1)))

    def dataset(self) -> ICLDataset:
        """``n_prompts`` prompts, all with ``n_shots`` demonstrations."""
        return ICLDataset.build(self.task, self.n_prompts, n_shots=self.n_shots, seed=self.seed)

    def mixed(self) -> "PromptSet":
        """``n_prompts`` prompts whose number of demonstrations cycles ``n_shots, n_shots - 1,
        n_shots + 1``: few-shot prompts of different token lengths, so a batched version that
        reads ``[:, -1]`` of right-padded rows gets the wrong position and fails visibly."""
        shots = [max(1, self.n_shots + (0, -1, 1)[i % 3]) for i in range(self.n_prompts)]
        draws = {k: ICLDataset.build(self.task, self.n_prompts, n_shots=k, seed=self.seed)
                 for k in set(shots)}
        pick = [draws[k] for k in shots]
        return PromptSet(
            prompts=[d.prompts[i] for i, d in enumerate(pick)],
            corrupted_prompts=[d.corrupted_prompts[i] for i, d in enumerate(pick)],
            zero_shot_prompts=[d.zero_shot_prompts[i] for i, d in enumerate(pick)],
            answers=[d.answers[i] for i, d in enumerate(pick)],
        )


@dataclass(frozen=True)
class PromptSet:
    """Parallel lists of prompts (index ``i`` of each list is the same query)."""

    prompts: list[str]
    corrupted_prompts: list[str]
    zero_shot_prompts: list[str]
    answers: list[str]


def token_lengths(model, prompts: Iterable[str]) -> list[int]:
    """Number of tokens of each prompt as the model tokenizes it."""
    return [int(model.to_tokens(p).shape[1]) for p in prompts]


def mixed_lengths(model, prompts: Iterable[str]) -> bool:
    """True when the prompts do not all have the same token length (padding would show)."""
    return len(set(token_lengths(model, prompts))) > 1


_PER_MODEL: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: value}


def cached_per_model(model, key, compute: Callable[[], object]):
    """``compute()`` once per model and ``key``, then kept (checks call this for their cases'
    inputs and the reference's results: every wrong version a test suite tries, and every call of
    a check in one notebook, reuses them). Only for values computed on the pristine model (checks
    compute them inside ``with quiet(model):``, which restores it first)."""
    per_model = _PER_MODEL.setdefault(model, {})
    if key not in per_model:
        per_model[key] = compute()
    return per_model[key]


# --------------------------------------------------------------------------------------------
# Guarding the shared model
# --------------------------------------------------------------------------------------------


def hooked_names(model) -> list[str]:
    """Hook points that have forward or backward hooks registered right now."""
    return [name for name, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks]


def _weight_stats(w: Tensor) -> Tensor:
    """``[sum, norm]`` of one weight tensor, reduced in float32 (no float64 copy of the weights:
    that took 1 s per call on the embedded model, this 0.04 s), returned as float64.

    The float32 rounding error of either reduction is far below the tolerance of
    :meth:`_Pristine.changed` (1e-6 of the larger of the two), so detection is as sensitive as
    with float64 sums.
    """
    w = w.detach().float()
    return torch.stack([w.sum(), w.norm()]).double()


def _fingerprint(model) -> Tensor:
    """Two numbers per parameter (sum and norm): cheap, and they change on any real edit."""
    with torch.no_grad():
        return torch.stack([_weight_stats(p) for p in model.parameters()])


class _Pristine:
    """The model's weights as loaded, to detect and undo a learner's in-place edit.

    For a model loaded from a safetensors folder (the embedded model), the fingerprint is taken
    from that file and restoring re-reads it, so an edit made before the first check is caught
    too. Otherwise the fingerprint and a copy of the weights are taken at the first guard.
    """

    def __init__(self, model):
        self.source = getattr(model, "fv_weights_file", None)
        self.copy = None if self.source else [p.detach().clone() for p in model.parameters()]
        self.fingerprint = self._file_fingerprint(model) if self.source else _fingerprint(model)

    def _file_fingerprint(self, model) -> Tensor:
        """:func:`_fingerprint` of the weights as stored (live values for names not in the file)."""
        from safetensors.torch import load_file

        saved, live = load_file(str(self.source)), _fingerprint(model)
        rows = []
        for i, (name, _) in enumerate(model.named_parameters()):
            w = _saved_weight(saved, name)
            rows.append(live[i] if w is None else _weight_stats(w))
        return torch.stack(rows)

    def changed(self, model) -> list[str]:
        now = _fingerprint(model)
        diff = (now - self.fingerprint).abs().amax(-1)
        # `not <=` rather than `>`: a weight set to NaN or inf gives a NaN difference, which
        # compares False with everything and would otherwise pass for "unchanged".
        bad = ~(diff <= 1e-6 * (1 + self.fingerprint.abs().amax(-1)))
        names = [n for n, _ in model.named_parameters()]
        return [_short_param_name(names[i]) for i in bad.nonzero().flatten().tolist()]

    def restore(self, model) -> None:
        with torch.no_grad():
            if self.copy is not None:
                for p, saved in zip(model.parameters(), self.copy):
                    p.copy_(saved)
                return
            from safetensors.torch import load_file

            saved = load_file(str(self.source))
            for name, p in model.named_parameters():
                w = _saved_weight(saved, name)
                if w is not None:
                    p.copy_(w.to(p.dtype))


def _saved_weight(saved: Mapping[str, Tensor], name: str) -> Tensor | None:
    """The stored tensor of the bridge parameter ``name`` (tied embeddings included), if any."""
    key = _short_param_name(name)
    if key in saved:
        return saved[key]
    return saved.get(key.replace("lm_head", "model.embed_tokens"))  # tied embeddings


def _short_param_name(name: str) -> str:
    """``model.layers.0._original_component.self_attn...`` -> ``model.layers.0.self_attn...``."""
    name = name.replace("._original_component", "")
    return name[len("original_model."):] if name.startswith("original_model.") else name


_PRISTINE: dict[int, _Pristine] = {}


def _pristine(model) -> _Pristine:
    key = id(model)
    if key not in _PRISTINE:
        _PRISTINE[key] = _Pristine(model)
    return _PRISTINE[key]


def reset_global_state() -> None:
    """Undo global torch settings a learner's code may have changed (dtype, grad mode)."""
    if torch.get_default_dtype() != torch.float32:
        torch.set_default_dtype(torch.float32)


@contextlib.contextmanager
def quiet(*models) -> Iterator[None]:
    """No warnings (they go to stderr), no autograd, float32 default dtype while checking.

    Each model passed is guarded first (:func:`guard_model`): a check computes the reference
    before it calls the learner, and the reference must run on the real model even when an
    earlier cell left a hook registered or edited the weights. Checks use ``with quiet(model):``.
    """
    reset_global_state()
    for model in models:
        guard_model(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield
    reset_global_state()


def guard_model(model) -> None:
    """Before a check uses ``model``: no leftover hooks, original weights, float32 default.

    Problems left by an *earlier* cell are repaired silently: they are not this function's fault,
    and the reference must run on the real model.
    """
    if hooked_names(model):
        model.reset_hooks()
    pristine = _pristine(model)
    if pristine.changed(model):
        pristine.restore(model)
    reset_global_state()


def _learner_frame(exc: BaseException) -> str:
    """`` (line N: `code`)`` for the innermost frame in the learner's own code, if any.

    Frames from files inside site-packages, the standard library or this package are skipped:
    the learner needs the line *they* wrote.
    """
    skip = ("site-packages", "fv_exercises", f"{sys.prefix}/lib", "<frozen")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(s in (f.filename or "") for s in skip)]
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f" (in `{f.name}`, line {f.lineno}: `{code}`)" if code else ""


class RunsElsewhere:
    """Base of a learner's function that runs in another process (the judge's
    :class:`fv_exercises.judge.RemoteFunction`): it cannot touch the weights of the model passed
    here, so :func:`call_learner` does not fingerprint them around the call (two passes over
    every weight per call: half of what checking notebook 09 cost). The kernel that runs the
    function guards its own model with its own :func:`call_learner`."""


def call_learner(fn: Callable, name: str, model, *args, **kwargs):
    """Call the learner's ``fn(model, *args)``; turn every way it can go wrong into a clear failure.

    - not a function, not implemented, an exception (with the learner's own line);
    - hooks left registered on the model (removed, then reported);
    - model weights edited in place (restored, then reported);
    - the default dtype changed (reset; not reported: results are compared in float32 anyway).

    A :class:`RunsElsewhere` function is called without the weight checks (see there).
    """
    if not callable(fn):
        raise CheckFailure(
            f"`{name}` is not a function (got {type(fn).__name__}). Did you run its cell?")
    elsewhere = isinstance(fn, RunsElsewhere)
    if elsewhere:  # the weights it could edit are the kernel's, guarded there
        model.reset_hooks()
        reset_global_state()
    else:
        guard_model(model)
    try:
        result = fn(model, *args, **kwargs)
    except NotImplementedError:
        model.reset_hooks()
        raise CheckFailure(
            f"`{name}` is not implemented yet: replace `raise NotImplementedError()` with your code."
        ) from None
    except CheckFailure:
        raise
    except Exception as exc:
        model.reset_hooks()
        reset_global_state()
        raise CheckFailure(
            f"`{name}` raised {type(exc).__name__}: {exc}{_learner_frame(exc)}") from exc
    finally:
        reset_global_state()
    leaked = hooked_names(model)
    if leaked:
        model.reset_hooks()
        raise CheckFailure(
            f"`{name}` left hooks registered on the model ({', '.join(leaked[:3])}). They would "
            "change every later run. Use `model.run_with_hooks(...)` (it removes its hooks when "
            "it returns) or `with model.hooks(...):` instead of `model.add_hook`. "
            "(They have been removed now.)"
        )
    edited = [] if elsewhere else _pristine(model).changed(model)
    if edited:
        _pristine(model).restore(model)
        raise CheckFailure(
            f"`{name}` changed the model's weights in place ({', '.join(edited[:3])}"
            f"{', ...' if len(edited) > 3 else ''}). Every later run would use the edited model. "
            "Intervene on activations with hooks; never assign into parameters. "
            "(The original weights have been restored.)"
        )
    return result


# --------------------------------------------------------------------------------------------
# Results: types and shapes
# --------------------------------------------------------------------------------------------


def as_tensor(result, name: str, shape: tuple[int, ...], what: str) -> Tensor:
    """``result`` as a detached float32 tensor of ``shape``, or a failure that says what is off."""
    if result is None:
        raise CheckFailure(f"`{name}` returned None; it should return the {what}. "
                           "Did you forget a `return`?")
    if isinstance(result, tuple) and result and isinstance(result[0], Tensor):
        raise CheckFailure(f"`{name}` returned a tuple; return only the {what} tensor.")
    if not isinstance(result, Tensor):
        raise CheckFailure(
            f"`{name}` should return a torch.Tensor ({what}), got {type(result).__name__}.")
    if tuple(result.shape) != shape:
        hint = ""
        if result.numel() == math.prod(shape):
            hint = " Same number of elements: a leftover batch dimension? (`[0]` or `.squeeze(0)`)"
        raise CheckFailure(
            f"`{name}` returned shape {tuple(result.shape)}; expected {shape} ({what}).{hint}")
    if result.is_complex() or not (result.is_floating_point()):
        raise CheckFailure(f"`{name}` returned a {result.dtype} tensor; expected floating point "
                           f"numbers ({what}).")
    if not torch.isfinite(result).all():
        raise CheckFailure(f"`{name}` returned NaN or infinite values ({what}); e.g. a division "
                           "by a zero norm or count.")
    return result.detach().float()


def as_number(result, name: str, what: str) -> float:
    """``result`` as a Python float (a number, or a one-element tensor)."""
    if isinstance(result, Tensor) and result.numel() == 1:
        result = result.item()
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise CheckFailure(
            f"`{name}` should return one number ({what}), got {type(result).__name__}.")
    if not math.isfinite(result):
        raise CheckFailure(f"`{name}` returned {result} ({what}).")
    return float(result)


# --------------------------------------------------------------------------------------------
# Comparing, and naming the mistake
# --------------------------------------------------------------------------------------------

Variants = Callable[[], Mapping[str, Tensor]]


def diagnose(got: Tensor, variants: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
             atol: float, rtol: float = 1e-4) -> str | None:
    """The description of the first known mistake whose output matches ``got``, if any.

    ``variants`` may be a generator of ``(description, value)`` pairs, so that the costly ones are
    only computed when the cheap ones did not match.
    """
    items = variants.items() if isinstance(variants, Mapping) else variants
    for description, value in items:
        value = torch.as_tensor(value).float()
        if value.shape == got.shape and torch.allclose(got, value, atol=atol, rtol=rtol):
            return description
    return None


def scale_factor(got: Tensor, expected: Tensor, rel_tol: float = 1e-3) -> float | None:
    """``k`` if ``got`` is (up to ``rel_tol``) ``k`` times ``expected`` with ``k`` != 1, else None."""
    e, g = expected.double().flatten(), got.double().flatten()
    denom = (e * e).sum()
    if denom == 0 or g.norm() == 0:
        return None
    k = ((g * e).sum() / denom).item()
    residual = (g - k * e).norm().item()
    if residual > rel_tol * max(g.norm().item(), abs(k) * e.norm().item()) or abs(k - 1) < 1e-3:
        return None
    return k


def describe_scale(k: float, causes: Mapping[float, str] = ()) -> str:
    """``"yours is k× the reference"`` plus the likely cause (``causes`` first, then the usual)."""
    usual = {100.0: "an accuracy or probability in percent instead of a fraction between 0 and 1",
             0.01: "dividing by 100 once too often",
             -1.0: "the sign is flipped: a subtraction the wrong way round",
             2.0: "the vector was added (or counted) twice"}
    text = f"Yours is {k:.4g}x the reference (same direction, different size)."
    for table in (dict(causes), usual):
        for factor, cause in table.items():
            if math.isclose(k, factor, rel_tol=2e-3):
                return f"{text} Likely cause: {cause}."
    return (f"{text} Look for a sum where a mean belongs (or the reverse), a division by the wrong "
            "count, or a normalisation the exercise does not ask for.")


def compare(got: Tensor, expected: Tensor, variants: Variants, name: str, what: str, atol: float,
            context: str, scale_causes: Mapping[float, str] | Callable[[], Mapping[float, str]] = (),
            hint: str = "", rtol: float = 1e-4, unexplained: str | None = None) -> float:
    """Max |got - expected|; on a mismatch, name the mistake (computed only then) and raise.

    The order of diagnosis: a known mistake that reproduces ``got`` exactly; a constant multiple of
    the reference (``"yours is k× the reference"``, with the likely cause); a result that is zero;
    otherwise ``unexplained`` if given (e.g. the stale-state message for a second call with other
    inputs after a first call that matched), else the norms and ``hint``.
    """
    diff = (got - expected).abs().max().item()
    if diff <= atol + rtol * expected.abs().max().item():
        return diff
    head = f"`{name}` gives the wrong {what} ({context}): max |yours - reference| = {diff:.3g}."
    mistake = diagnose(got, variants(), atol, rtol)
    if mistake:
        raise CheckFailure(f"{head}\nYour output matches a common mistake: {mistake}")
    k = scale_factor(got, expected)
    if k is not None:
        causes = scale_causes() if callable(scale_causes) else scale_causes
        raise CheckFailure(f"{head}\n{describe_scale(k, causes)}")
    if got.abs().max().item() <= atol:
        raise CheckFailure(f"{head}\nYours is all zeros; the reference has norm "
                           f"{expected.norm():.4g}. Did you return a fresh tensor you never filled, "
                           "or subtract a thing from itself?")
    if unexplained:
        raise CheckFailure(f"{head}\n{unexplained}")
    raise CheckFailure(
        f"{head}\nNorm of yours {got.norm():.4g}, of the reference {expected.norm():.4g}; "
        f"cosine similarity {cosine(got, expected):.3f}. {hint}".rstrip())


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two tensors, flattened (0 if either is zero)."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return 0.0 if denom == 0 else float(a @ b / denom)


def repeat_consistent(first: Tensor, second: Tensor, name: str, atol: float) -> None:
    """Two calls with the *same* inputs must agree (nothing edited in place between them)."""
    diff = (first - second).abs().max().item()
    if diff > atol:
        raise CheckFailure(
            f"Calling `{name}` twice with the same inputs gave different results "
            f"(max |difference| = {diff:.3g}). Something is modified in place and leaks into "
            "the next run: e.g. a cached activation you edit, or a tensor shared between calls. "
            "Clone before editing, or edit only the activation passed to your hook."
        )


def stale_state_message(name: str, first_context: str, second_context: str) -> str:
    """The failure when the first call matched but a second call with other inputs did not, and
    no known mistake explains it: state kept between calls is the likely cause."""
    return (
        f"`{name}` matched the reference on the first inputs ({first_context}) but not on "
        f"different ones ({second_context}). Most likely something from the first call survives "
        "into the next: a global variable, a cached activation or a default argument that you "
        "reuse. Compute everything from the arguments of each call."
    )


def padding_message(name: str, lengths: list[int]) -> str:
    """The failure when a batched version read the wrong position of right-padded rows."""
    return (
        f"`{name}` reads the wrong position for prompts of different lengths (token lengths "
        f"{lengths}). In a batch, shorter prompts are padded on the right, so `[:, -1]` is a "
        "padding token for all but the longest prompt. Run prompts one at a time, or index each "
        "row at its own last real token (e.g. `attention_mask.sum(1) - 1`)."
    )


# --------------------------------------------------------------------------------------------
# Answer tokens: the usual ways to get them wrong
# --------------------------------------------------------------------------------------------


def answer_id_variants(model, answers: list[str]) -> dict[str, list[int]]:
    """Answer token ids a learner may compute by mistake, each with what went wrong.

    Only variants that differ from the correct ids (first token of ``" " + answer`` without
    special tokens) are returned.
    """
    tok = model.tokenizer
    right = [tok.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    candidates = {
        "the answer token was encoded without its leading space: after `A:` the model writes "
        "`' cold'`, not `'cold'`; use `' ' + answer`.":
            [tok.encode(a, add_special_tokens=False)[0] for a in answers],
        "the answer ids include a special token: `tokenizer.encode(...)` adds BOS "
        "(`<|im_start|>` here) at index 0 by default, so every answer id was the BOS token. Use "
        "`tokenizer.encode(' ' + answer, add_special_tokens=False)[0]`.":
            [tok.encode(" " + a)[0] for a in answers],
        "the answer id is the LAST token of the answer, not the first; score the first token.":
            [tok.encode(" " + a, add_special_tokens=False)[-1] for a in answers],
    }
    return {d: ids for d, ids in candidates.items() if ids != right}
