"""Choosing the course's function-vector recipe on train queries, and the docs table that reports it.

Issue 11 of the course: the head-based function vector (the sum of the mean outputs of a few
attention heads, added to the residual stream at one layer) should carry as much of the task as
few-shot prompting does, as far as a 135M-parameter model allows. Todd et al. (section 2.3)
choose one *universal* set of heads by averaging the causal effect over many tasks and add the
vector at about a third of the depth. This module compares, **on train queries only**:

- per-task heads against universal heads (causal effects averaged over the shipped tasks),
- the number of heads ``k``,
- the layer the vector is added at (one layer; or the same vector at two or three layers),
- a scale factor on the vector,
- which layers' heads the scan measures (every layer, or from a third of the depth on),
- choosing on zero-shot accuracy alone, or on zero-shot plus shuffled-label accuracy,

picks the recipe by a rule written in code (:func:`choose`), and then reports it on the **test**
queries, with 95% intervals, for every task few-shot prompting can do (:func:`icl_tasks`), and
on words written for this check that are in no shipped task (``data/heldout/<task>.json``).

Command line::

    python -m fv_exercises.recipe search   # the comparison on train queries, and the choice
    python -m fv_exercises.recipe table    # docs/function_vectors.md (test queries + held-out words;
                                           # 20 min on 2 cores)

The chosen recipe itself lives in :mod:`fv_exercises.heads` (section 6,
:func:`fv_exercises.heads.function_vector_for_task`): this module only chooses and measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device
from fv_exercises.evaluation import answer_token_ids, tokenize_right_padded, top1_correct
from fv_exercises.last_position import LlamaLastPosition, llama_style_problems

Additions = Mapping[int, Tensor]  # {layer: vector [d_model]} added to resid_post at the last position


# --------------------------------------------------------------------------------------------
# Many steered variants of the same prompts at once
# --------------------------------------------------------------------------------------------


def steered_top1(model, prompts: Sequence[str], answers: Sequence[str],
                 variants: Sequence[Additions], batch_size: int = 16) -> Tensor:
    """Top-1 correctness of every prompt under every variant: BoolTensor ``[len(variants), n]``.

    See :func:`steered_scores`.
    """
    return steered_scores(model, prompts, answers, variants, batch_size)[0]


def steered_scores(model, prompts: Sequence[str], answers: Sequence[str],
                   variants: Sequence[Additions], batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Every prompt under every variant: top-1 correct (bool) and the answer's log-probability,
    both ``[len(variants), n]``.

    A variant ``{layer: vector}`` adds each ``vector`` (``[d_model]``) to
    ``blocks.{layer}.hook_resid_post`` at each prompt's last position, as
    :func:`fv_exercises.evaluation.top1_correct` does with ``add=``; ``{}`` adds nothing. Same
    numbers, much cheaper for many variants on a Llama-style model: an addition at the last
    position changes nothing before it, so each batch of prompts runs once and only the last
    position is recomputed, from the variant's first layer upward, for all variants at once (the
    rows of :class:`~fv_exercises.last_position.LlamaLastPosition`). Other models run one bridge
    forward pass per variant.
    """
    answer_ids = answer_token_ids(model, answers)
    if llama_style_problems(model):
        from fv_exercises.evaluation import last_position_logits

        correct, logprob = [], []
        for v in variants:
            logits = last_position_logits(model, prompts, add=dict(v)).float()
            correct.append(logits.argmax(-1) == answer_ids)
            rows = torch.arange(len(answers), device=logits.device)
            logprob.append(logits.log_softmax(-1)[rows, answer_ids])
        return torch.stack(correct), torch.stack(logprob)
    fast = LlamaLastPosition(model)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    wanted = set(names) | {final}
    device = model_device(model)
    correct = torch.zeros(len(variants), len(prompts), dtype=torch.bool, device=device)
    logprob = torch.zeros(len(variants), len(prompts), device=device)
    plain = [i for i, v in enumerate(variants) if not v]  # nothing added: the bridge's logits
    starts: dict[int, list[int]] = {}  # first layer a variant adds at -> its indices
    for i, v in enumerate(variants):
        if v:
            starts.setdefault(min(v), []).append(i)
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start:start + batch_size])
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
            B, S = tokens.shape
            rows_b = torch.arange(B, device=last.device)
            cols = slice(start, start + B)
            ans = answer_ids[start:start + B]
            if plain:
                c, lp = _score(logits[rows_b, last][:, None], ans)
                correct[plain, cols], logprob[plain, cols] = c.T, lp.T
            if not starts:
                continue
            resid_pre = [cache[n] for n in names]  # each [B, S, d_model]
            # resid_post of layer l at the last position = resid_pre of layer l + 1
            post_last = [r[rows_b, last] for r in resid_pre[1:]] + [cache[final][rows_b, last]]
            del cache
            cos, sin = fast.cos_sin(S, resid_pre[0])
            cos_p, sin_p = cos[0, last][:, None], sin[0, last][:, None]
            prefix_mask = torch.arange(S, device=last.device)[None] < last[:, None]
            # One batch of rows (versions of each prompt's last position) that grows layer by
            # layer: a variant joins at the first layer it adds at, and from there on every
            # layer runs once for all the rows (one weight read per layer, not per variant).
            rows, members = None, []  # rows: [B, R, d_model]; members: variant index of each row
            for l in range(min(starts), n_layers):
                if members:
                    z = fast.attention(l, rows, fast.prefix_kv(l, resid_pre[l], cos, sin),
                                       prefix_mask, cos_p, sin_p)
                    rows = fast.finish_block(l, rows, z) + _stacked([variants[i] for i in members], l, rows)
                if l in starts:
                    new = starts[l]
                    joined = post_last[l][:, None].repeat(1, len(new), 1)
                    joined = joined + _stacked([variants[i] for i in new], l, joined)
                    rows = joined if rows is None else torch.cat([rows, joined], dim=1)
                    members += new
            c, lp = _score_rows(fast, rows, ans)  # [B, R]
            correct[members, cols], logprob[members, cols] = c.T, lp.T
    return correct, logprob


def _stacked(variants: Sequence[Additions], layer: int, like: Tensor) -> Tensor:
    """``[1, R, d_model]``: each variant's vector at ``layer`` (zeros where it adds none)."""
    zero = like.new_zeros(like.shape[-1])
    return torch.stack([v[layer].to(like.device, like.dtype) if layer in v else zero
                        for v in variants])[None]


def _score(logits: Tensor, ans: Tensor) -> tuple[Tensor, Tensor]:
    """``logits`` ``[B, R, d_vocab]``, ``ans`` ``[B]`` -> top-1 correct and log P(answer), ``[B, R]``."""
    logits = logits.float()
    lp = logits.log_softmax(-1).gather(-1, ans[:, None, None].expand(-1, logits.shape[1], 1))[..., 0]
    return logits.argmax(-1) == ans[:, None], lp


def _score_rows(fast: LlamaLastPosition, rows: Tensor, ans: Tensor,
                rows_per_step: int = 512) -> tuple[Tensor, Tensor]:
    """:func:`_score` after the final norm and unembedding of ``rows`` ``[B, R, d_model]``,
    ``rows_per_step`` rows at a time (full logits for every row would not fit in memory)."""
    B, R, _ = rows.shape
    correct, logprob = [], []
    for i in range(0, R, max(1, rows_per_step // B)):
        c, lp = _score(fast.unembed(fast.norm(rows[:, i:i + max(1, rows_per_step // B)])), ans)
        correct.append(c)
        logprob.append(lp)
    return torch.cat(correct, 1), torch.cat(logprob, 1)


# --------------------------------------------------------------------------------------------
# The search: every candidate on train queries, recipe families compared by cross-fitting
# --------------------------------------------------------------------------------------------

SEARCH_KS = (3, 5, 10, 20, 40)
SEARCH_SCALES = (1.0, 2.0, 4.0, 8.0)
SEARCH_FRACTIONS = (0.07, 0.13, 0.2, 0.27, 0.33, 0.4, 0.47, 0.53, 0.6, 0.67)  # layers 2..20 of 30
N_SEARCH_QUERIES = 40  # zero-shot train queries per task the candidates are scored on
N_SCAN_CHUNK = 4  # the scan is kept per chunk of this many prompts (to compare scan sizes)
Key = tuple  # (heads, k, layers, scale): heads in {"task", "task_from", "task8", "task4", "universal", "tv"}


@dataclass
class TaskStats:
    """One task's statistics from **train** prompts (the same draw as the course's recipe).

    ``mean_z``: ``[n_layers, n_heads, d_head]``; ``effect_chunks``: ``[n_chunks, n_layers,
    n_heads]``, the causal effects averaged over each chunk of ``N_SCAN_CHUNK`` shuffled-label
    prompts; ``task_vectors``: ``[n_layers, d_model]``, notebook 01's residual-stream task vector
    (mean last-position ``resid_post`` of the clean prompts minus that of their zero-shot forms).
    """

    task: str
    mean_z: Tensor
    effect_chunks: Tensor
    task_vectors: Tensor

    def effects(self, n_prompts: int | None = None) -> Tensor:
        """Effects over the first ``n_prompts`` scanned prompts (all by default): ``[n_layers, n_heads]``."""
        n = len(self.effect_chunks) if n_prompts is None else max(1, n_prompts // N_SCAN_CHUNK)
        return self.effect_chunks[:n].mean(0)


def task_stats(model, task: str, seed: int = 0) -> TaskStats:
    """:class:`TaskStats` from the train prompts :data:`~fv_exercises.heads.COURSE_RECIPE` uses."""
    from fv_exercises.evaluation import mean_resid_post
    from fv_exercises.heads import COURSE_RECIPE, head_effects, mean_head_z
    from fv_exercises.tasks import ICLDataset

    r = COURSE_RECIPE
    train = ICLDataset.build(task, r.n_prompts, seed=seed, split="train")
    mean_z = mean_head_z(model, train.prompts)
    n_scan = max(r.n_scan, 12)
    chunks = torch.stack([
        head_effects(model, train.corrupted_prompts[i:i + N_SCAN_CHUNK],
                     train.answers[i:i + N_SCAN_CHUNK], mean_z)
        for i in range(0, n_scan, N_SCAN_CHUNK)])
    tv = mean_resid_post(model, train.prompts) - mean_resid_post(model, train.zero_shot_prompts)
    return TaskStats(task, mean_z, chunks, tv)


def candidate_variants(model, stats: TaskStats, universal: Tensor) -> tuple[list[Key], list[dict]]:
    """Every candidate of the search for one task: keys and ``{layer: vector}`` additions.

    Function vectors: heads ranked by the task's own scan (12, 8 or 4 prompts) or by the
    universal (mean over tasks) effects; ``k`` in :data:`SEARCH_KS`; scale in
    :data:`SEARCH_SCALES`; one layer (:data:`SEARCH_FRACTIONS`), or the same vector at two or
    three layers. The course's grid also with heads ranked by the 12-prompt scan of only the
    layers the recipe scans (``"task_from"``). And the residual-stream task vector at each layer
    (scale 1 and 2), for reference.
    """
    from fv_exercises.heads import COURSE_RECIPE as R
    from fv_exercises.heads import function_vector, nan_outside, top_heads

    n = model.cfg.n_layers
    layers = search_layers(n)
    keys: list[Key] = []
    variants: list[dict] = []
    rankings = {"task": stats.effects(), "task8": stats.effects(8), "task4": stats.effects(4),
                "universal": universal}
    for heads, effects in rankings.items():
        for k in SEARCH_KS:
            raw = function_vector(model, stats.mean_z, top_heads(effects, k))
            for scale in SEARCH_SCALES:
                if heads in ("task8", "task4") and scale == 1.0:
                    continue
                for layer in layers:
                    keys.append((heads, k, (layer,), scale))
                    variants.append({layer: raw * scale})
            if heads == "task" and k in (5, 10, 40):
                gap = max(1, round(0.07 * n))  # two or three layers, about 2 layers apart (of 30)
                for first in layers[::2]:
                    for spread in ((first, first + 2 * gap), (first, first + gap, first + 2 * gap)):
                        if spread[-1] >= n:
                            continue
                        for scale in (1.0, 2.0):
                            keys.append((heads, k, spread, scale))
                            variants.append({l: raw * scale for l in spread})
    scanned = nan_outside(stats.effects(), R.scanned_heads(n, model.cfg.n_heads))
    for k in R.ks:
        raw = function_vector(model, stats.mean_z, top_heads(scanned, k))
        for scale in R.scales:
            for layer in R.layers(n):
                keys.append(("task_from", k, (layer,), scale))
                variants.append({layer: raw * scale})
    for layer in range(1, n, max(1, n // 15)):
        for scale in (1.0, 2.0):
            keys.append(("tv", 0, (layer,), scale))
            variants.append({layer: stats.task_vectors[layer] * scale})
    return keys, variants


@dataclass
class SearchData:
    """Per task: candidate keys, top-1 correctness ``[n_candidates, n]`` on the zero-shot train
    queries and (``shuffled``) on their shuffled-label few-shot prompts, and few-shot correctness
    ``[n]`` on the same queries (the reference); ``effects``: every shipped task's full 12-prompt
    scan, ``[n_layers, n_heads]``."""

    keys: list[Key]
    zero: dict[str, Tensor]
    few_shot: dict[str, Tensor]
    n_layers: int
    effects: dict[str, Tensor] | None = None
    shuffled: dict[str, Tensor] | None = None


def search_data(model, tasks: Sequence[str], seed: int = 0, progress: bool = True) -> SearchData:
    """Score every candidate of :func:`candidate_variants` on ``N_SEARCH_QUERIES`` zero-shot
    **train** queries of each task (the draw the course's recipe selects on), and on the
    shuffled-label few-shot prompts of the same queries."""
    from tqdm.auto import tqdm

    from fv_exercises.heads import SELECT_SEED_OFFSET
    from fv_exercises.tasks import ICLDataset, task_names

    every = task_names()
    stats = {t: task_stats(model, t, seed) for t in tqdm(every, desc="scans", disable=not progress)}
    effects = {t: stats[t].effects() for t in every}  # [n_layers, n_heads] each
    universal = torch.stack(list(effects.values())).mean(0)
    zero, few, shuffled, keys = {}, {}, {}, []
    for task in tqdm(tasks, desc="candidates", disable=not progress):
        select = ICLDataset.build(task, N_SEARCH_QUERIES, seed=seed + SELECT_SEED_OFFSET, split="train")
        keys, variants = candidate_variants(model, stats[task], universal)
        zero[task] = steered_top1(model, select.zero_shot_prompts, select.answers, variants)
        shuffled[task] = steered_top1(model, select.corrupted_prompts, select.answers, variants)
        few[task] = top1_correct(model, select.prompts, select.answers)
    return SearchData(keys, zero, few, model.cfg.n_layers, effects, shuffled)


@dataclass(frozen=True)
class Family:
    """A way of building function vectors: a set of candidates, and whether one candidate is
    chosen for all tasks (``per_task=False``) or one per task."""

    name: str
    description: str
    members: Callable[[Key, int], bool]  # (key, n_layers) -> is the key in the family
    per_task: bool = True
    function_vector: bool = True  # False for the residual-stream task vector (a reference)
    scan_cost: float = 1.0  # (head, prompt) pairs scanned, relative to one task's full 12-prompt scan
    with_shuffled: bool = False  # choose on zero-shot + shuffled-label accuracy (not zero-shot alone)


def search_layers(n_layers: int) -> list[int]:
    """The single layers the search tries (:data:`SEARCH_FRACTIONS` of the depth)."""
    return sorted({min(n_layers - 1, round(f * n_layers)) for f in SEARCH_FRACTIONS})


def _third(n_layers: int) -> int:
    """The search layer closest to a third of the depth (Todd et al.'s choice)."""
    return min(search_layers(n_layers), key=lambda l: abs(l - n_layers / 3))


def families(n_layers: int) -> list[Family]:
    """The recipe families the search compares (all candidates are in :func:`candidate_variants`)
    for a model with ``n_layers`` blocks."""
    from fv_exercises.heads import COURSE_RECIPE as R
    from fv_exercises.tasks import task_names

    n_tasks = float(len(task_names()))  # universal heads need every task's scan
    from_cost = 1 - R.first_scanned_layer(n_layers) / n_layers

    def course(heads: str):
        def member(key: Key, n: int) -> bool:
            h, k, layers, scale = key
            return (h == heads and len(layers) == 1 and k in R.ks and scale in R.scales
                    and layers[0] in R.layers(n))
        return member

    return [
        Family("paper", "universal heads, k=10, scale 1, at a third of the depth (Todd et al.)",
               lambda key, n: key[0] == "universal" and key[1] == 10 and key[3] == 1.0
               and key[2] == (_third(n),), per_task=False, scan_cost=n_tasks),
        Family("course v1", "task heads, k=10, scale 1, layer chosen per task (the previous recipe)",
               lambda key, n: key[0] == "task" and key[1] == 10 and key[3] == 1.0 and len(key[2]) == 1),
        Family("one for all", "task or universal heads: one (k, layer, scale) for every task",
               lambda key, n: key[0] in ("task", "universal") and len(key[2]) == 1, per_task=False,
               scan_cost=n_tasks),
        Family("layer+scale, k=10", "task heads, k=10; layer and scale chosen per task",
               lambda key, n: key[0] == "task" and key[1] == 10 and len(key[2]) == 1),
        Family("universal, full grid", "universal heads; k, layer, scale chosen per task",
               lambda key, n: key[0] == "universal" and len(key[2]) == 1, scan_cost=n_tasks),
        Family("task, full grid", "task heads (12-prompt scan); k, layer, scale chosen per task",
               lambda key, n: key[0] == "task" and len(key[2]) == 1),
        Family("task, 2-3 layers", "task heads; k, first layer, scale chosen per task; the vector "
               "added at two or three layers", lambda key, n: key[0] == "task" and len(key[2]) > 1),
        Family("task, 1-3 layers", "task heads; one, two or three layers, chosen per task",
               lambda key, n: key[0] == "task"),
        Family("course grid, universal", "the course's grid of k, layer, scale with universal heads",
               course("universal"), scan_cost=n_tasks),
        Family("course grid, every head", "the course's grid of k, layer, scale with task heads "
               "from a 12-prompt scan of every head", course("task")),
        Family("course grid", "the course's grid of k, layer, scale with task heads from a "
               f"12-prompt scan of the heads in layers {R.first_scanned_layer(n_layers)}+",
               course("task_from"), scan_cost=from_cost),
        Family("course grid, zero-shot + shuffled", "the course grid, chosen per task on "
               "zero-shot plus shuffled-label accuracy (not zero-shot alone)", course("task_from"),
               scan_cost=from_cost, with_shuffled=True),
        Family("task, 1-3 layers, zero-shot + shuffled", "task heads; one, two or three layers, "
               "chosen per task on zero-shot plus shuffled-label accuracy", lambda key, n: key[0] == "task",
               with_shuffled=True),
        Family("course grid, 4-prompt scan", "the course's grid with task heads from a 4-prompt "
               "scan of every head", course("task4"), scan_cost=1 / 3),
        Family("residual task vector", "notebook 01's task vector, layer and scale chosen per task "
               "(a reference, not a function vector)", lambda key, n: key[0] == "tv",
               function_vector=False, scan_cost=0.0),
    ]


@dataclass(frozen=True)
class FamilyScore:
    family: Family
    n_candidates: int
    train_ratio: float  # cross-fitted mean over tasks of accuracy / few-shot accuracy
    per_task: dict[str, float]  # cross-fitted accuracy per task
    shuffled_gap: float | None = None  # cross-fitted mean over tasks of shuffled + FV - few-shot


def cross_fit(data: SearchData, family: Family, repeats: int = 25, seed: int = 0) -> FamilyScore:
    """Score a family honestly on train queries: split each task's queries in two halves, choose
    on one half (per task, or one candidate for all tasks), score on the other; both ways round,
    over ``repeats`` random splits. Returns the mean over tasks of accuracy / few-shot accuracy
    and, when ``data`` has shuffled-label scores, of shuffled + FV accuracy minus few-shot."""
    members = [i for i, key in enumerate(data.keys) if family.members(key, data.n_layers)]
    if not members:
        raise ValueError(f"family {family.name!r} has no candidates")
    if family.with_shuffled and data.shuffled is None:
        raise ValueError(f"family {family.name!r} chooses on shuffled-label scores; data has none")
    idx = torch.tensor(members)
    tasks = list(data.zero)
    n = data.zero[tasks[0]].shape[1]
    gen = torch.Generator().manual_seed(seed)
    ratios, gaps, accs = [], [], {t: [] for t in tasks}

    def criterion(t: str, half: Tensor) -> Tensor:  # [len(members)]: what the choice maximises
        score = data.zero[t][idx][:, half].float().mean(1)
        if family.with_shuffled:
            score = score + data.shuffled[t][idx][:, half].float().mean(1)
        return score

    for _ in range(repeats):
        perm = torch.randperm(n, generator=gen, device="cpu")
        for a, b in ((perm[: n // 2], perm[n // 2:]), (perm[n // 2:], perm[: n // 2])):
            chosen = {}
            if family.per_task:
                for t in tasks:
                    chosen[t] = int(criterion(t, a).argmax())
            else:
                score = sum(criterion(t, a) / data.few_shot[t][a].float().mean().clamp(min=0.05)
                            for t in tasks)
                chosen = dict.fromkeys(tasks, int(score.argmax()))
            r, g = [], []
            for t in tasks:
                acc = data.zero[t][idx[chosen[t]], b].float().mean().item()
                few = data.few_shot[t][b].float().mean().item()
                accs[t].append(acc)
                r.append(acc / max(few, 0.05))
                if data.shuffled is not None:
                    g.append(data.shuffled[t][idx[chosen[t]], b].float().mean().item() - few)
            ratios.append(sum(r) / len(r))
            if g:
                gaps.append(sum(g) / len(g))
    return FamilyScore(family, len(members), sum(ratios) / len(ratios),
                       {t: sum(v) / len(v) for t, v in accs.items()},
                       sum(gaps) / len(gaps) if gaps else None)


TIE = 0.02  # cross-fitted ratios closer than this are a tie: the cheaper family wins


def choose(scores: Sequence[FamilyScore]) -> FamilyScore:
    """The rule: the function-vector family with the best cross-fitted train ratio (accuracy /
    few-shot accuracy, mean over tasks); among those within :data:`TIE` of it, the one with the
    fewest candidates (cheapest to build for a new task), then the least scanning, then a family
    that chooses on zero-shot accuracy alone."""
    fv = [s for s in scores if s.family.function_vector]
    best = max(s.train_ratio for s in fv)
    close = [s for s in fv if s.train_ratio >= best - TIE]
    return min(close, key=lambda s: (s.n_candidates, s.family.scan_cost, s.family.with_shuffled,
                                     -s.train_ratio))


# --------------------------------------------------------------------------------------------
# Which tasks, and held-out words
# --------------------------------------------------------------------------------------------

ICL_THRESHOLD = 0.5  # the bar: tasks few-shot prompting does at least half the time
N_TEST, TEST_SEED = 40, 1  # the test prompts of docs/task_accuracy.md and the main job


def few_shot_accuracies(model, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Few-shot top-1 accuracy of each task on its ``N_TEST`` test prompts (as in
    docs/task_accuracy.md); kept on disk like the function vectors."""
    from fv_exercises.evaluation import top1_accuracy
    from fv_exercises.disk_cache import disk_cached, task_data
    from fv_exercises.tasks import ICLDataset, task_names

    tasks = list(tasks or task_names())

    def compute() -> dict:
        out = {}
        for task in tasks:
            test = ICLDataset.build(task, N_TEST, seed=TEST_SEED, split="test")
            out[task] = top1_accuracy(model, test.prompts, test.answers)
        return out

    return disk_cached(model, ("few_shot", tuple(tasks), N_TEST, TEST_SEED, task_data(tasks)),
                       compute, rebuild=("few_shot", tuple(tasks)))


def icl_tasks(model, threshold: float = ICL_THRESHOLD) -> list[str]:
    """The shipped tasks whose few-shot accuracy on the test prompts is at least ``threshold``
    (the tasks a function vector is measured on: a vector cannot carry a task the model cannot
    do in context)."""
    return [t for t, a in few_shot_accuracies(model).items() if a >= threshold]


def load_heldout(task: str):
    """Pairs written for the generalisation check, in no shipped task: a :class:`~fv_exercises.tasks.Task`."""
    import json
    from importlib import resources

    from fv_exercises.tasks import Task

    path = resources.files("fv_exercises") / "data" / "heldout" / f"{task}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Task(raw["name"], raw["description"], tuple((str(x), str(y)) for x, y in raw["pairs"]))


def heldout_tasks() -> list[str]:
    """Tasks that have held-out words (``data/heldout/<task>.json``)."""
    from importlib import resources

    folder = resources.files("fv_exercises") / "data" / "heldout"
    return sorted(p.name[:-len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def heldout_dataset(task: str, n_shots: int = 5, seed: int = TEST_SEED):
    """Every held-out word of ``task`` once as a query; demonstrations from the shipped task's
    **train** pairs (as for the test split): an :class:`~fv_exercises.tasks.ICLDataset`."""
    import random

    from fv_exercises.tasks import ICLDataset, QUERY_TEMPLATE, _derangement, format_prompt, load_task

    train, _ = load_task(task).split()
    rng = random.Random(f"{task}-heldout-{n_shots}-{seed}")
    queries = list(load_heldout(task).pairs)
    demos_all, prompts, corrupted, zero_shot = [], [], [], []
    for x, _ in queries:
        demos = tuple(rng.sample(list(train), n_shots))
        perm = _derangement(n_shots, rng)
        shuffled = tuple((demos[i][0], demos[perm[i]][1]) for i in range(n_shots))
        demos_all.append(demos)
        prompts.append(format_prompt(demos, x))
        corrupted.append(format_prompt(shuffled, x))
        zero_shot.append(QUERY_TEMPLATE.format(x=x))
    return ICLDataset(task=task, n_shots=n_shots, seed=seed, split="heldout",
                      queries=tuple(x for x, _ in queries), answers=tuple(y for _, y in queries),
                      demos=tuple(demos_all), prompts=tuple(prompts),
                      corrupted_prompts=tuple(corrupted), zero_shot_prompts=tuple(zero_shot))


# --------------------------------------------------------------------------------------------
# The report: the chosen recipe on test queries and on held-out words
# --------------------------------------------------------------------------------------------

COLUMNS = ("few-shot", "zero-shot", "zero-shot + task vector", "zero-shot + FV (task heads)",
           "zero-shot + FV (universal heads)", "shuffled + FV")


@dataclass
class TaskReport:
    """Per-query top-1 correctness (``[n]`` bool) of each column of the table, for one task and
    one query set (test queries or held-out words), plus what was chosen on train."""

    task: str
    queries: str  # "test" or "held-out"
    correct: dict[str, Tensor]
    fv_layer: int
    fv_k: int
    fv_scale: float
    tv_layer: int

    @property
    def ratio(self) -> float:
        """Zero-shot + FV (the course's recipe) as a share of few-shot accuracy."""
        few = self.correct["few-shot"].float().mean().item()
        return self.correct["zero-shot + FV (task heads)"].float().mean().item() / few if few else float("nan")


def residual_task_vector(model, task: str, seed: int = 0,
                         n_train: int | None = None) -> tuple[Tensor, int]:
    """Notebook 01's task vector as the main job builds it: mean last-position ``resid_post`` of
    ``n_train`` (default 32) clean train prompts minus that of their zero-shot forms, at the
    layer (chosen on the same train queries, zero-shot) where adding it works best:
    ``([d_model], layer)``."""
    from fv_exercises.evaluation import mean_resid_post
    from fv_exercises.report import N_TRAIN
    from fv_exercises.tasks import ICLDataset

    train = ICLDataset.build(task, n_train or N_TRAIN, seed=seed, split="train")
    vectors = mean_resid_post(model, train.prompts) - mean_resid_post(model, train.zero_shot_prompts)
    sweep = steered_top1(model, train.zero_shot_prompts, train.answers,
                         [{l: vectors[l]} for l in range(model.cfg.n_layers)]).float().mean(1)
    best = int(sweep.argmax())
    return vectors[best], best


def task_report(model, task: str, data, seed: int = 0) -> TaskReport:
    """Every column of the table for ``task`` on the queries of ``data`` (an ICLDataset: the
    test split, or :func:`heldout_dataset`). Vectors and their layers come from train prompts."""
    import dataclasses

    from fv_exercises.heads import COURSE_RECIPE, function_vector_details

    fv = function_vector_details(model, task, seed)
    fv_u = function_vector_details(model, task, seed, dataclasses.replace(COURSE_RECIPE, heads="universal"))
    tv, tv_layer = residual_task_vector(model, task, seed)
    zs, answers = data.zero_shot_prompts, data.answers
    zero = steered_top1(model, zs, answers, [{}, {tv_layer: tv}, {fv.layer: fv.vector},
                                             {fv_u.layer: fv_u.vector}])
    shuffled = steered_top1(model, data.corrupted_prompts, answers, [{fv.layer: fv.vector}])[0]
    correct = {"few-shot": top1_correct(model, data.prompts, answers), "zero-shot": zero[0],
               "zero-shot + task vector": zero[1], "zero-shot + FV (task heads)": zero[2],
               "zero-shot + FV (universal heads)": zero[3], "shuffled + FV": shuffled}
    return TaskReport(task, data.split, correct, fv.layer, fv.k, fv.scale, tv_layer)


def _cell(correct: Tensor) -> str:
    from fv_exercises.stats import accuracy

    a = accuracy(correct)
    return f"{a.value:.0%} {a.interval}"


def _report_table(reports: Sequence[TaskReport]) -> list[str]:
    """Markdown rows: one per task, then all tasks pooled, then the goal's summary lines."""
    from fv_exercises.stats import accuracy, paired_difference

    head = "| task | n | " + " | ".join(COLUMNS) + " | FV / few-shot | FV: k, layer, scale | TV layer |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS) + "---:|---|---:|"]
    for r in reports:
        n = len(r.correct["few-shot"])
        lines.append(f"| {r.task} | {n} | " + " | ".join(_cell(r.correct[c]) for c in COLUMNS)
                     + f" | {r.ratio:.0%} | {r.fv_k}, {r.fv_layer}, {r.fv_scale:g} | {r.tv_layer} |")
    pooled = {c: torch.cat([r.correct[c] for r in reports]) for c in COLUMNS}
    n = len(pooled["few-shot"])
    mean_ratio = sum(r.ratio for r in reports) / len(reports)
    lines.append(f"| **all, pooled** | {n} | " + " | ".join(_cell(pooled[c]) for c in COLUMNS)
                 + f" | {mean_ratio:.0%} (mean) | | |")
    few = pooled["few-shot"].float().mean().item()
    pooled_ratio = pooled["zero-shot + FV (task heads)"].float().mean().item() / few if few else float("nan")
    lines += [
        "",
        f"- Zero-shot + function vector as a share of few-shot accuracy, mean over tasks: "
        f"**{mean_ratio:.0%}** (pooled over queries: {pooled_ratio:.0%}).",
        f"- Shuffled labels + function vector minus few-shot, paired over all {n} queries: "
        f"{paired_difference(pooled['shuffled + FV'], pooled['few-shot'])}.",
        f"- Function vector (task heads) minus the residual-stream task vector, paired: "
        f"{paired_difference(pooled['zero-shot + FV (task heads)'], pooled['zero-shot + task vector'])}.",
        f"- Task heads minus universal heads, paired: "
        f"{paired_difference(pooled['zero-shot + FV (task heads)'], pooled['zero-shot + FV (universal heads)'])}.",
    ]
    return lines


def _shuffled_tradeoff(scores: Sequence[FamilyScore], chosen: FamilyScore) -> list[str]:
    """A sentence on what choosing on shuffled-label accuracy too would change (train queries)."""
    by_name = {s.family.name: s for s in scores}
    both = by_name.get(f"{chosen.family.name}, zero-shot + shuffled")
    if both is None or chosen.shuffled_gap is None:
        return []
    moved = (abs(both.shuffled_gap - chosen.shuffled_gap) >= 0.01
             or abs(both.train_ratio - chosen.train_ratio) >= TIE)
    verdict = ("the two goals pull apart: which candidate is best depends on whether the "
               "demonstrations are missing or wrong" if moved else
               "choosing on zero-shot queries alone costs the shuffled-label goal nothing "
               "measurable here")
    return [f"Choosing {chosen.family.name}'s candidate on zero-shot plus shuffled-label accuracy "
            f"instead: shuffled + FV minus few-shot {both.shuffled_gap:+.1%} (zero-shot alone: "
            f"{chosen.shuffled_gap:+.1%}), zero-shot + FV / few-shot {both.train_ratio:.0%} "
            f"({chosen.train_ratio:.0%}); train queries, cross-fitted: {verdict}.", ""]


def _search_table(scores: Sequence[FamilyScore], chosen: FamilyScore) -> list[str]:
    tasks = list(scores[0].per_task)
    lines = ["| recipe family | candidates per task | head scanning (x one task's full scan) | "
             "FV / few-shot (train, cross-fitted) | shuffled + FV - few-shot (train, cross-fitted) | "
             + " | ".join(tasks) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(tasks)]
    for s in scores:
        name = f"**{s.family.name}** (chosen)" if s is chosen else s.family.name
        gap = "" if s.shuffled_gap is None else f"{s.shuffled_gap:+.0%}"
        lines.append(f"| {name}: {s.family.description} | {s.n_candidates} | "
                     f"{s.family.scan_cost:.2g} | {s.train_ratio:.0%} | {gap} | "
                     + " | ".join(f"{s.per_task[t]:.0%}" for t in tasks) + " |")
    return lines


def run_search(model, tasks: Sequence[str], seed: int = 0, progress: bool = True
               ) -> tuple[list[FamilyScore], FamilyScore]:
    """Score every family by cross-fitting on train queries, and apply :func:`choose`."""
    scores, chosen, _ = _search(model, tasks, seed, progress)
    return scores, chosen


def _search(model, tasks: Sequence[str], seed: int, progress: bool
            ) -> tuple[list[FamilyScore], FamilyScore, SearchData]:
    data = search_data(model, tasks, seed, progress)
    scores = [cross_fit(data, f) for f in families(data.n_layers)
              if any(f.members(key, data.n_layers) for key in data.keys)]
    return scores, choose(scores), data


def heads_below(effects: dict[str, Tensor], first_layer: int, k: int) -> tuple[int, int]:
    """How many of the ``k`` top heads of each task's full scan lie below ``first_layer``:
    ``(count, k * number of tasks)``."""
    from fv_exercises.heads import top_heads

    below = sum(l < first_layer for e in effects.values() for l, _ in top_heads(e, k))
    return below, k * len(effects)


def write_report(output: str = "docs/function_vectors.md", seed: int = 0, progress: bool = True) -> str:
    """Run the search and the reports on the embedded model; write them as Markdown."""
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from fv_exercises import load_model
    from fv_exercises.heads import COURSE_RECIPE
    from fv_exercises.tasks import ICLDataset

    start = time.time()
    model = load_model()
    few = few_shot_accuracies(model)
    tasks = [t for t, a in few.items() if a >= ICL_THRESHOLD]
    scores, chosen, data = _search(model, tasks, seed, progress)
    first = COURSE_RECIPE.first_scanned_layer(model.cfg.n_layers)
    below10, of10 = heads_below(data.effects, first, 10)
    below40, of40 = heads_below(data.effects, first, max(COURSE_RECIPE.ks))
    test = [task_report(model, t, ICLDataset.build(t, N_TEST, seed=TEST_SEED, split="test"), seed)
            for t in tqdm(tasks, desc="test queries", disable=not progress)]
    held = [task_report(model, t, heldout_dataset(t), seed)
            for t in tqdm([t for t in tasks if t in heldout_tasks()], desc="held-out words",
                          disable=not progress)]
    r = COURSE_RECIPE
    agrees = chosen.family.name == "course grid"
    lines = [
        "# Function vectors: the course's recipe, chosen on train queries, measured on test queries",
        "",
        f"Generated by `python -m fv_exercises.recipe table` (SmolLM2-135M-Instruct, float32, CPU, "
        f"{(time.time() - start) / 60:.0f} min). Top-1 accuracy of the answer's first token; every "
        "accuracy with its 95% Wilson interval; paired differences with a bootstrap interval over "
        "queries (`fv_exercises.stats`).",
        "",
        f"Tasks: the shipped tasks whose few-shot accuracy on the {N_TEST} test prompts is at least "
        f"{ICL_THRESHOLD:.0%} (computed: {', '.join(tasks)}; see docs/task_accuracy.md).",
        "",
        "## The recipe (`fv_exercises.heads.function_vector_for_task`)",
        "",
        f"1. Mean last-position output of every attention head over {r.n_prompts} clean few-shot "
        "**train** prompts.",
        f"2. Causal effect of every head in layers {first} to {model.cfg.n_layers - 1} on the "
        f"first {r.n_scan} of them with shuffled labels (exact scan, `head_effects`); heads ranked "
        f"by the task's own effects ({r.heads} heads). Why not the layers below {first}: a head "
        "patched at a layer is recomputed through every later layer, so the low layers are the "
        "expensive part of a scan, and in the full scans of all "
        f"{len(data.effects)} shipped tasks (train prompts) {below10} of the {of10} top-10 places "
        f"and {below40} of the {of40} top-{max(r.ks)} places are below layer {first}.",
        f"3. Candidates: the top-k heads for k in {list(r.ks)}, the sum of their mean outputs "
        f"scaled by {[f'{s:g}' for s in r.scales]}, added at one of the layers "
        f"{r.layers(model.cfg.n_layers)} (fractions {list(r.layer_fractions)} of the depth). The "
        f"candidate with the best zero-shot top-1 accuracy on {r.n_select} **train** queries wins "
        "(ties: higher mean log-probability of the answer).",
        "",
        "## How it was chosen: recipe families on train queries only",
        "",
        f"Every candidate was scored on {N_SEARCH_QUERIES} zero-shot train queries per task, and on "
        "the shuffled-label few-shot prompts of the same queries (heads from the same train "
        "prompts as the recipe). A family that chooses per task is scored "
        "honestly by cross-fitting: choose on half of the queries, score on the other half, both "
        "ways round, over 25 random splits; a family with one setting for all tasks chooses it on "
        "the first half of every task. The numbers are zero-shot accuracy / few-shot accuracy "
        "and shuffled-label accuracy minus few-shot accuracy, on the same queries, averaged over "
        "tasks; the per-task columns are the cross-fitted zero-shot accuracies. The rule "
        "(`fv_exercises.recipe.choose`): the function-vector family with the best zero-shot "
        f"ratio, and among those within {TIE:.0%} of it, the one with the fewest candidates (the "
        "cheapest to build), then the one that scans least, then one that chooses on zero-shot "
        "queries alone (no shuffled prompts to score).",
        "",
        *_search_table(scores, chosen),
        "",
        f"Chosen: **{chosen.family.name}**"
        + ("." if agrees else " -- which is NOT the recipe `heads.COURSE_RECIPE` implements: "
           "update it."),
        "",
        *_shuffled_tradeoff(scores, chosen),
        f"## Test queries ({N_TEST} per task, never used for a choice)",
        "",
        *_report_table(test),
        "",
        "## Generalisation: words written for this check, in no shipped task",
        "",
        "`fv_exercises/data/heldout/<task>.json`; every word once as the query, demonstrations "
        "from the task's train pairs (`fv_exercises.recipe.heldout_dataset`). The vectors and "
        "their layers are the same as above.",
        "",
        *_report_table(held),
        "",
    ]
    text = "\n".join(lines)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fv_exercises.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("search", help="compare recipe families on train queries and print the choice")
    table = sub.add_parser("table", help="write docs/function_vectors.md")
    table.add_argument("--output", default="docs/function_vectors.md")
    args = parser.parse_args(argv)
    if args.command == "search":
        from fv_exercises import load_model

        model = load_model()
        scores, chosen = run_search(model, icl_tasks(model))
        print("\n".join(_search_table(scores, chosen)))
        print(f"chosen: {chosen.family.name}")
    else:
        print(write_report(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
