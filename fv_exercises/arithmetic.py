"""Arithmetic with function vectors (notebook 04): averaging, similarity, differences, sums.

The course's function vector of a task (:func:`fv_exercises.heads.function_vector_for_task`) is
the sum of a few attention heads' mean outputs at the final position. This module holds what
notebook 04 does with such vectors beyond the two graded functions:

- :func:`head_output_sums`: each prompt's sum of the chosen heads' outputs (the function vector
  *before* averaging), batched; its mean over prompts is the function vector;
- :func:`prompt_count_curve`: zero-shot accuracy of vectors averaged over 1, 2, 4, ... prompts;
- :func:`cosine_matrix`, :func:`split_halves`, :func:`random_cosines`: how similar the tasks'
  vectors are, against two baselines (one task's two halves; random directions);
- :func:`synonym_prompts_with_antonyms`: synonym prompts whose query has a known antonym, for
  the seed's ``fv_antonym - fv_synonym`` experiment;
- :func:`composed_task`: antonym then capitalize (``hot -> Cold``), built from the shipped pairs;
- :func:`steered_top1_ids`, :func:`top1_matches`: the top-1 token under many added vectors at
  once, and which candidate answer it starts;
- :func:`headline`: the main job's rows (the difference vector's flip rate against its control)
  and figures.

Everything runs on any model :func:`fv_exercises.load_model` returns (no hard-coded sizes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device
from fv_exercises.evaluation import answer_token_ids, last_position_logits, tokenize_right_padded
from fv_exercises.tasks import QUERY_TEMPLATE, ICLDataset, Pair, Task, format_prompt, load_task

Head = tuple[int, int]

# Tasks whose few-shot accuracy in docs/task_accuracy.md is at least 50% (tests/test_arithmetic.py
# keeps this list in step with the table), and synonym: the seed's example, weak on this model.
STRONG_TASKS: tuple[str, ...] = ("antonym", "capitalize", "country_language", "first_letter",
                                 "lowercase", "present_past", "singular_plural")
WEAK_TASK = "synonym"
TASKS: tuple[str, ...] = STRONG_TASKS + (WEAK_TASK,)
PROMPT_COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


# --------------------------------------------------------------------------------------------
# Function vectors from prompts: each prompt's head outputs, then averages of them
# --------------------------------------------------------------------------------------------


def head_output_sums(model, prompts: Sequence[str], heads: Sequence[Head],
                     batch_size: int = 8) -> Tensor:
    """Each prompt's sum over ``heads`` of the head output at its final position.

    Row ``i`` is ``sum over (l, h) of z_i[last, h] @ W_O[l, h]`` (``z`` from
    ``blocks.{l}.attn.hook_z``); the mean of the rows is the function vector of these prompts
    and heads. A head's output is defined **without** the attention output bias ``b_O``: where a
    model has one (GPT-2 does, SmolLM2 does not), it is added once per layer, not per head.
    Prompts are batched (right-padded; each row read at its own last token).

    Returns:
        ``[len(prompts), d_model]``.
    """
    heads = [(int(l), int(h)) for l, h in heads]
    layers = sorted({l for l, _ in heads})
    names = {f"blocks.{l}.attn.hook_z" for l in layers}
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]; stacked once, not per head
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start:start + batch_size])
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            rows = torch.arange(len(last), device=last.device)
            total = torch.zeros(len(last), W_O.shape[-1], dtype=W_O.dtype, device=W_O.device)
            for l, h in heads:
                z = cache[f"blocks.{l}.attn.hook_z"][rows, last, h]  # [b, d_head]
                total += z.to(W_O.dtype) @ W_O[l, h]
            out.append(total)
    return torch.cat(out) if out else torch.zeros(0, W_O.shape[-1], device=W_O.device)


def prompt_count_curve(model, outputs: Tensor, layer: int, prompts: Sequence[str],
                       answers: Sequence[str], counts: Sequence[int] = PROMPT_COUNTS,
                       draws: int = 8, seed: int = 0) -> dict[int, Tensor]:
    """Zero-shot top-1 correctness of function vectors averaged over ``n`` prompts, for each ``n``.

    For each ``n`` in ``counts`` (at most ``N``), ``draws`` random subsets of ``n`` rows of
    ``outputs`` (``[N, d_model]`` from :func:`head_output_sums`) are averaged, and each mean is
    added at ``layer`` to every prompt of ``prompts`` (zero-shot prompts of test queries). For
    ``n == N`` there is only one subset, so one draw.

    Returns:
        ``{n: BoolTensor [n_draws, len(prompts)]}``.
    """
    N = outputs.shape[0]
    rng = torch.Generator().manual_seed(seed)
    jobs = [(n, torch.randperm(N, generator=rng, device="cpu")[:n].to(outputs.device))
            for n in counts if n <= N
            for _ in range(1 if n == N else draws)]
    ids = steered_top1_ids(model, prompts, [{layer: outputs[idx].mean(0)} for _, idx in jobs])
    correct = ids == first_token_ids(model, answers)  # [n_jobs, n_prompts]
    return {n: correct[[j for j, (m, _) in enumerate(jobs) if m == n]] for n in dict(jobs)}


# --------------------------------------------------------------------------------------------
# Similarity between vectors, and its baselines
# --------------------------------------------------------------------------------------------


def cosine_matrix(vectors: Tensor) -> Tensor:
    """Cosine similarity between every pair of rows: ``[T, d]`` -> ``[T, T]`` (float64)."""
    v = vectors.double()
    v = v / v.norm(dim=-1, keepdim=True)
    return v @ v.T


def split_halves(outputs: Tensor, n_splits: int = 20, seed: int = 0) -> Tensor:
    """Cosines between the function vectors of two disjoint halves of one task's prompts.

    ``outputs``: ``[N, d_model]`` per-prompt head outputs (:func:`head_output_sums`). Each of
    ``n_splits`` random splits averages ``N // 2`` rows on each side: how similar two function
    vectors of the *same* task are, each from ``N // 2`` prompts (the baseline for the cosines
    between tasks). Returns ``[n_splits]`` (float64).
    """
    N, half = outputs.shape[0], outputs.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_splits):
        perm = torch.randperm(N, generator=g, device="cpu").to(outputs.device)
        a = outputs[perm[:half]].double().mean(0)
        b = outputs[perm[half:2 * half]].double().mean(0)
        out.append(a @ b / (a.norm() * b.norm()))
    return torch.stack(out)


def random_cosines(d_model: int, n_pairs: int = 2000, seed: int = 0) -> Tensor:
    """Cosines between ``n_pairs`` pairs of random Gaussian directions in ``d_model`` dimensions.

    Their spread is about ``1 / sqrt(d_model)``: the similarity of two unrelated directions.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_pairs, d_model, generator=g, dtype=torch.float64, device="cpu")
    b = torch.randn(n_pairs, d_model, generator=g, dtype=torch.float64, device="cpu")
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# --------------------------------------------------------------------------------------------
# Scoring many added vectors at once
# --------------------------------------------------------------------------------------------

Additions = Mapping[int, Tensor]  # {layer: vector [d_model]} added to resid_post at the last position


def steered_top1_ids(model, prompts: Sequence[str], variants: Sequence[Additions | None],
                     batch_size: int = 16) -> Tensor:
    """The top-1 next token of every prompt under every variant: LongTensor ``[len(variants), n]``.

    A variant ``{layer: vector}`` adds each ``vector`` (``[d_model]``) to
    ``blocks.{layer}.hook_resid_post`` at each prompt's last position, as
    :func:`fv_exercises.evaluation.last_position_logits` does with ``add=`` (``None`` or ``{}``:
    the plain run). Same tokens, much cheaper for many variants on a Llama-style model: an
    addition at the last position changes nothing before it, so each batch of prompts runs once
    and only the last position is recomputed, from the variant's first layer upward, for all
    variants at once (:class:`~fv_exercises.last_position.LlamaLastPosition`). Other models run
    one bridge forward pass per variant.
    """
    from fv_exercises.last_position import LlamaLastPosition, llama_style_problems

    variants = [dict(v or {}) for v in variants]
    if llama_style_problems(model):
        return torch.stack([last_position_logits(model, prompts, add=v or None).argmax(-1)
                            for v in variants])
    fast = LlamaLastPosition(model)
    n_layers = model.cfg.n_layers
    pre = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    wanted = set(pre) | {final}
    groups: dict[int, list[int]] = {}  # first layer a variant adds at -> its indices
    for i, v in enumerate(variants):
        groups.setdefault(min(v) if v else -1, []).append(i)
    out = torch.zeros(len(variants), len(prompts), dtype=torch.long, device=model_device(model))
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start:start + batch_size])
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
            B, S = tokens.shape
            batch = torch.arange(B, device=last.device)
            plain = logits[batch, last].argmax(-1)  # [B]
            resid_pre = [cache[n] for n in pre]  # each [B, S, d_model]
            post_last = [cache[n][batch, last] for n in pre[1:]] + [cache[final][batch, last]]
            del cache, logits
            cos, sin = fast.cos_sin(S, resid_pre[0])
            cos_p, sin_p = cos[0, last][:, None], sin[0, last][:, None]  # [B, 1, d_head]
            prefix_mask = torch.arange(S, device=last.device)[None] < last[:, None]  # [B, S]
            kv: dict[int, tuple[Tensor, Tensor]] = {}
            cols = slice(start, start + B)
            for first, idx in groups.items():
                if first < 0:
                    out[idx, cols] = plain
                    continue
                chosen = [variants[i] for i in idx]
                # [B, R, d_model]: each prompt's last position, one row per variant
                rows = post_last[first][:, None].repeat(1, len(chosen), 1)
                rows = rows + _stacked(chosen, first, rows)
                for l in range(first + 1, n_layers):
                    if l not in kv:
                        kv[l] = fast.prefix_kv(l, resid_pre[l], cos, sin)
                    z = fast.attention(l, rows, kv[l], prefix_mask, cos_p, sin_p)
                    rows = fast.finish_block(l, rows, z) + _stacked(chosen, l, rows)
                top = fast.unembed(fast.norm(rows)).argmax(-1)  # [B, R]
                out[idx, cols] = top.T
    return out


def _stacked(variants: Sequence[Additions], layer: int, like: Tensor) -> Tensor:
    """``[1, R, d_model]``: each variant's vector at ``layer`` (zeros where it adds none)."""
    zero = like.new_zeros(like.shape[-1])
    return torch.stack([v[layer].to(like.device, like.dtype) if layer in v else zero
                        for v in variants])[None]


def first_token_ids(model, words: Sequence[str]) -> Tensor:
    """First token of ``" " + word`` for each word (how every answer is scored): ``[n]``."""
    return answer_token_ids(model, words)


def match_candidates(model, ids: Tensor, conditions: Sequence[str],
                     candidates: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Tensor]]:
    """Which candidate answer each top-1 token starts.

    ``ids``: ``[len(conditions), n]`` top-1 tokens (:func:`steered_top1_ids`);
    ``candidates[name]``: one word per prompt (e.g. ``{"antonym": [...], "query": [...]}``).

    Returns:
        ``{condition: {name: BoolTensor [n]}}``.
    """
    targets = {name: first_token_ids(model, words) for name, words in candidates.items()}
    return {condition: {name: row == t for name, t in targets.items()}
            for condition, row in zip(conditions, ids)}


def top1_matches(model, prompts: Sequence[str], candidates: Mapping[str, Sequence[str]],
                 variants: Mapping[str, Additions | None]) -> dict[str, dict[str, Tensor]]:
    """Under each variant, does the top-1 next token start each candidate answer?

    ``variants[condition]``: the vectors added (``None``: nothing); all variants share one run of
    the prompts (:func:`steered_top1_ids`). ``candidates``: as in :func:`match_candidates`.

    Returns:
        ``{condition: {name: BoolTensor [len(prompts)]}}``.
    """
    ids = steered_top1_ids(model, prompts, list(variants.values()))
    return match_candidates(model, ids, list(variants), candidates)


def _distinct_first_tokens(model, *words: str) -> bool:
    """True when the words' first tokens (each as ``" " + word``) are pairwise different."""
    ids = first_token_ids(model, words).tolist()  # ints: a set of tensors compares identities
    return len(set(ids)) == len(ids)


# --------------------------------------------------------------------------------------------
# fv_antonym - fv_synonym: synonym prompts whose query has a known antonym
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynonymAntonymSet:
    """Synonym-task prompts whose queries come from antonym pairs, so the antonym is known.

    Index ``i`` of every field is the same query.
    """

    queries: tuple[str, ...]
    antonyms: tuple[str, ...]
    prompts: tuple[str, ...]  # n_shots synonym demonstrations (train pairs), then the query
    zero_shot_prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.queries)


def synonym_prompts_with_antonyms(model, n: int, split: str = "test", seed: int = 1,
                                  n_shots: int = 5) -> SynonymAntonymSet:
    """``n`` synonym prompts whose queries are antonym pairs of ``split``, answer = the antonym.

    Only 40 synonym pairs have an input the antonym task also has, so the queries come from the
    antonym pairs of ``split`` (test: never used to build a function vector), and the five
    demonstrations are synonym **train** pairs. Queries whose antonym starts with the same token
    as the query itself are left out (repeating the query must not count as the antonym).
    Deterministic for a given ``seed``.
    """
    antonym, synonym = load_task("antonym"), load_task(WEAK_TASK)
    a_train, a_test = antonym.split()
    s_train, _ = synonym.split()
    pool = [(x, y) for x, y in (a_train if split == "train" else a_test)
            if _distinct_first_tokens(model, x, y)]
    rng = random.Random(f"synonym-antonym-{split}-{n_shots}-{seed}")
    chosen = rng.sample(pool, min(n, len(pool)))
    prompts = []
    for x, _ in chosen:
        demos = rng.sample([p for p in s_train if p[0] != x and p[1] != x], n_shots)
        prompts.append(format_prompt(demos, x))
    return SynonymAntonymSet(
        queries=tuple(x for x, _ in chosen),
        antonyms=tuple(y for _, y in chosen),
        prompts=tuple(prompts),
        zero_shot_prompts=tuple(QUERY_TEMPLATE.format(x=x) for x, _ in chosen),
    )


# --------------------------------------------------------------------------------------------
# Composition: antonym, then capitalize
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PresplitTask(Task):
    """A task whose train/test split is given (the composed task keeps the antonym split)."""

    train: tuple[Pair, ...] = ()
    test: tuple[Pair, ...] = ()

    def split(self) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
        return self.train, self.test


def capitalized(word: str) -> str:
    """``"cold"`` -> ``"Cold"`` (only the first letter changes)."""
    return word[:1].upper() + word[1:]


def composed_task(model) -> Task:
    """Antonym then capitalize: ``(hot, Cold)`` for every shipped antonym pair ``(hot, cold)``.

    The train/test split is the antonym task's own, so a composed test query was never a train
    query of the antonym vector. Pairs are kept only when the first tokens of the composed answer
    (``" Cold"``), the plain antonym (``" cold"``) and the capitalized query (``" Hot"``) all
    differ, so that each outcome can be told apart from the first token alone.
    """
    antonym = load_task("antonym")

    def compose(pairs: Sequence[Pair]) -> tuple[Pair, ...]:
        return tuple((x, capitalized(y)) for x, y in pairs
                     if x[:1].islower() and y[:1].islower()
                     and _distinct_first_tokens(model, capitalized(y), y, capitalized(x)))

    train, test = antonym.split()
    pairs_train, pairs_test = compose(train), compose(test)
    return _PresplitTask(name="antonym_capitalize",
                         description="Map a word to its opposite, written with a capital letter.",
                         pairs=pairs_train + pairs_test, train=pairs_train, test=pairs_test)


def composition_candidates(data: ICLDataset) -> dict[str, list[str]]:
    """The answers a composed prompt's top-1 token may start, one word per prompt: the composed
    answer (``Cold``), the plain antonym (``cold``) and the capitalized query (``Hot``)."""
    return {"antonym, capitalized": list(data.answers),
            "antonym": [a[:1].lower() + a[1:] for a in data.answers],
            "query, capitalized": [capitalized(q) for q in data.queries]}


# --------------------------------------------------------------------------------------------
# The main job
# --------------------------------------------------------------------------------------------


def difference_variants(fv_antonym: Tensor, fv_synonym: Tensor, layer: int,
                        seed: int = 0) -> dict[str, Additions | None]:
    """The seed's difference and its controls, each added at ``layer`` (the antonym vector's):

    no vector; ``fv_antonym - fv_synonym``; the antonym vector alone; a random vector with the
    difference's norm; the difference rescaled to the antonym vector's norm.
    """
    from fv_exercises.task_vectors import random_like

    diff = fv_antonym - fv_synonym
    return {
        "no vector": None,
        "fv_antonym - fv_synonym": {layer: diff},
        "fv_antonym alone": {layer: fv_antonym},
        "random vector, |difference|": {layer: random_like(diff, seed)},
        "difference rescaled to |fv_antonym|": {layer: diff * fv_antonym.norm() / diff.norm()},
    }


def headline(ctx) -> list:
    """Main-job rows for notebook 04: ``fv_antonym - fv_synonym`` added to synonym prompts.

    The seed's example is fixed (antonym and synonym, whatever ``ctx.task``): how often adding the
    difference at the antonym vector's layer makes the top-1 answer the antonym, on few-shot
    synonym prompts and on zero-shot prompts of test queries, against a random vector of the same
    norm (paired). With figures on, also writes ``ctx.task``'s accuracy against the number of
    prompts averaged, and the cosine map between the tasks' vectors (it builds every task's
    vector: slow).
    """
    from fv_exercises.heads import function_vector_details
    from fv_exercises.report import N_TEST, Row, accuracy_row, difference_row
    from fv_exercises.stats import accuracy, paired_difference

    model, seed = ctx.model, ctx.seed
    ant = function_vector_details(model, "antonym", seed)
    syn = function_vector_details(model, WEAK_TASK, seed)
    variants = difference_variants(ant.vector, syn.vector, ant.layer, seed)
    keep = ("no vector", "fv_antonym - fv_synonym", "fv_antonym alone", "random vector, |difference|")
    variants = {k: variants[k] for k in keep}
    data = synonym_prompts_with_antonyms(model, N_TEST, split="test")
    rows = []
    for kind, prompts in (("few-shot synonym prompts", data.prompts),
                          ("zero-shot prompts", data.zero_shot_prompts)):
        got = top1_matches(model, prompts, {"antonym": data.antonyms}, variants)
        flips = {k: v["antonym"] for k, v in got.items()}
        rows += [
            accuracy_row(f"{kind}: top-1 is the antonym", accuracy(flips["no vector"]), "no vector"),
            accuracy_row(f"{kind} + (fv_antonym - fv_synonym)",
                         accuracy(flips["fv_antonym - fv_synonym"]), f"layer {ant.layer}"),
            accuracy_row(f"{kind} + fv_antonym alone", accuracy(flips["fv_antonym alone"]),
                         "control"),
            accuracy_row(f"{kind} + random vector, same norm",
                         accuracy(flips["random vector, |difference|"]), "control"),
            difference_row(f"{kind}: difference - random (paired)",
                           paired_difference(flips["fv_antonym - fv_synonym"],
                                             flips["random vector, |difference|"])),
        ]
    cos = float(cosine_matrix(torch.stack([ant.vector, syn.vector]))[0, 1])
    rows.append(Row("cosine(fv_antonym, fv_synonym)", f"{cos:.2f}", "", "", cos))
    return rows + _figures(ctx)


def _figures(ctx) -> list:
    """The prompt-count curve of ``ctx.task`` and the cosine map, as PNG (when figures are on)."""
    from fv_exercises.heads import function_vector_details
    from fv_exercises.report import Row

    curve_path, cosine_path = ctx.figure_path("fv_prompt_count"), ctx.figure_path("fv_cosines")
    if curve_path is None or cosine_path is None:
        return []
    import matplotlib.pyplot as plt

    from fv_exercises.plotting import plot_cosine_map, plot_prompt_count_curve

    model = ctx.model
    fv = function_vector_details(model, ctx.task, ctx.seed)
    train = ICLDataset.build(ctx.task, max(PROMPT_COUNTS), seed=ctx.seed, split="train")
    outputs = head_output_sums(model, train.prompts, fv.heads)
    scale = getattr(fv, "scale", 1.0)  # the recipe may scale the sum of head outputs
    curve = prompt_count_curve(model, scale * outputs, fv.layer, ctx.test.zero_shot_prompts,
                               ctx.test.answers, seed=ctx.seed)
    fig = plot_prompt_count_curve({ctx.task: curve}, title=f"{ctx.task}: function vector from n "
                                  f"train prompts, added at layer {fv.layer} (test queries)")
    fig.savefig(curve_path, dpi=120)
    plt.close(fig)
    rows = [Row("figure: accuracy vs number of prompts averaged", "", "", str(curve_path))]

    tasks = list(dict.fromkeys(TASKS + (ctx.task,)))
    iterator = tasks
    if ctx.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(tasks, desc="function vectors of every task")
    vectors = torch.stack([function_vector_details(model, t, ctx.seed).vector for t in iterator])
    halves = split_halves(outputs, seed=ctx.seed)
    fig = plot_cosine_map(cosine_matrix(vectors), tasks, {ctx.task: halves},
                          random_cosines(model.cfg.d_model, seed=ctx.seed))
    fig.savefig(cosine_path, dpi=120)
    plt.close(fig)
    rows.append(Row("figure: cosine map of the tasks' function vectors", "", "", str(cosine_path)))
    return rows
