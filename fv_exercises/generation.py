"""Generating several tokens with a vector added to the residual stream (notebook 06).

**Where the vector goes.** A hook that adds a vector at ``[:, -1]`` of ``blocks.{l}.hook_resid_post``
means different things depending on how the tokens are run:

- with a key/value cache, each forward pass computes only the *new* position(s): the prompt once
  (its last position gets the vector), then one generated token per step (its position gets the
  vector). Every position from the prompt's last onward gets the vector **once, when it is
  computed**, and keeps it: later steps read its keys and values from the cache.
- re-running the whole sequence each step (the seed's loop) recomputes every position; the hook
  adds the vector only at the *current* last position, so positions that got it in an earlier
  step lose it when they are recomputed.

The course's intervention (``where="each_once"``) is the first: it is what a cached decoder
does, it costs one new position per step, and an uncached loop reproduces it exactly when it
adds the vector at *every* position from the prompt's last onward (:func:`from_position`).
The seed's variant is ``where="rerun_last"`` (no cache possible: earlier positions change).

**Steering** (Turner et al., *Activation Addition*) adds a vector of several positions to the
*first* positions of the prompt (``where="prompt_start"``); generated positions are untouched,
they see the change through attention.

Everything here works on batches of prompts of the **same token length** (no padding at all);
:func:`generate` groups prompts by length. Rows stop at EOS (and optionally at a stop string);
sampling uses one ``torch.Generator`` per row, so a generation is reproducible from its seed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device
from fv_exercises.evaluation import answer_token_ids, resid_post_name
from fv_exercises.stats import Difference, accuracy, paired_difference

Where = Literal["each_once", "prompt_last", "rerun_last", "prompt_start"]
Hooks = list[tuple[str, Callable]]
# An intervention, seen from the engine: given the absolute position of the first token of the
# current forward pass, the hooks to run it with.
Intervention = Callable[[int], Hooks]


# --------------------------------------------------------------------------------------------
# Hooks: where a vector is added
# --------------------------------------------------------------------------------------------


def at_last_position(layer: int, vectors: Tensor) -> Intervention:
    """The seed's hook: add a vector at ``[:, -1]`` of whatever the forward pass computes.

    ``vectors``: ``[d_model]`` (every row) or ``[B, d_model]`` (one per row). With a cache that
    is each new position once (``each_once``); re-running the whole sequence it is only the
    current last position (``rerun_last``).
    """

    def hook(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        resid[:, -1] += vectors.to(resid.device, resid.dtype)
        return resid

    return lambda start: [(resid_post_name(layer), hook)]


def from_position(layer: int, vectors: Tensor, first: int) -> Intervention:
    """Add a vector at every absolute position ``>= first`` that the forward pass computes.

    ``vectors``: ``[d_model]`` or ``[B, d_model]``. With ``first`` = the prompt's last position
    this is ``each_once`` however the tokens are run: cached (each new position once) or uncached
    (all of them again, every step).
    """

    def make(start: int) -> Hooks:
        def hook(resid: Tensor, hook=None) -> Tensor:
            resid = resid.clone()
            v = vectors.to(resid.device, resid.dtype)
            resid[:, max(0, first - start):] += v[:, None] if v.ndim == 2 else v
            return resid

        return [(resid_post_name(layer), hook)]

    return make


def at_first_positions(layer: int, vectors: Tensor) -> Intervention:
    """Add ``vectors[..., i, :]`` at absolute position ``i < k`` (Activation Addition).

    ``vectors``: ``[k, d_model]`` (every row) or ``[B, k, d_model]`` (one per row). Passes that
    compute only later positions (generated tokens, with a cache) get no hook.
    """
    k = vectors.shape[-2]

    def make(start: int) -> Hooks:
        if start >= k:
            return []

        def hook(resid: Tensor, hook=None) -> Tensor:
            resid = resid.clone()
            n = min(k - start, resid.shape[1])
            resid[:, :n] += vectors[..., start:start + n, :].to(resid.device, resid.dtype)
            return resid

        return [(resid_post_name(layer), hook)]

    return make


def first_pass_only(intervention: Intervention) -> Intervention:
    """``intervention`` in the pass that starts at position 0 only: with a cache, the prompt."""
    return lambda start: intervention(start) if start == 0 else []


def combined(*interventions: Intervention | None) -> Intervention:
    """Several interventions in one forward pass (e.g. vectors at different layers)."""
    parts = [i for i in interventions if i is not None]
    return lambda start: [h for part in parts for h in part(start)]


# --------------------------------------------------------------------------------------------
# The engine: equal-length rows, cached or not, greedy or sampled
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Sampling with ``temperature`` among the ``top_k`` most likely tokens; one seed per row."""

    temperature: float = 1.0
    top_k: int | None = None

    def pick(self, logits: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """One token per row of ``logits`` ``[B, d_vocab]``, row ``b`` drawn with ``generators[b]``."""
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        # drawn on the CPU with the CPU generators: the same tokens on every device
        return torch.stack([torch.multinomial(p.cpu(), 1, generator=g)[0]
                            for p, g in zip(probs, generators)]).to(logits.device)


def _forward(model, tokens: Tensor, hooks: Hooks, cache=None):
    """Logits ``[B, n, d_vocab]`` of ``tokens`` ``[B, n]`` and the updated KV cache."""
    return model.run_with_hooks(tokens, fwd_hooks=hooks, past_key_values=cache,
                                return_type="logits_and_cache")


def generate_tokens(model, tokens: Tensor, max_new_tokens: int,
                    intervention: Intervention | None = None, use_cache: bool = True,
                    sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
                    stop_text: str | None = None, stop_at_eos: bool = True) -> list[list[int]]:
    """New tokens for each row of ``tokens`` (``[B, S]``, rows of equal length, no padding).

    Args:
        intervention: hooks per forward pass (see :func:`at_last_position`, ...); ``None``: none.
        use_cache: one new position per step with the KV cache, or re-run everything each step.
        sampling: ``None`` for greedy (argmax); else sample, row ``b`` with seed ``seeds[b]``.
        stop_text: a row stops once its decoded new text contains it (e.g. ``"\\n"``).
        stop_at_eos: a row stops at the EOS token, which is not returned.

    Returns:
        ``B`` lists of token ids, at most ``max_new_tokens`` each.
    """
    B = tokens.shape[0]
    eos = model.tokenizer.eos_token_id if stop_at_eos else None
    generators = None
    if sampling is not None:
        seeds = list(range(B)) if seeds is None else list(seeds)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    new: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    cache, step_input, start = None, tokens, 0
    sequence = tokens
    with torch.no_grad():
        for _ in range(max_new_tokens):
            hooks = intervention(start) if intervention else []
            if use_cache:
                logits, cache = _forward(model, step_input, hooks, cache)
            else:
                logits = model.run_with_hooks(sequence, fwd_hooks=hooks)
            last = logits[:, -1]
            picked = last.argmax(-1) if sampling is None else sampling.pick(last, generators)
            for b in range(B):
                if done[b]:
                    continue
                t = int(picked[b])
                if t == eos:
                    done[b] = True
                    continue
                new[b].append(t)
                if stop_text is not None and stop_text in model.tokenizer.decode(new[b]):
                    done[b] = True
            if all(done):
                break
            step_input = picked[:, None]
            sequence = torch.cat([sequence, step_input], dim=1)
            start = sequence.shape[1] - 1 if use_cache else 0
    return new


Additions = Mapping[int, Tensor]  # {layer: vector(s)}


def intervention_for(where: Where, additions: Additions) -> tuple[Intervention, bool]:
    """The hooks for ``where``, and whether a KV cache can run them."""
    if where == "each_once":
        return combined(*(at_last_position(l, v) for l, v in additions.items())), True
    if where == "prompt_last":
        return first_pass_only(combined(*(at_last_position(l, v) for l, v in additions.items()))), True
    if where == "rerun_last":
        return combined(*(at_last_position(l, v) for l, v in additions.items())), False
    if where == "prompt_start":
        return combined(*(at_first_positions(l, v) for l, v in additions.items())), True
    raise ValueError(f"where must be one of {Where.__args__}, not {where!r}")


def _rows(vector: Tensor, idx: list[int], per_prompt_ndim: int) -> Tensor:
    """The vectors of rows ``idx``: a shared vector as is, per-prompt vectors indexed."""
    return vector[idx] if vector.ndim == per_prompt_ndim else vector


def generate(model, prompts: Sequence[str], max_new_tokens: int, *,
             additions: Additions | None = None, where: Where = "each_once",
             sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
             stop_text: str | None = None, batch_size: int = 128, tokens: bool = False,
             first_pass_additions: Additions | None = None) -> list[str] | list[list[int]]:
    """The generated text (prompt and EOS excluded) of each prompt, with vectors added.

    Args:
        additions: ``{layer: vector}``; for ``each_once`` / ``rerun_last`` a vector is
            ``[d_model]`` (all prompts) or ``[n_prompts, d_model]`` (one per prompt); for
            ``prompt_start`` ``[k, d_model]`` or ``[n_prompts, k, d_model]``. ``None``: none.
        where: see the module docstring.
        sampling: ``None`` for greedy; else prompt ``i`` samples with seed ``seeds[i]``
            (default ``i``).
        stop_text: a generation stops once its text contains it (e.g. ``"\\n"``).
        tokens: return the new token ids instead of the text.
        first_pass_additions: more ``{layer: vector}`` added as ``prompt_last`` does (the
            prompt's final position only), with ``where="each_once"``: rows can mix the two.

    Prompts are grouped by token length and each group runs as one batch without padding, so
    many prompts (or one prompt under many conditions) cost little more than one.
    """
    additions = dict(additions or {})
    per_prompt_ndim = 3 if where == "prompt_start" else 2
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    rows = [model.to_tokens(p)[0] for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(len(r), []).append(i)
    texts: list = [None] * len(prompts)
    for length, members in groups.items():
        for s in range(0, len(members), batch_size):
            idx = members[s:s + batch_size]
            mine = {l: _rows(v, idx, per_prompt_ndim) for l, v in additions.items()}
            intervention, cached = intervention_for(where, mine)
            if first_pass_additions:
                if where != "each_once":
                    raise ValueError("first_pass_additions needs where='each_once'")
                once = {l: _rows(v, idx, 2) for l, v in first_pass_additions.items()}
                intervention = combined(intervention, intervention_for("prompt_last", once)[0])
            out = generate_tokens(model, torch.stack([rows[i] for i in idx]), max_new_tokens,
                                  intervention, use_cache=cached, sampling=sampling,
                                  seeds=[seeds[i] for i in idx], stop_text=stop_text)
            for i, toks in zip(idx, out):
                texts[i] = toks if tokens else model.tokenizer.decode(toks)
    return texts


def generate_conditions(model, prompts: Sequence[str], conditions: Mapping[str, Additions],
                        max_new_tokens: int, where: Where = "each_once",
                        prompt_last: Sequence[str] = (), **kwargs) -> dict[str, list]:
    """:func:`generate` for every prompt under every condition, all in the same batches.

    ``conditions``: ``{name: {layer: vector}}`` (``{}`` for no vector), vectors shared by all
    prompts (``[d_model]``, or ``[k, d_model]`` for ``prompt_start``). Conditions at different
    layers are fine: rows that do not use a layer get zeros there. Conditions named in
    ``prompt_last`` add their vectors at the prompt's final position only (with
    ``where="each_once"`` for the others). ``seeds`` (in ``kwargs``) are per prompt and reused in
    every condition, so conditions are compared on equal draws. Returns ``{name: [per prompt]}``.
    """
    names, n = list(conditions), len(prompts)
    shape = next((v.shape for adds in conditions.values() for v in adds.values()), None)

    def stacked(chosen: set[str]) -> dict[int, Tensor]:
        layers = sorted({l for c in chosen for l in conditions[c]})
        device = model_device(model)
        zero = torch.zeros(shape, device=device) if shape is not None else None
        return {l: torch.stack([conditions[c].get(l, zero).to(device) if c in chosen else zero
                                for c in names])
                .repeat_interleave(n, dim=0).float() for l in layers}

    once = set(prompt_last)
    seeds = kwargs.pop("seeds", None)
    seeds = list(range(n)) if seeds is None else list(seeds)
    out = generate(model, list(prompts) * len(names), max_new_tokens,
                   additions=stacked(set(names) - once), where=where, seeds=seeds * len(names),
                   first_pass_additions=stacked(once) or None, **kwargs)
    return {c: out[i * n:(i + 1) * n] for i, c in enumerate(names)}


# --------------------------------------------------------------------------------------------
# Scoring a whole generated answer
# --------------------------------------------------------------------------------------------

ANSWER_TOKENS = 8  # new tokens per zero-shot answer: the longest shipped answer needs 6


def answer_of(text: str) -> str:
    """The answer a generation gives: its first line, stripped, without a final full stop."""
    line = text.split("\n", 1)[0].strip()
    return line[:-1].rstrip() if line.endswith(".") else line


def whole_answer_correct(texts: Sequence[str], answers: Sequence[str]) -> Tensor:
    """Per prompt, is the generated answer (:func:`answer_of`) exactly the expected one?
    BoolTensor ``[n]``. ``" Panama\\n"`` for ``"Panama City"`` is wrong, although its first
    token is right."""
    return torch.tensor([answer_of(t) == a for t, a in zip(texts, answers)], dtype=torch.bool)


def first_token_correct(model, token_lists: Sequence[Sequence[int]], answers: Sequence[str]) -> Tensor:
    """Per prompt, is the first generated token the answer's first token (notebooks 01-05's
    score)? BoolTensor ``[n]``."""
    ids = answer_token_ids(model, answers).tolist()
    return torch.tensor([bool(t) and t[0] == a for t, a in zip(token_lists, ids)], dtype=torch.bool)


@dataclass
class Answers:
    """Greedy answers to zero-shot prompts under one condition, scored both ways."""

    texts: list[str]
    whole: Tensor  # [n] bool: the whole generated answer is right
    first: Tensor  # [n] bool: its first token is right


def answer_conditions(model, prompts: Sequence[str], answers: Sequence[str],
                      conditions: Mapping[str, Additions], where: Where = "each_once",
                      prompt_last: Sequence[str] = (),
                      max_new_tokens: int = ANSWER_TOKENS) -> dict[str, Answers]:
    """Greedy answers (up to the first newline) to ``prompts`` under each condition
    (``{name: {layer: [d_model]}}``, ``{}`` for none; names in ``prompt_last`` get their vector
    at the prompt's final position only), scored on the whole answer and on its first token."""
    ids = generate_conditions(model, prompts, conditions, max_new_tokens, where=where,
                              prompt_last=prompt_last, stop_text="\n", tokens=True)
    out = {}
    for name, token_lists in ids.items():
        texts = [model.tokenizer.decode(t) for t in token_lists]
        out[name] = Answers(texts, whole_answer_correct(texts, answers),
                            first_token_correct(model, token_lists, answers))
    return out


def differ(a: Sequence[str], b: Sequence[str]) -> Tensor:
    """Per generation, do the two texts differ? BoolTensor ``[n]``."""
    return torch.tensor([x != y for x, y in zip(a, b)], dtype=torch.bool)


def shared_words(a: str, b: str) -> int:
    """How many leading words two generations share."""
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


def time_generation(model, prompt: str, vector: Tensor, layer: int,
                    max_new_tokens: int = 30) -> dict[str, tuple[list[int], float]]:
    """The same intervention (``vector`` at the prompt's last position and every generated one)
    run with the KV cache and without it, EOS ignored: ``{"cached"|"uncached": (tokens, seconds)}``."""
    tokens = model.to_tokens(prompt)
    out = {}
    for name, intervention, use_cache in (
            ("cached", at_last_position(layer, vector), True),
            ("uncached", from_position(layer, vector, tokens.shape[1] - 1), False)):
        start = time.perf_counter()
        new = generate_tokens(model, tokens, max_new_tokens, intervention, use_cache=use_cache,
                              stop_at_eos=False)[0]
        out[name] = (new, time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------------------------
# Steering vectors (Activation Addition) and a sentiment lexicon
# --------------------------------------------------------------------------------------------

# Free-text openings written for this course, all 7 tokens long for the embedded tokenizer (one
# batch, no padding). Nothing is chosen on them: every layer and coefficient is reported.
STEER_OPENINGS = (
    "I went to see my neighbour and", "My little brother drew a picture and",
    "On the train home, a stranger", "The doctor came back and told us",
    "The old house on the hill was", "When I got home, my dog",
    "Yesterday my sister told me that", "My aunt opened the letter and said",
    "The bus driver turned around and said", "The new manager gave a speech and",
    "My old friend came to visit and", "Our team played the final match and",
    "The movie we watched last night was", "The waiter brought our food and",
    "When I opened the door, I", "When my exam results arrived, I",
    "I met my new classmates today and", "My father looked at my report and",
    "The neighbours next door have always been", "The phone rang and my uncle said",
)
SEEDS_PER_OPENING = 2  # 40 generations per condition
STEER_SAMPLING = Sampling(temperature=0.8, top_k=50)
STEER_NEW_TOKENS = 16
STEER_PAIR = ("I love you so much", "I hate you so much")
STEER_LAYER_FRACTIONS = (0.1, 0.3)  # early layers (3 and 9 of 30)
STEER_COEFFICIENTS = (-10.0, -5.0, 5.0, 10.0)


def steering_prompts(n_openings: int | None = None,
                     seeds_per_opening: int = SEEDS_PER_OPENING) -> tuple[list[str], list[int]]:
    """The first ``n_openings`` openings (default: all), each once per seed; one fixed seed per
    generation."""
    prompts, seeds = [], []
    for i, p in enumerate(STEER_OPENINGS[:n_openings]):
        for s in range(seeds_per_opening):
            prompts.append(p)
            seeds.append(100 * i + s)
    return prompts, seeds


def steering_layers(model) -> list[int]:
    """The early layers the sweep tries (``STEER_LAYER_FRACTIONS`` of the depth)."""
    n = model.cfg.n_layers
    return sorted({int(round(f * (n - 1))) for f in STEER_LAYER_FRACTIONS})


def steering_vector(model, plus: str, minus: str, layer: int) -> Tensor:
    """``resid_post`` of ``plus`` minus that of ``minus`` at ``layer``, every position: ``[k, d_model]``.

    The two prompts must have the same number of tokens (Turner et al. pad the shorter one with
    spaces; we choose pairs that need none). Pairs that start with the same token give a zero
    first row: the first position (where this model parks a very large activation) is left alone.
    """
    a, b = model.to_tokens(plus), model.to_tokens(minus)
    if a.shape != b.shape:
        raise ValueError(f"{plus!r} and {minus!r} have {a.shape[1]} and {b.shape[1]} tokens; "
                         "choose a pair with the same number of tokens")
    name = resid_post_name(layer)
    states = [model.run_with_cache(t, names_filter=lambda n: n == name)[1][name][0] for t in (a, b)]
    return states[0] - states[1]


def random_vectors_like(vectors: Tensor, seed: int = 0) -> Tensor:
    """Random directions with the norm of each row of ``vectors`` (zero rows stay zero)."""
    noise = torch.randn(vectors.shape, generator=torch.Generator().manual_seed(seed), device="cpu")
    noise = noise.to(vectors.device)  # drawn on the CPU: the same numbers on every device
    return noise * vectors.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)


@lru_cache(maxsize=None)
def load_lexicon(name: str = "sentiment") -> tuple[frozenset[str], frozenset[str]]:
    """(positive words, negative words) from ``fv_exercises/data/lexicon/<name>.json``."""
    path = resources.files("fv_exercises") / "data" / "lexicon" / f"{name}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(raw["positive"]), frozenset(raw["negative"])


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def sentiment_rates(texts: Sequence[str]) -> Tensor:
    """Per text, the fraction of its words that are positive and that are negative: ``[n, 2]``.

    Words are lower-case runs of letters (``"don't"`` is one word); a text with no words has
    rates 0.
    """
    positive, negative = load_lexicon()
    rows = []
    for text in texts:
        words = _WORD.findall(text.lower().replace("\u2019", "'"))
        n = max(1, len(words))
        rows.append([sum(w in positive for w in words) / n, sum(w in negative for w in words) / n])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(texts), 2)


def steer(model, conditions: Mapping[str, Additions], n_openings: int | None = None,
          seeds_per_opening: int = SEEDS_PER_OPENING,
          max_new_tokens: int = STEER_NEW_TOKENS) -> dict[str, list[str]]:
    """Sampled continuations of the openings under each condition (``{name: {layer:
    [k, d_model]}}``, ``{}`` for none), all conditions in one batch, the same seeds in each.

    The vectors are added at the first ``k`` positions of the opening (which must be at least
    ``k`` tokens long); generated positions get nothing (they see the change through attention).
    """
    prompts, seeds = steering_prompts(n_openings, seeds_per_opening)
    shortest = min(model.to_tokens(p).shape[1] for p in set(prompts))
    k = max((v.shape[-2] for adds in conditions.values() for v in adds.values()), default=0)
    if k > shortest:
        raise ValueError(f"the steering vector spans {k} positions; openings have {shortest}")
    return generate_conditions(model, prompts, conditions, max_new_tokens, where="prompt_start",
                               sampling=STEER_SAMPLING, seeds=seeds)


@dataclass
class SteerRow:
    """One condition of a steering experiment: per-generation rates and the score's differences."""

    name: str
    layer: int | None
    coefficient: float
    random: bool
    rates: Tensor  # [n, 2] positive, negative word rate per generation
    vs_none: Difference  # (positive - negative rate) minus that of the unsteered generation

    @property
    def score(self) -> Tensor:
        """Positive minus negative word rate, per generation: ``[n]``."""
        return self.rates[:, 0] - self.rates[:, 1]


def steering_conditions(model, layers: Sequence[int], coefficients: Sequence[float],
                        random_coefficient: float | None, pair: tuple[str, str] = STEER_PAIR,
                        seed: int = 0) -> tuple[dict[str, Additions], dict[str, tuple]]:
    """Conditions ``{name: {layer: c * vector}}`` for every layer and coefficient (plus one
    random vector of the same norm per layer at ``random_coefficient``), and each condition's
    ``(layer, coefficient, is_random)``. ``"unsteered"`` is the first condition."""
    conditions: dict[str, Additions] = {"unsteered": {}}
    meta: dict[str, tuple] = {"unsteered": (None, 0.0, False)}
    for layer in layers:
        v = steering_vector(model, *pair, layer)
        for c in coefficients:
            name = f"layer {layer}, {c:+g}"
            conditions[name], meta[name] = {layer: c * v}, (layer, c, False)
        if random_coefficient is not None:
            name = f"layer {layer}, random {random_coefficient:g}"
            conditions[name] = {layer: random_coefficient * random_vectors_like(v, seed + layer)}
            meta[name] = (layer, random_coefficient, True)
    return conditions, meta


def steering_rows(texts: Mapping[str, list[str]], meta: Mapping[str, tuple]) -> list[SteerRow]:
    """Rates and paired differences against ``"unsteered"`` for every condition."""
    base = sentiment_rates(texts["unsteered"])
    base_score = base[:, 0] - base[:, 1]
    rows = []
    for name, t in texts.items():
        rates = sentiment_rates(t)
        layer, c, is_random = meta[name]
        rows.append(SteerRow(name, layer, c, is_random, rates,
                             paired_difference(rates[:, 0] - rates[:, 1], base_score)))
    return rows


def pooled_contrast(rows: Sequence[SteerRow]) -> Difference:
    """Per generation, the mean score under the positive coefficients minus the mean under the
    matching negative ones (same layers), with a 95% bootstrap interval over generations."""
    plus = [r for r in rows if not r.random and r.coefficient > 0]
    minus = {(r.layer, r.coefficient): r for r in rows if not r.random and r.coefficient < 0}
    pairs = [(r, minus[r.layer, -r.coefficient]) for r in plus if (r.layer, -r.coefficient) in minus]
    if not pairs:
        raise ValueError("no pair of opposite coefficients at the same layer")
    return paired_difference(torch.stack([p.score for p, _ in pairs]).mean(0),
                             torch.stack([m.score for _, m in pairs]).mean(0))


def pooled_random(rows: Sequence[SteerRow]) -> Difference:
    """Per generation, the mean score under the random vectors minus the unsteered score."""
    base = next(r for r in rows if r.layer is None)
    rnd = [r for r in rows if r.random]
    return paired_difference(torch.stack([r.score for r in rnd]).mean(0), base.score)


def mean_interval(values: Tensor) -> Difference:
    """Mean of per-generation ``values`` with a 95% bootstrap interval (over generations)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return paired_difference(values, torch.zeros_like(values))


def per_100(d: Difference, signed: bool = False) -> str:
    """``"1.5 [0.8, 2.3]"``: a rate (or a difference of rates) per 100 words."""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * d.value)} [{f.format(100 * d.lo)}, {f.format(100 * d.hi)}]"


def plot_steering(rows: Sequence[SteerRow], title: str = ""):
    """Change in (positive - negative) words per 100 words against the coefficient, one line per
    layer, random vectors as crosses, 95% intervals as bars."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    layers = sorted({r.layer for r in rows if r.layer is not None})
    for i, layer in enumerate(layers):
        mine = sorted((r for r in rows if r.layer == layer and not r.random), key=lambda r: r.coefficient)
        x = [r.coefficient + 0.25 * (i - 1) for r in mine]
        y = [100 * r.vs_none.value for r in mine]
        err = [[100 * (r.vs_none.value - r.vs_none.lo) for r in mine],
               [100 * (r.vs_none.hi - r.vs_none.value) for r in mine]]
        line = ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=f"layer {layer}")
        for r in rows:
            if r.layer == layer and r.random:
                ax.errorbar([r.coefficient + 0.25 * (i - 1)], [100 * r.vs_none.value],
                            yerr=[[100 * (r.vs_none.value - r.vs_none.lo)],
                                  [100 * (r.vs_none.hi - r.vs_none.value)]],
                            marker="x", ms=7, color=line[0].get_color(), capsize=2, ls="none")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("coefficient (x: random vector of the same norm)")
    ax.set_ylabel("change in (positive - negative)\nwords per 100 words")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The main job, and a benchmark
# --------------------------------------------------------------------------------------------


def _change_row(name: str, d: Difference, note: str = ""):
    """A main-job row for a change in (positive - negative) words per 100 words."""
    from fv_exercises.report import Row

    return Row(name, f"{100 * d.value:+.1f}", f"[{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]", note, d.value)


def headline(ctx) -> list:
    """Main-job rows for notebook 06: whole-answer accuracy with the function vector while
    generating, where the vector goes, and steering free text (with its figure)."""
    from fv_exercises.heads import function_vector_for_task
    from fv_exercises.report import Row, accuracy_row, difference_row
    from fv_exercises.task_vectors import random_like

    model, test = ctx.model, ctx.test
    fv, layer = function_vector_for_task(model, ctx.task, seed=ctx.seed)
    prompts, answers = list(test.zero_shot_prompts), list(test.answers)
    res = answer_conditions(model, prompts, answers, {
        "none": {}, "fv": {layer: fv}, "random": {layer: random_like(fv, ctx.seed)},
        "fv, prompt only": {layer: fv}}, prompt_last=["fv, prompt only"])
    seed_loop = answer_conditions(model, prompts, answers, {"fv": {layer: fv}}, where="rerun_last")
    rows = [
        accuracy_row("zero-shot, whole generated answer", accuracy(res["none"].whole),
                     f"greedy, up to {ANSWER_TOKENS} tokens"),
        accuracy_row("zero-shot + FV while generating, whole answer", accuracy(res["fv"].whole),
                     f"layer {layer}, every position once (KV cache)"),
        accuracy_row("zero-shot + FV, first token only", accuracy(res["fv"].first), "same runs"),
        accuracy_row("zero-shot + random vector, whole answer", accuracy(res["random"].whole),
                     "same norm, control"),
        difference_row("FV - random vector, whole answer (paired)",
                       paired_difference(res["fv"].whole, res["random"].whole), "same test queries"),
        accuracy_row("FV at the prompt's last position only, whole answer",
                     accuracy(res["fv, prompt only"].whole), "generated positions untouched"),
        accuracy_row("seed's loop (re-run, last position only), whole answer",
                     accuracy(seed_loop["fv"].whole),
                     f"text differs on {differ(res['fv'].texts, seed_loop['fv'].texts).float().mean():.0%}"),
    ]
    conditions, meta = steering_conditions(model, steering_layers(model), STEER_COEFFICIENTS,
                                           max(STEER_COEFFICIENTS), seed=ctx.seed)
    sweep = steering_rows(steer(model, conditions), meta)
    base = next(r for r in sweep if r.layer is None)
    pair = f"{STEER_PAIR[0]!r} - {STEER_PAIR[1]!r}"
    rows += [
        Row(f"steering {pair}: (pos - neg) words per 100, unsteered",
            f"{100 * base.score.mean():.1f}", "", f"{len(base.score)} sampled generations"),
        _change_row("steering: +c minus -c, pooled over layers and |c| (paired)",
                    pooled_contrast(sweep), f"layers {steering_layers(model)}, |c| in "
                    f"{sorted({abs(c) for c in STEER_COEFFICIENTS})}"),
        _change_row("steering: random vectors (same norm) minus unsteered", pooled_random(sweep),
                    "control"),
    ]
    rows += [_change_row(f"steering: {r.name} minus unsteered", r.vs_none) for r in sweep
             if r.layer is not None and not r.random and abs(r.coefficient) == max(STEER_COEFFICIENTS)]
    path = ctx.figure_path("steering")
    if path is not None:
        import matplotlib.pyplot as plt

        fig = plot_steering(sweep, title=f"{pair}, added at the first positions")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rows.append(Row("figure: steering sweep", "", "", str(path)))
    return rows


def bench_generation(args) -> None:
    """30 new tokens with a vector added: KV cache (one new position per step) vs re-running."""
    from fv_exercises import load_model
    from fv_exercises.evaluation import mean_resid_post
    from fv_exercises.tasks import ICLDataset

    model = load_model()
    n_new = getattr(args, "new_tokens", 30)
    layer = model.cfg.n_layers // 2
    ds = ICLDataset.build("antonym", 8, seed=0, split="train")
    vector = (mean_resid_post(model, ds.prompts) - mean_resid_post(model, ds.zero_shot_prompts))[layer]
    prompt = "The word 'hot' means"
    time_generation(model, prompt, vector, layer, 2)  # warm up
    runs = time_generation(model, prompt, vector, layer, n_new)
    (a, t_cached), (b, t_uncached) = runs["cached"], runs["uncached"]
    print(f"[generation] {n_new} new tokens, prompt of {model.to_tokens(prompt).shape[1]} tokens, "
          f"vector at layer {layer}")
    print(f"  KV cache (one new position per step): {t_cached:6.2f} s")
    print(f"  re-run the whole sequence each step : {t_uncached:6.2f} s")
    print(f"  ratio uncached/cached: {t_uncached / t_cached:.1f}x; same tokens: {a == b}")
