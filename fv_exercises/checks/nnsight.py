"""Check cells of notebook 07 (nnsight): ``nnsight_task_vector_logits`` and
``nnsight_generate_with_vector``.

Each check receives **both** models: ``check_x(fn, model, nn_model)`` with ``model`` the
TransformerLens bridge (``load_model()``), on which the TransformerLens reference runs, and
``nn_model`` the separate nnsight copy (``load_nnsight_model()``), on which the learner's function
runs. The two must tokenize alike; :func:`fv_exercises.nnsight_model.matching_bos` makes the bridge
follow nnsight's tokenizer while checking (a no-op for the embedded model).

nnsight-specific mistakes are named: a variable used after the ``with`` block without ``.save()``,
an edit made after the block ended, ``.output[0]`` copied from code written for older
transformers, modules used out of order, a BOS token, a generation that stops early or puts the
vector in the wrong forward passes. The shared machinery is in :mod:`fv_exercises.checks.core`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from fv_exercises.checks.core import (
    Case,
    CheckFailure,
    _fingerprint,
    _learner_frame,
    as_tensor,
    cached_per_model,
    compare,
    guard_model,
    quiet,
    repeat_consistent,
    RunsElsewhere,
    reset_global_state,
    stale_state_message,
)
from fv_exercises.checks.task_vectors import add_state_variant
from fv_exercises.evaluation import resid_post_name as _post
from fv_exercises.nnsight_model import hf_module, matching_bos, tl_generate_with_vector

# --------------------------------------------------------------------------------------------
# Guarding the nnsight copy, calling the learner
# --------------------------------------------------------------------------------------------


class _NNPristine:
    """Fingerprint of the nnsight copy's weights as first seen; restored from its safetensors file
    (or from a copy kept for models without one, e.g. tiny test models)."""

    def __init__(self, hf: torch.nn.Module):
        self.fingerprint = _fingerprint(hf)
        self.source = getattr(hf, "fv_weights_file", None)
        self.copy = None if self.source else {k: v.detach().clone() for k, v in hf.state_dict().items()}

    def changed(self, hf: torch.nn.Module) -> list[str]:
        now = _fingerprint(hf)
        bad = (now - self.fingerprint).abs().amax(-1) > 1e-6 * (1 + self.fingerprint.abs().amax(-1))
        names = [n for n, _ in hf.named_parameters()]
        return [names[i] for i in bad.nonzero().flatten().tolist()]

    def restore(self, hf: torch.nn.Module) -> None:
        if self.copy is not None:
            saved = self.copy
        else:
            from safetensors.torch import load_file

            saved = load_file(str(self.source))
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name in saved:
                    p.copy_(saved[name].to(p.dtype))


_NN_PRISTINE: "weakref.WeakKeyDictionary[torch.nn.Module, _NNPristine]" = weakref.WeakKeyDictionary()


def _nn_pristine(nn_model) -> _NNPristine:
    hf = hf_module(nn_model)
    if hf not in _NN_PRISTINE:
        _NN_PRISTINE[hf] = _NNPristine(hf)
    return _NN_PRISTINE[hf]


def guard_nnsight(nn_model) -> None:
    """Before a check uses ``nn_model``: no stored edits, original weights, float32 default."""
    if getattr(nn_model, "_edits", None):
        nn_model.clear_edits()
    pristine = _nn_pristine(nn_model)
    if pristine.changed(hf_module(nn_model)):
        pristine.restore(hf_module(nn_model))
    reset_global_state()


def _nnsight_hint(exc: BaseException) -> str:
    """What an nnsight error usually means, in the learner's terms ("" if nothing specific)."""
    text = str(exc)
    if isinstance(exc, NameError):  # UnboundLocalError is a NameError
        return ("\nA variable assigned inside a `with nn_model.trace(...)` block exists after the "
                "block only if you `.save()` it, e.g. `h = layers[l].output[:, -1].save()`. In a "
                "generation, an open-ended `tracer.all()` / `tracer.iter[:]` loop also ends the "
                "block early (at the step the model never runs), so nothing after the loop runs: "
                "loop over `tracer.iter[:n_tokens]`.")
    if type(exc).__name__ == "OutOfOrderError":
        return ("\nInside one trace, modules must be used in the order the model runs them: you "
                "asked for a layer after the model had already run past it (a later layer first, "
                "or a value from a *different* prompt's run). Read the ICL state in one trace and "
                "add it in a second trace.")
    if isinstance(exc, (RuntimeError, IndexError)) and ("size of tensor" in text or "shape" in text
                                                         or "index" in text):
        return ("\nIn transformers 5 a decoder layer's `.output` is the hidden-state tensor itself, "
                "`[batch, seq, d_model]` (older code wrote `.output[0]` for the first item of a "
                "tuple). Today `.output[0]` is the first prompt's `[seq, d_model]`, so "
                "`.output[0][:, -1]` is one feature at every position, not the last position.")
    return ""


def call_nnsight_learner(fn: Callable, name: str, nn_model, *args):
    """Call the learner's ``fn(nn_model, *args)``; turn every way it can go wrong into a clear failure.

    Repairs and reports what it leaves behind: edits stored with ``nn_model.edit(inplace=True)``
    (they would apply to every later trace) and weights edited in place.
    """
    if not callable(fn):
        raise CheckFailure(f"`{name}` is not a function (got {type(fn).__name__}). Did you run its cell?")
    elsewhere = isinstance(fn, RunsElsewhere)  # the kernel guards its own model
    if elsewhere:
        if getattr(nn_model, "_edits", None):
            nn_model.clear_edits()
        reset_global_state()
    else:
        guard_nnsight(nn_model)
    try:
        result = fn(nn_model, *args)
    except NotImplementedError:
        raise CheckFailure(
            f"`{name}` is not implemented yet: replace `raise NotImplementedError()` with your code."
        ) from None
    except CheckFailure:
        raise
    except Exception as exc:
        raise CheckFailure(f"`{name}` raised {type(exc).__name__}: {exc}{_learner_frame(exc)}"
                           f"{_nnsight_hint(exc)}") from exc
    finally:
        reset_global_state()
    if getattr(nn_model, "_edits", None):
        nn_model.clear_edits()
        raise CheckFailure(
            f"`{name}` stored a permanent edit on the model (`nn_model.edit(inplace=True)`): it would "
            "apply to every later trace. Intervene inside `with nn_model.trace(...)` instead. "
            "(The edit has been cleared.)")
    pristine = _nn_pristine(nn_model)
    edited = [] if elsewhere else pristine.changed(hf_module(nn_model))
    if edited:
        pristine.restore(hf_module(nn_model))
        raise CheckFailure(
            f"`{name}` changed the model's weights in place ({', '.join(edited[:3])}"
            f"{', ...' if len(edited) > 3 else ''}). Every later run would use the edited model. "
            "Edit activations inside a trace; never assign into parameters. "
            "(The original weights have been restored.)")
    return result


def _cached(model, key: tuple, compute: Callable):
    """``compute()`` once per bridge, ``key`` and BOS setting (the bridge is never edited by the
    learner's nnsight code, and guard_model repairs anything an earlier cell did)."""
    return cached_per_model(model, key + (bool(model.cfg.default_prepend_bos),), compute)


def _logits_tensor(result, name: str, shape: tuple[int, ...]) -> Tensor:
    """``result`` as float32 logits of ``shape``, naming the nnsight-specific ways to get it wrong."""
    if hasattr(result, "logits") and not isinstance(result, Tensor):
        raise CheckFailure(f"`{name}` returned the model's whole output object "
                           f"({type(result).__name__}); return its logits: "
                           "`nn_model.output.logits.save()`.")
    if isinstance(result, Tensor) and result.dim() == 3 and result.shape[1] == shape[1] + 1:
        raise CheckFailure(
            f"`{name}` returned logits for {result.shape[1]} positions; the zero-shot prompt has "
            f"{shape[1]} tokens. One token too many: a BOS token was prepended? The course "
            "tokenizes without BOS, as `nn_model.trace(prompt)` does by default.")
    return as_tensor(result, name, shape, "logits [1, seq_len, d_vocab]")


# --------------------------------------------------------------------------------------------
# nnsight_task_vector_logits
# --------------------------------------------------------------------------------------------

# (visible, second call with other inputs); hidden cases are scored by nbgrader only.
_TV_CASES = (Case("antonym", seed=2, layer_fraction=0.65), Case("present_past", seed=4, layer_fraction=0.4))
_TV_HIDDEN = (Case("country_capital", seed=6, layer_fraction=0.55), Case("capitalize", seed=1, layer_fraction=0.8))


def _tokens(model, prompt: str, bos: bool | None = None) -> Tensor:
    return model.to_tokens(prompt, prepend_bos=bos) if bos is not None else model.to_tokens(prompt)


def _tl_add_state(model, icl: str, zero: str, read: str, write: str, read_pos: int = -1,
                  every_position: bool = False, scale: float = 1.0, icl_bos: bool | None = None,
                  from_zero: bool = False, replace: bool = False) -> Tensor:
    """TransformerLens: logits of ``zero`` with a state read at hook ``read`` added at ``write``
    (notebook 01's variant, with this notebook's tokenization and BOS choices)."""
    source = _tokens(model, zero) if from_zero else _tokens(model, icl, icl_bos)
    return add_state_variant(model, source, _tokens(model, zero), read, write, read_pos,
                             every_position, scale, replace=replace)


def _tv_variants(model, icl: str, zero: str, layer: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``nnsight_task_vector_logits`` and their logits (lazy, cheapest first)."""
    post = _post(layer)
    yield ("no vector was added at all (the output equals the plain zero-shot run). The `+=` must "
           "happen INSIDE the second `with nn_model.trace(...)` block, while the forward pass runs: "
           "an edit after the block ends changes a copy of a finished run. (Editing a `.clone()` "
           "that you never assign back to `.output` does nothing either.)", model(_tokens(model, zero)))
    yield ("h was taken from the FIRST position of the ICL prompt (index 0); the task is encoded at "
           "the final position (index -1).", _tl_add_state(model, icl, zero, post, post, read_pos=0))
    yield ("h was added at EVERY position of the zero-shot prompt; add it at the final position "
           "only: `layers[layer].output[:, -1] += h`.",
           _tl_add_state(model, icl, zero, post, post, every_position=True))
    yield "h was added twice (or doubled).", _tl_add_state(model, icl, zero, post, post, scale=2.0)
    yield ("you REPLACED the zero-shot prompt's final state with h (`output[:, -1] = h`); ADD it "
           "to the state that is there: `layers[layer].output[:, -1] += h`.",
           _tl_add_state(model, icl, zero, post, post, replace=True))
    yield ("you added the zero-shot prompt's OWN final state (read in the run you edit), not the "
           "ICL prompt's: read `h` in a trace of `icl_prompt`, then add it in a trace of "
           "`zero_shot_prompt`.", _tl_add_state(model, icl, zero, post, post, from_zero=True))
    yield ("h was read from a run of the ICL prompt with a BOS token prepended; the course tokenizes "
           "without BOS (as `nn_model.trace(prompt)` does): pass the prompt string as it is.",
           _tl_add_state(model, icl, zero, post, post, icl_bos=not model.cfg.default_prepend_bos))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            hint = (f" (or from `layers[{layer}].input`, the residual stream BEFORE layer {layer})"
                    if other == layer - 1 else "")
            yield (f"h was read from layer {other}{hint}, not from `layers[{layer}].output` "
                   "(off by one?).", _tl_add_state(model, icl, zero, _post(other), post))
            yield (f"h was added at layer {other}, not at `layers[{layer}].output` (off by one?).",
                   _tl_add_state(model, icl, zero, post, _post(other)))
    mlp = f"blocks.{layer}.hook_mlp_out"
    if mlp in model.hook_dict:
        yield (f"h was read from `layers[{layer}].mlp.output` (the MLP's contribution), not from "
               f"`layers[{layer}].output` (the residual stream after the whole layer).",
               _tl_add_state(model, icl, zero, mlp, post))


def _tv_inputs(model, case: Case) -> tuple[str, str, int]:
    ds = case.dataset()
    return ds.prompts[0], ds.zero_shot_prompts[0], case.layer(model)


def check_nnsight_task_vector_logits(fn: Callable, model, nn_model, hidden: bool = False) -> None:
    """Check ``nnsight_task_vector_logits(nn_model, icl_prompt, zero_shot_prompt, layer) -> logits``.

    Args:
        fn: the learner's function; it receives ``nn_model``.
        model: the TransformerLens bridge; notebook 01's ``find_task_vector`` runs on it as the
            reference (same weights, loaded separately).
        nn_model: the nnsight model from ``load_nnsight_model()``.
        hidden: the cases nbgrader scores.

    Two cases: the first is compared and called twice (nothing may leak between runs), the second
    has another prompt and layer (a value kept from the first call shows there).
    """
    from fv_exercises.reference.task_vectors import find_task_vector as reference

    name = "nnsight_task_vector_logits"
    cases = _TV_HIDDEN if hidden else _TV_CASES
    with quiet(), matching_bos(model, nn_model):
        first: str | None = None
        for i, case in enumerate(cases):
            icl, zero, layer = _tv_inputs(model, case)
            guard_model(model)
            expected = _cached(model, ("tv", case), lambda: reference(model, icl, zero, layer).float())
            shape = tuple(expected.shape)
            got = _logits_tensor(call_nnsight_learner(fn, name, nn_model, icl, zero, layer), name, shape)
            context = f"task {case.task}, layer {layer}"
            compare(got, expected, lambda: _tv_variants(model, icl, zero, layer), name, "logits",
                    atol=1e-3, context=context,
                    unexplained=stale_state_message(name, first, context) if first else None)
            if i == 0:
                again = _logits_tensor(call_nnsight_learner(fn, name, nn_model, icl, zero, layer), name, shape)
                repeat_consistent(got, again, name, atol=1e-3)
                first = context
    if not hidden:
        print(f"nnsight_task_vector_logits matches TransformerLens's find_task_vector (task "
              f"{cases[0].task}, layer {cases[0].layer(model)}, and a second prompt at layer "
              f"{cases[1].layer(model)}).")


# --------------------------------------------------------------------------------------------
# nnsight_generate_with_vector
# --------------------------------------------------------------------------------------------

# (case, n_tokens): different lengths, so a hard-coded count shows. Chosen so that on the embedded
# model every known mistake below gives tokens different from the reference and from each other
# (tests/test_checks_07.py keeps it so): comparing tokens is coarser than comparing logits.
_GEN_CASES = ((Case("antonym", seed=5, layer_fraction=0.5), 6),
              (Case("country_capital", seed=2, layer_fraction=0.5), 8))
_GEN_HIDDEN = ((Case("present_past", seed=5, layer_fraction=0.6), 6),
               (Case("singular_plural", seed=1, layer_fraction=0.6), 8))


@dataclass(frozen=True)
class ChatCase(Case):
    """A chat question the model answers in a word or two, then writes the end-of-sequence token
    well before ``n_tokens``: generation must go on past it (``eos_token_id=None``), and a version
    that forces ``n_tokens`` with ``min_new_tokens`` (Hugging Face then bans that token) writes
    something else there. The vector is the case's task vector times ``scale``."""

    question: str = ""
    scale: float = 1.0

    @property
    def prompt(self) -> str:
        return _CHAT.format(self.question)


_CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# Checked after the cases above (visible, hidden): the reference writes the end-of-sequence token
# at new token 2 (visible: "Yes.") or 4 (hidden) and goes on; the top two logits are at least
# 0.25 apart at every step, so the nnsight and TransformerLens copies agree token for token.
_GEN_EOS = ((ChatCase("antonym", seed=5, layer_fraction=0.5,
                      question="Reply with one word: yes or no?", scale=0.25), 5),)
_GEN_EOS_HIDDEN = ((ChatCase("present_past", seed=5, layer_fraction=0.6,
                             question="Is water wet? Answer yes or no.", scale=0.25), 6),)


def _gen_inputs(model, case: Case) -> tuple[str, Tensor, int]:
    """A zero-shot prompt (a :class:`ChatCase`: its chat prompt), and the task vector of one ICL
    prompt (its final state minus the zero-shot prompt's, at the case's layer; a ChatCase's times
    its scale), read with TransformerLens."""
    ds = case.dataset()
    layer = case.layer(model)
    post = _post(layer)
    states = [model.run_with_cache(p, names_filter=lambda n: n == post)[1][post][0, -1]
              for p in (ds.prompts[0], ds.zero_shot_prompts[0])]
    if isinstance(case, ChatCase):
        return case.prompt, (states[0] - states[1]) * case.scale, layer
    return ds.zero_shot_prompts[0], states[0] - states[1], layer


def _tl_generate_banning(model, prompt: str, vector: Tensor, layer: int, n_tokens: int,
                         banned: int) -> Tensor:
    """The reference's KV-cached greedy generation with token ``banned`` never picked (what
    ``min_new_tokens=n_tokens`` makes Hugging Face do with the end-of-sequence token)."""
    def add(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        resid[:, -1] += vector
        return resid

    step, cache, new = model.to_tokens(prompt), None, []
    for _ in range(n_tokens):
        logits, cache = model.run_with_hooks(step, fwd_hooks=[(_post(layer), add)],
                                             past_key_values=cache, return_type="logits_and_cache")
        last = logits[0, -1].clone()
        last[banned] = -float("inf")
        new.append(int(last.argmax()))
        step = torch.tensor([[new[-1]]], device=logits.device)
    return torch.tensor(new)


def _tl_generate_steps(model, prompt: str, vector: Tensor, layer: int, n_tokens: int,
                       steps: Callable[[int], bool]) -> Tensor:
    """KV-cached greedy generation adding ``vector`` at the last position only in the forward
    passes ``k`` (0 = the prompt's) for which ``steps(k)`` is true."""
    tokens = model.to_tokens(prompt)
    calls = {"k": 0}

    def add(resid: Tensor, hook=None) -> Tensor:
        k = calls["k"]
        calls["k"] += 1
        if not steps(k):
            return resid
        resid = resid.clone()
        resid[:, -1] += vector
        return resid

    with model.hooks(fwd_hooks=[(_post(layer), add)]):
        out = model.generate(tokens, max_new_tokens=n_tokens, do_sample=False, stop_at_eos=False,
                             use_past_kv_cache=True, verbose=False)
    return out[0, tokens.shape[1]:]


def _gen_variants(model, prompt: str, vector: Tensor, layer: int, n: int) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes of ``nnsight_generate_with_vector`` and the tokens they give (lazy)."""
    yield ("no vector was added at all (the tokens are the plain greedy continuation). Is the `+=` "
           "inside the `for step in tracer.iter[:n_tokens]:` loop, inside the `with` block?",
           tl_generate_with_vector(model, prompt, None, layer, n))
    yield ("the vector was added only in the FIRST forward pass (the prompt's). Without a "
           "`for step in tracer.iter[:n_tokens]:` loop, an intervention applies to the first "
           "forward pass only; put the `+=` inside that loop so every new token gets it.",
           _tl_generate_steps(model, prompt, vector, layer, n, lambda k: k == 0))
    yield ("the vector was added from the SECOND forward pass on: step 0 (the pass over the "
           "prompt, which produces the first new token) must get it too: `tracer.iter[:n_tokens]` "
           "starts at 0.", _tl_generate_steps(model, prompt, vector, layer, n, lambda k: k > 0))
    yield ("the vector was added at EVERY position of each forward pass (in the first pass: every "
           "prompt token); add it at the last position only: `output[:, -1] += vector`.",
           tl_generate_with_vector(model, prompt, vector, layer, n, every_position=True))
    yield ("you re-ran the whole sequence at each step (no key/value cache) and added the vector "
           "at its last position only, as the seed's loop does: then earlier new tokens lose the "
           "vector. This exercise asks for `nn_model.generate(...)`, whose later passes see only "
           "the newest token (the others are cached, with the vector they got).",
           tl_generate_with_vector(model, prompt, vector, layer, n, use_cache=False))
    yield ("the vector was added twice (or doubled).",
           tl_generate_with_vector(model, prompt, 2 * vector, layer, n))
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            yield (f"the vector was added at layer {other}, not at `layers[{layer}].output` (off by one?).",
                   tl_generate_with_vector(model, prompt, vector, other, n))


def _index(tokens: Tensor, token: int | None) -> int | None:
    hits = (tokens == token).nonzero() if token is not None else []
    return int(hits[0]) if len(hits) else None


def _eos_variants(model, prompt: str, vector: Tensor, layer: int, n: int,
                  eos: int | None) -> Iterator[tuple[str, Tensor]]:
    """Known mistakes on a case whose reference writes the end-of-sequence token and goes on."""
    if eos is not None:
        yield ("the end-of-sequence token was never generated where the model writes it: "
               "`min_new_tokens=n_tokens` (or `min_length`) makes Hugging Face BAN that token "
               "until n_tokens are written, which changes the text. To get exactly n_tokens "
               "without stopping early, pass `eos_token_id=None` instead (the model may then "
               "write the end-of-sequence token and go on).",
               _tl_generate_banning(model, prompt, vector, layer, n, eos))
    yield from _gen_variants(model, prompt, vector, layer, n)


def _as_ids(result, name: str, n: int, prompt_len: int, eos: int | None, tokenizer) -> Tensor:
    """``result`` as a LongTensor ``[n]`` of token ids, or a failure that says what is off."""
    if result is None:
        raise CheckFailure(f"`{name}` returned None; it should return the {n} new token ids. "
                           "Did you forget a `return`?")
    if isinstance(result, (list, tuple)) and all(isinstance(x, int) for x in result):
        raise CheckFailure(f"`{name}` returned a Python {type(result).__name__} of {len(result)} "
                           "token ids; return a LongTensor of shape `[n_tokens]` (e.g. "
                           "`ids[0, -n_tokens:]`, without `.tolist()`): the next cells use tensor "
                           "methods on it (`steered.tolist()`, `steered[:upto]`).")
    if not isinstance(result, Tensor):
        raise CheckFailure(f"`{name}` should return a tensor of token ids, got {type(result).__name__}.")
    if result.is_floating_point():
        raise CheckFailure(f"`{name}` returned a {result.dtype} tensor of shape {tuple(result.shape)}; "
                           "token ids are integers. (Logits? `tracer.result` holds the ids.)")
    if result.dim() == 2 and result.shape[0] == 1:
        raise CheckFailure(f"`{name}` returned shape {tuple(result.shape)}; expected ({n},): the new "
                           "token ids of the one prompt, without the batch dimension (`ids[0, ...]`).")
    if result.dim() != 1:
        raise CheckFailure(f"`{name}` returned shape {tuple(result.shape)}; expected ({n},).")
    if len(result) == prompt_len + n:
        raise CheckFailure(f"`{name}` returned {len(result)} ids: the prompt ({prompt_len} tokens) "
                           f"followed by the {n} new ones. `tracer.result` holds both; return only "
                           "the new tokens (`ids[0, -n_tokens:]`).")
    if len(result) < n and eos is not None and len(result) > 0 and int(result[-1]) == eos:
        raise CheckFailure(f"`{name}` returned {len(result)} tokens, ending with the end-of-sequence "
                           f"token {tokenizer.decode([eos])!r}; expected exactly {n}. `generate` "
                           "stops at that token unless you pass `eos_token_id=None`.")
    if len(result) != n:
        raise CheckFailure(f"`{name}` returned {len(result)} token ids; expected {n} (`n_tokens`). "
                           "Pass `max_new_tokens=n_tokens` and loop over `tracer.iter[:n_tokens]`.")
    return result.long().cpu()


def _compare_ids(got: Tensor, expected: Tensor, variants: Callable[[], Iterator[tuple[str, Tensor]]],
                 name: str, context: str, tokenizer, unexplained: str | None = None) -> None:
    if torch.equal(got, expected):
        return
    k = int((got != expected).nonzero()[0])
    head = (f"`{name}` generates different tokens ({context}): new token {k} is "
            f"{tokenizer.decode([int(got[k])])!r}, the reference's is "
            f"{tokenizer.decode([int(expected[k])])!r}.\n  yours:     {tokenizer.decode(got)!r}"
            f"\n  reference: {tokenizer.decode(expected)!r}")
    for description, value in variants():
        if torch.equal(got, value.long().cpu()):
            raise CheckFailure(f"{head}\nYour output matches a common mistake: {description}")
    if unexplained:
        raise CheckFailure(f"{head}\n{unexplained}")
    raise CheckFailure(f"{head}\nGenerate greedily (`do_sample=False`) and add the vector at the "
                       "last position of `layers[layer].output` in every forward pass "
                       "(`for step in tracer.iter[:n_tokens]:`).")


def check_nnsight_generate_with_vector(fn: Callable, model, nn_model, hidden: bool = False) -> None:
    """Check ``nnsight_generate_with_vector(nn_model, prompt, vector, layer, n_tokens) -> ids [n_tokens]``.

    The reference is TransformerLens's key/value-cached greedy generation on ``model`` with a hook
    adding ``vector`` at the last position of ``blocks.{layer}.hook_resid_post`` in every forward
    pass (:func:`fv_exercises.nnsight_model.tl_generate_with_vector`). Two cases with different
    ``n_tokens``; the first is called twice (sampling or state kept between calls shows); then a
    chat prompt whose reply ends with the end-of-sequence token before ``n_tokens`` (generation
    must go on past it, not ban it).
    """
    name = "nnsight_generate_with_vector"
    cases = _GEN_HIDDEN if hidden else _GEN_CASES
    eos_cases = _GEN_EOS_HIDDEN if hidden else _GEN_EOS
    tokenizer = nn_model.tokenizer
    eos = getattr(tokenizer, "eos_token_id", None)
    with quiet(), matching_bos(model, nn_model):
        first: str | None = None
        for i, (case, n) in enumerate(cases + eos_cases):
            guard_model(model)
            prompt, vector, layer = _cached(model, ("gen inputs", case), lambda: _gen_inputs(model, case))
            expected = _cached(model, ("gen", case, n), lambda: tl_generate_with_vector(
                model, prompt, vector, layer, n).long().cpu())
            prompt_len = int(model.to_tokens(prompt).shape[1])
            context = f"task {case.task}, layer {layer}, {n} tokens"
            if isinstance(case, ChatCase):
                context = (f"the chat prompt {case.question!r}, whose reply ends with the "
                           f"end-of-sequence token at new token {_index(expected, eos)}; {context}")
                variants = lambda: _eos_variants(model, prompt, vector, layer, n, eos)  # noqa: E731
            else:
                variants = lambda: _gen_variants(model, prompt, vector, layer, n)  # noqa: E731

            def run() -> Tensor:
                out = call_nnsight_learner(fn, name, nn_model, prompt, vector.clone(), layer, n)
                return _as_ids(out, name, n, prompt_len, eos, tokenizer)

            got = run()
            _compare_ids(got, expected, variants, name, context, tokenizer,
                         unexplained=stale_state_message(name, first, context) if first else None)
            if i == 0:
                again = run()
                if not torch.equal(got, again):
                    raise CheckFailure(
                        f"Calling `{name}` twice with the same inputs gave different tokens "
                        f"({tokenizer.decode(got)!r}, then {tokenizer.decode(again)!r}). Sampling? "
                        "Pass `do_sample=False` (greedy). Or something leaks between calls.")
                first = context
                shown = got
    if not hidden:
        print(f"nnsight_generate_with_vector matches TransformerLens's cached generation "
              f"(tasks {cases[0][0].task} and {cases[1][0].task}, {cases[0][1]} and {cases[1][1]} "
              f"tokens: {tokenizer.decode(shown)!r}; and a chat reply that goes on past the "
              "end-of-sequence token).")
