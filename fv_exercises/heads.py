"""Which attention heads carry the task? Mean head outputs, causal effects, function vectors.

The recipe (Todd et al., *Function Vectors in Large Language Models*, section 2):

1. On **clean** few-shot prompts, record every head's ``z`` (its attention-weighted values,
   before the output projection) at the last position, and average over prompts:
   ``mean_z`` ``[n_layers, n_heads, d_head]``. A head's mean *output* is
   ``mean_z[l, h] @ W_O[l, h]`` (``[d_model]``), and since ``W_O`` is linear, patching
   ``z`` is the same as patching the head's output.
2. On **corrupted** prompts (shuffled labels: the format is intact, the task is not),
   replace one head's last-position ``z`` by its clean mean and measure how much the
   probability of the correct answer's first token goes up. That is the head's causal
   (indirect) effect. Averaged over prompts: ``effects`` ``[n_layers, n_heads]``.
3. The function vector is the sum of the mean outputs of the heads with the largest effects.

Three ways to compute the effects, all returning ``[n_layers, n_heads]``:

- :func:`head_effects_naive` -- one full forward pass per (head, prompt), exactly as written
  above. Simple, slow (270 heads x 25 prompts = 6750 forward passes).
- :func:`head_effects` -- the same numbers, fast. Patching a head at the *last* position
  cannot change any earlier position (the model is causal), so every earlier position's
  keys and values are those of the unpatched run. We run each prompt once, keep its prefix,
  and recompute only the last position, for many patched heads at once (a batch of
  one-position rows sharing the same prefix; the engines are in :mod:`fv_exercises.last_position`).
- :func:`attribution_head_effects` -- a first-order (gradient) estimate from one forward
  and one backward pass per batch of prompts: cheap, approximate.

Everything runs on the ``TransformerBridge`` returned by :func:`fv_exercises.load_model`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device
from fv_exercises.disk_cache import disk_cached, task_data
from fv_exercises.evaluation import answer_token_ids, tokenize_right_padded
from fv_exercises.last_position import (
    LlamaLastPosition,
    llama_style_problems,
    prefix_cache,
    run_last_position,
)

Head = tuple[int, int]
DEFAULT_BATCH = 8


def z_name(layer: int) -> str:
    """TransformerLens hook name of the per-head attention values ``z`` of block ``layer``."""
    return f"blocks.{layer}.attn.hook_z"


def _all_heads(model) -> list[Head]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    """Wrap in a notebook-aware progress bar only when asked (grading cells must stay silent)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


# --------------------------------------------------------------------------------------------
# 1. Mean head activations and head outputs
# --------------------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised by a hook once everything needed is recorded."""


def run_until(model, tokens: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The activations at the hook points ``names``, from a forward pass of ``tokens`` that stops
    once ``names[-1]`` (the last of them to run) is recorded: what comes after it (at least the
    unembedding of every position, a sixth of a forward pass on the embedded model) is skipped.
    The values are those of the full forward pass.
    """
    seen: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable:
        # keyed by the name asked for: the bridge's hook.name can be the aliased point's name
        def keep(value: Tensor, hook) -> None:
            seen[name] = value
            if name == names[-1]:
                raise _Enough

        return keep

    try:
        model.run_with_hooks(tokens, fwd_hooks=[(name, keeper(name)) for name in names])
    except _Enough:
        pass  # the bridge removes its hooks on the way out (a finally clause)
    missing = [name for name in names if name not in seen]
    if missing:
        raise RuntimeError(f"run_until: hook points {missing} never ran, or ran after {names[-1]}")
    return seen


def last_position_z(model, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Every head's ``z`` at each prompt's last position.

    Returns:
        ``[n_prompts, n_layers, n_heads, d_head]``.
    """
    names = [z_name(l) for l in range(model.cfg.n_layers)]
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start : start + batch_size])
            z = run_until(model, tokens, names)  # each [batch, pos, n_heads, d_head]
            rows = torch.arange(len(last), device=last.device)
            # keep each prompt's own last position
            out.append(torch.stack([z[name][rows, last] for name in names], dim=1))
    return torch.cat(out)


def mean_head_z(model, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Mean over (clean) prompts of each head's last-position ``z``.

    Returns:
        ``mean_z``: ``[n_layers, n_heads, d_head]``.
    """
    return last_position_z(model, prompts, batch_size=batch_size).mean(0)


def head_outputs_from_z(model, z: Tensor) -> Tensor:
    """Each head's output ``z[l, h] @ W_O[l, h]``.

    ``z``: ``[n_layers, n_heads, d_head]`` -> ``[n_layers, n_heads, d_model]``.

    This model's attention output projection has no bias, so the head outputs sum exactly to
    the attention block's output (and a head's "output" is well defined).
    """
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]
    return torch.einsum("lhd,lhdm->lhm", z.to(W_O.dtype), W_O)


# --------------------------------------------------------------------------------------------
# 2. Causal effects, the naive way: one forward pass per (head, prompt)
# --------------------------------------------------------------------------------------------


def _answer_prob(logits_row: Tensor, answer_id: int) -> float:
    """Probability of ``answer_id`` from one row of logits ``[d_vocab]`` (softmax in float32)."""
    return logits_row.float().softmax(-1)[answer_id].item()


def _patch_head_hook(head: int, pos: int, value: Tensor) -> Callable:
    """Hook on ``hook_z`` (``[batch, pos, n_heads, d_head]``): ``z[:, pos, head] = value``."""

    def hook(z: Tensor, hook=None) -> Tensor:
        z = z.clone()  # never edit the activation in place: return a new tensor
        z[:, pos, head] = value.to(z.device, z.dtype)
        return z

    return hook


def head_effects_naive(
    model,
    corrupted_prompts: Sequence[str],
    answers: Sequence[str],
    mean_z: Tensor,
    heads: Sequence[Head] | None = None,
    progress: bool = False,
) -> Tensor:
    """Causal effect of each head, one full forward pass per (head, prompt).

    ``effect[l, h]`` = mean over prompts of ``P_patched(answer) - P_corrupted(answer)``, where
    the patched run replaces ``z[last, h]`` of layer ``l`` by ``mean_z[l, h]``.

    Args:
        mean_z: ``[n_layers, n_heads, d_head]`` from :func:`mean_head_z` on clean prompts.
        heads: optional list of ``(layer, head)`` to scan; the others are ``NaN``.

    Returns:
        ``effects``: ``[n_layers, n_heads]``.
    """
    heads = _all_heads(model) if heads is None else [(int(l), int(h)) for l, h in heads]
    answer_ids = answer_token_ids(model, answers)
    total = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=model_device(model))
    with torch.no_grad():
        n = len(corrupted_prompts)
        for i in _progress(range(n), n, progress, "naive head effects (prompts)"):
            tokens, last = tokenize_right_padded(model, [corrupted_prompts[i]])
            pos, ans = int(last[0]), int(answer_ids[i])
            p_corrupted = _answer_prob(model(tokens)[0, pos], ans)
            for l, h in heads:
                hook = _patch_head_hook(h, pos, mean_z[l, h])
                logits = model.run_with_hooks(tokens, fwd_hooks=[(z_name(l), hook)])
                total[l, h] += _answer_prob(logits[0, pos], ans) - p_corrupted
    return nan_outside(total / len(corrupted_prompts), heads)


# --------------------------------------------------------------------------------------------
# 3. Causal effects, fast: reuse the prefix, recompute only the last position
# --------------------------------------------------------------------------------------------


def head_effects(
    model,
    corrupted_prompts: Sequence[str],
    answers: Sequence[str],
    mean_z: Tensor,
    heads: Sequence[Head] | None = None,
    batch_heads: int | None = None,
    progress: bool = False,
    check_tol: float = 1e-4,
) -> Tensor:
    """Same numbers as :func:`head_effects_naive`, one to two orders of magnitude faster.

    Patching a head at the last position changes nothing before it, so each prompt's prefix is
    run once and only the last position is recomputed, for many patched heads at once (see
    :mod:`fv_exercises.last_position`). Two exact engines:

    - Llama-style models (the embedded one): re-implemented blocks; a head patched at layer ``l``
      is recomputed from layer ``l`` upward only;
    - any other architecture: the model's own key/value cache through the bridge (about 3x slower
      than the Llama engine, still far faster than the naive scan).

    A model that has neither falls back to :func:`head_effects_naive` (same numbers, slow), saying
    so once. Every prompt also carries an unpatched control row; if its answer probability differs
    from the bridge's own forward pass by more than ``check_tol``, this raises rather than return
    wrong numbers.

    Args:
        mean_z: ``[n_layers, n_heads, d_head]`` from :func:`mean_head_z` on clean prompts.
        heads: optional list of ``(layer, head)``; the others are ``NaN`` (default: all heads).
        batch_heads: at most this many patched heads per batch (default: all at once with the
            Llama engine, 64 with the key/value cache; lower it only to save memory).
        progress: show a tqdm progress bar (off by default: grading cells must not write to
            stderr).

    Returns:
        ``effects``: ``[n_layers, n_heads]``.
    """
    heads = _all_heads(model) if heads is None else sorted({(int(l), int(h)) for l, h in heads})
    if not llama_style_problems(model):
        return _head_effects_llama(model, corrupted_prompts, answers, mean_z, heads, batch_heads,
                                   progress, check_tol)
    tokens = model.to_tokens(corrupted_prompts[0]) if corrupted_prompts else None
    if tokens is not None and prefix_cache(model, tokens) is None:
        _say_once(f"head_effects: {type(model.original_model).__name__} has no key/value cache "
                  "the scan can reuse; using the naive scan (same numbers, one forward pass per "
                  "head and prompt).")
        return head_effects_naive(model, corrupted_prompts, answers, mean_z, heads, progress)
    return _head_effects_kv(model, corrupted_prompts, answers, mean_z, heads,
                            batch_heads or 64, progress, check_tol)


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    """Print ``message`` once per process (to stdout: grade cells must not write to stderr)."""
    if message not in _SAID:
        _SAID.add(message)
        print(message)


def _check_control(p_check: Tensor, p_reference: Tensor, check_tol: float) -> None:
    worst = (p_check - p_reference).abs().max().item()
    if worst > check_tol:
        raise RuntimeError(
            "head_effects: the last-position recomputation disagrees with the bridge's forward "
            f"(answer probability off by {worst:.2e}); use head_effects_naive for this model.")


def _head_effects_kv(model, corrupted_prompts: Sequence[str], answers: Sequence[str],
                     mean_z: Tensor, heads: list[Head], batch_heads: int, progress: bool,
                     check_tol: float) -> Tensor:
    """The exact scan on the model's own KV cache: one prefix pass per prompt, then one pass of
    ``1 + len(chunk)`` one-token rows per chunk of heads (row 0 unpatched, row r patches head r)."""
    answer_ids = answer_token_ids(model, answers)
    total = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=model_device(model))
    chunks = [heads[i:i + batch_heads] for i in range(0, len(heads), batch_heads)]
    with torch.no_grad():
        for i in _progress(range(len(corrupted_prompts)), len(corrupted_prompts), progress,
                           "head effects (prompts)"):
            tokens = model.to_tokens(corrupted_prompts[i])
            ans = int(answer_ids[i])
            p_corrupted = model(tokens)[0, -1].float().softmax(-1)[ans]
            cache = prefix_cache(model, tokens)
            for chunk in chunks:
                hooks = []
                for layer in sorted({l for l, _ in chunk}):
                    rows = torch.tensor([1 + r for r, (l, _) in enumerate(chunk) if l == layer],
                                        device=mean_z.device)
                    cols = torch.tensor([h for l, h in chunk if l == layer], device=mean_z.device)
                    hooks.append((z_name(layer), _patch_rows_hook(rows, cols, mean_z[layer, cols])))
                logits = run_last_position(model, tokens, cache, 1 + len(chunk), hooks)
                probs = logits.float().softmax(-1)[:, ans]
                _check_control(probs[:1], p_corrupted[None], check_tol)
                for (l, h), p in zip(chunk, probs[1:].tolist()):
                    total[l, h] += p - p_corrupted.item()
    return nan_outside(total / len(corrupted_prompts), heads)


def _patch_rows_hook(rows: Tensor, cols: Tensor, values: Tensor) -> Callable:
    """Hook on ``hook_z`` (``[R, 1, n_heads, d_head]``): ``z[rows[i], -1, cols[i]] = values[i]``."""

    def hook(z: Tensor, hook=None) -> Tensor:
        z = z.clone()
        z[rows, -1, cols] = values.to(z.device, z.dtype)
        return z

    return hook


def nan_outside(effects: Tensor, heads: list[Head]) -> Tensor:
    """``effects`` (``[n_layers, n_heads]``) with every head not in ``heads`` set to NaN (not
    scanned): what a scan of only ``heads`` returns, since each head's effect is exact alone."""
    out = torch.full_like(effects, float("nan"))
    for l, h in heads:
        out[l, h] = effects[l, h]
    return out


def _head_effects_llama(model, corrupted_prompts: Sequence[str], answers: Sequence[str],
                        mean_z: Tensor, heads: list[Head], batch_heads: int | None,
                        progress: bool, check_tol: float) -> Tensor:
    """The exact scan with :class:`LlamaLastPosition`.

    For a batch of prompts: one forward pass of the bridge gives every layer's ``resid_pre``
    (``[batch, pos, d_model]``) and ``z`` (``[batch, pos, n_heads, d_head]``). For a head
    ``(l, h)`` the patched run differs only at the last position and only from layer ``l`` on,
    so we build one row, ``resid_post[l]`` at the last position with ``z[last, h]`` replaced by
    ``mean_z[l, h]``, then push it through layers ``l+1 ..`` alone, attending to the prefix's
    (unchanged) keys and values. All heads travel together as a batch of rows per prompt that
    grows layer by layer; prompts are batched too.
    """
    fast = LlamaLastPosition(model)
    batch_heads = len(heads) if batch_heads is None else max(1, int(batch_heads))
    chunks = [heads[i : i + batch_heads] for i in range(0, len(heads), batch_heads)]
    n_layers = model.cfg.n_layers
    pre_names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    names = pre_names + [z_name(l) for l in range(n_layers)] + [final]  # final runs last
    answer_ids = answer_token_ids(model, answers)
    total = torch.zeros(n_layers, model.cfg.n_heads, device=model_device(model))
    n = len(corrupted_prompts)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="head effects (prompts)")
    with torch.no_grad():
        for start in range(0, n, DEFAULT_BATCH):
            batch = corrupted_prompts[start : start + DEFAULT_BATCH]
            tokens, last = tokenize_right_padded(model, batch)
            ans = answer_ids[start : start + len(last)]
            cache = run_until(model, tokens, names)
            rows = torch.arange(len(last), device=last.device)
            # the bridge's residual stream, unembedded at the last position only: [B]
            p_corrupted = fast.answer_probs(cache[final][rows, last][:, None], ans)[:, 0]
            prefix = _Prefix(
                resid_pre=[cache[name] for name in pre_names],  # each [B, S, d_model]
                z_last=[cache[z_name(l)][rows, last] for l in range(n_layers)],  # [B, H, d_head]
                last=last,
            )
            del cache
            for c, chunk in enumerate(chunks):
                probs, p_check = _scan_chunk(fast, prefix, chunk, mean_z, ans, with_check=c == 0)
                if p_check is not None:
                    _check_control(p_check, p_corrupted, check_tol)
                effect = (probs - p_corrupted[:, None]).sum(0)  # summed over prompts: [len(chunk)]
                for (l, h), e in zip(chunk, effect.tolist()):
                    total[l, h] += e
            if bar is not None:
                bar.update(len(last))
    if bar is not None:
        bar.close()
    return nan_outside(total / n, heads)


@dataclass
class _Prefix:
    """What the Llama scan keeps from the unpatched forward pass of a batch of ``B`` prompts."""

    resid_pre: list[Tensor]  # per layer: [B, S, d_model], every position (right-padded)
    z_last: list[Tensor]  # per layer: [B, n_heads, d_head], each prompt's last position
    last: Tensor  # [B]: index of each prompt's last position


def _scan_chunk(
    fast: LlamaLastPosition,
    prefix: _Prefix,
    chunk: list[Head],
    mean_z: Tensor,
    answer_ids: Tensor,
    with_check: bool,
) -> tuple[Tensor, Tensor | None]:
    """P(answer) with each head of ``chunk`` (sorted by layer) patched: ``[B, len(chunk)]``.

    With ``with_check``, one extra unpatched row per prompt runs from layer 0; its answer
    probabilities (``[B]``) are returned to compare with the bridge's.
    """
    n_layers = len(fast.layers)
    last = prefix.last
    B = len(last)
    S = prefix.resid_pre[0].shape[1]
    batch = torch.arange(B, device=last.device)
    cos, sin = fast.cos_sin(S, prefix.resid_pre[0])  # [1, S, d_head]
    cos_p, sin_p = cos[0, last][:, None], sin[0, last][:, None]  # [B, 1, d_head]
    # [B, S]: positions before the last
    prefix_mask = torch.arange(S, device=last.device)[None] < last[:, None]
    first = 0 if with_check else chunk[0][0]
    # [B, R, d_model]: the rows (versions of each prompt's last position) grow layer by layer
    rows = prefix.resid_pre[0].new_zeros(B, 0, prefix.resid_pre[0].shape[-1])
    for l in range(first, n_layers):
        resid_last = prefix.resid_pre[l][batch, last]  # [B, d_model], unpatched
        if with_check and l == 0:
            rows = resid_last[:, None]  # control row: the unpatched last position
        if rows.shape[1]:
            # rows patched below layer l (and the control row): their last position is new, so
            # recompute its attention over the prefix's keys/values and its own new key/value
            kv = fast.prefix_kv(l, prefix.resid_pre[l], cos, sin)
            z = fast.attention(l, rows, kv, prefix_mask, cos_p, sin_p)
            rows = fast.finish_block(l, rows, z)
        new = [h for (hl, h) in chunk if hl == l]
        if new:
            # patched at layer l: the unpatched z of all heads, except head h set to its clean mean
            z = prefix.z_last[l][:, None].repeat(1, len(new), 1, 1)  # [B, len(new), H, d_head]
            heads_new = torch.arange(len(new), device=z.device)
            z[:, heads_new, new] = mean_z[l, new].to(z.device, z.dtype)
            resid = resid_last[:, None].expand(-1, len(new), -1)
            rows = torch.cat([rows, fast.finish_block(l, resid, z)], dim=1)
    probs = fast.answer_probs(rows, answer_ids)  # [B, R]
    if with_check:
        return probs[:, 1:], probs[:, 0]
    return probs, None


# --------------------------------------------------------------------------------------------
# 4. Attribution patching: a gradient estimate of every head's effect at once
# --------------------------------------------------------------------------------------------


def attribution_head_effects(
    model,
    corrupted_prompts: Sequence[str],
    answers: Sequence[str],
    mean_z: Tensor,
    batch_size: int = DEFAULT_BATCH,
) -> Tensor:
    """First-order estimate of :func:`head_effects`: ``[n_layers, n_heads]``.

    ``P(answer)`` is approximated as linear in each head's last-position ``z``:
    ``effect[l, h] ~ dP/dz[last, h] . (mean_z[l, h] - z_corrupted[last, h])``, averaged over
    prompts. One forward and one backward pass per batch of prompts, instead of one forward
    pass per head. Approximate: heads whose effect is non-linear (e.g. saturated softmax) are
    misjudged.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    answer_ids = answer_token_ids(model, answers)
    total = torch.zeros(n_layers, n_heads, device=model_device(model))
    for start in range(0, len(corrupted_prompts), batch_size):
        tokens, last = tokenize_right_padded(model, corrupted_prompts[start : start + batch_size])
        rows = torch.arange(len(last), device=last.device)
        # Parameters are frozen, so nothing in the forward pass requires grad. Add a zero
        # tensor that does to every z: d(P)/d(delta) = d(P)/d(z), through all later layers.
        # (Detaching z itself and making it a leaf would cut the paths through later heads.)
        deltas: dict[int, Tensor] = {}
        z_seen: dict[int, Tensor] = {}

        def make_hook(layer: int) -> Callable:
            def hook(z: Tensor, hook=None) -> Tensor:
                deltas[layer] = torch.zeros_like(z, requires_grad=True)
                z_seen[layer] = z.detach()
                return z + deltas[layer]

            return hook

        fwd_hooks = [(z_name(l), make_hook(l)) for l in range(n_layers)]
        with torch.enable_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)  # hooks removed on exit
            ans = answer_ids[start : start + len(last)]
            probs = logits[rows, last].float().softmax(-1)[rows, ans]
            # each prompt's P depends only on its own row, so one backward of the sum suffices;
            # autograd.grad (not .backward) leaves no .grad attributes behind
            grads = torch.autograd.grad(probs.sum(), [deltas[l] for l in range(n_layers)])
        for l in range(n_layers):
            g = grads[l][rows, last]  # [b, n_heads, d_head]
            dz = mean_z[l].to(g.device, g.dtype) - z_seen[l][rows, last]
            total[l] += (g * dz).sum(-1).sum(0)
        del logits, probs, grads, deltas, z_seen
    return total / len(corrupted_prompts)


# --------------------------------------------------------------------------------------------
# 5. Top heads and the function vector
# --------------------------------------------------------------------------------------------


def top_heads(effects: Tensor, k: int) -> list[Head]:
    """The ``k`` heads with the largest effect, largest first, as ``[(layer, head), ...]``.

    ``NaN`` entries (heads not scanned) are never chosen.
    """
    flat = torch.nan_to_num(effects.flatten().float(), nan=float("-inf"))
    k = min(k, int(torch.isfinite(flat).sum()))
    idx = flat.topk(k).indices.tolist()  # topk returns values sorted descending
    n_heads = effects.shape[1]
    return [(i // n_heads, i % n_heads) for i in idx]


def function_vector(model, mean_z: Tensor, heads: Sequence[Head]) -> Tensor:
    """Sum of the chosen heads' mean outputs ``mean_z[l, h] @ W_O[l, h]``: ``[d_model]``."""
    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]
    fv = torch.zeros(W_O.shape[-1], dtype=W_O.dtype, device=W_O.device)
    for l, h in heads:
        fv = fv + mean_z[l, h].to(W_O.dtype) @ W_O[l, h]
    return fv


# --------------------------------------------------------------------------------------------
# 6. The course's function vector for a task
# --------------------------------------------------------------------------------------------
#
# How the recipe below was chosen (on train queries only) and how it does on test queries and on
# held-out words: docs/function_vectors.md, written by `python -m fv_exercises.recipe table`.


@dataclass(frozen=True)
class FunctionVectorRecipe:
    """How the course builds a task's function vector. Everything is drawn from **train** pairs.

    1. Mean last-position ``z`` of every head over ``n_prompts`` clean few-shot prompts.
    2. Causal effect of every head in the layers from ``scan_from`` of the depth on, on the first
       ``n_scan`` of them with shuffled labels (:func:`head_effects`; the other heads are ``NaN``
       and never chosen); ``heads="task"`` ranks heads by the task's own effects,
       ``heads="universal"`` by the mean effect over all shipped tasks (Todd et al., section 2.3).
       Why not every layer: a head patched at layer ``l`` is recomputed through every later
       layer, so the heads of the first third of the layers take a third of a scan's time
       (``python -m fv_exercises.bench scans``), and in the embedded model's full scans of
       every shipped task none of them is in a top 10, and 5 of the 400 top-40 places are
       (docs/function_vectors.md compares both).
    3. For every candidate ``k`` (top-k heads), layer and scale, the vector
       ``scale * sum of the top-k heads' mean outputs`` is added at that layer's last position of
       ``n_select`` zero-shot **train** queries; the candidate with the best top-1 accuracy wins
       (ties: the higher mean log-probability of the answer, then the earlier candidate).

    Candidate layers are fractions of the depth (``layer_fractions``), so the recipe runs on a
    model of any size. ``version`` is part of every disk-cache key: bump it when the code that
    builds a vector changes.
    """

    heads: str = "task"
    ks: tuple[int, ...] = (5, 10, 40)
    layer_fractions: tuple[float, ...] = (0.07, 0.2, 0.33, 0.47, 0.6)  # layers 2, 6, 10, 14, 18 of 30
    scales: tuple[float, ...] = (2.0, 4.0, 8.0)
    n_prompts: int = 16
    n_scan: int = 12
    n_select: int = 24
    scan_from: float = 0.33  # heads in layers from this fraction of the depth on are scanned
    version: int = 3

    def layers(self, n_layers: int) -> list[int]:
        """Candidate layers for a model with ``n_layers`` blocks (sorted, distinct)."""
        return sorted({min(n_layers - 1, max(0, round(f * n_layers))) for f in self.layer_fractions})

    def first_scanned_layer(self, n_layers: int) -> int:
        """The lowest layer whose heads the scan measures (layer 10 of 30)."""
        return min(n_layers - 1, max(0, round(self.scan_from * n_layers)))

    def scanned_heads(self, n_layers: int, n_heads: int) -> list[Head]:
        """``[(layer, head), ...]`` of every head the scan measures."""
        return [(l, h) for l in range(self.first_scanned_layer(n_layers), n_layers)
                for h in range(n_heads)]


COURSE_RECIPE = FunctionVectorRecipe()
SELECT_SEED_OFFSET = 10_000  # the draw of selection queries: train split, seed + this offset

# kept for notebooks written against the first version of this section
FV_N_PROMPTS, FV_N_SCAN, FV_K = COURSE_RECIPE.n_prompts, COURSE_RECIPE.n_scan, 10


@dataclass(frozen=True)
class TaskFunctionVector:
    """What :func:`function_vector_for_task` built, with what it was built from.

    ``vector`` is what gets added: ``scale * raw`` where ``raw`` (``[d_model]``) is the sum of the
    mean outputs of ``heads``. ``train_accuracy[layer]`` is the best zero-shot accuracy on the
    train selection queries at that candidate layer (over ``k`` and scale); ``train_grid`` has
    every candidate ``(k, layer, scale) -> accuracy``.
    """

    task: str
    vector: Tensor  # [d_model]
    layer: int
    heads: list[Head]
    effects: Tensor  # [n_layers, n_heads] ranking the heads (the task's or the universal), NaN where not scanned
    train_accuracy: dict[int, float]
    scale: float = 1.0
    raw: Tensor | None = None  # [d_model], the unscaled sum of the heads' mean outputs
    k: int = 0
    train_grid: dict[tuple[int, int, float], float] | None = None
    heads_from: str = "task"


@dataclass(frozen=True)
class TaskScan:
    """One task's train statistics: ``mean_z`` ``[n_layers, n_heads, d_head]`` over clean prompts and
    the causal ``effects`` ``[n_layers, n_heads]`` on shuffled-label prompts."""

    task: str
    mean_z: Tensor
    effects: Tensor


_SCANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: TaskScan}
_UNIVERSAL: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: Tensor}
_FV_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: TaskFunctionVector}


def function_vector_for_task(model, task: str, seed: int = 0) -> tuple[Tensor, int]:
    """The course's function vector for ``task`` and the layer to add it at: ``([d_model], layer)``.

    Add the vector to ``blocks.{layer}.hook_resid_post`` at the last position (e.g.
    ``top1_correct(model, prompts, answers, add={layer: vector})``). Built from **train** prompts
    only, deterministic for a given ``seed`` (the draw of train prompts), cached in the process
    and on disk. The recipe: :class:`FunctionVectorRecipe`; what it chose:
    :func:`function_vector_details`.
    """
    details = function_vector_details(model, task, seed)
    return details.vector.clone(), details.layer


def function_vector_details(model, task: str, seed: int = 0,
                            recipe: FunctionVectorRecipe | None = None) -> TaskFunctionVector:
    """Build (once per model, task, seed and recipe, then kept) a task's function vector.

    ``recipe`` defaults to the course's (:data:`COURSE_RECIPE`); pass another one to compare
    (e.g. ``dataclasses.replace(COURSE_RECIPE, heads="universal")``).
    """
    recipe = recipe or COURSE_RECIPE
    per_model = _FV_CACHE.setdefault(model, {})
    key = (task, seed, recipe)
    if key not in per_model:
        tasks = _universe() if recipe.heads == "universal" else [task]
        if task not in tasks:
            tasks = tasks + [task]
        parts = ("function_vector", task, seed, recipe, task_data(tasks))
        raw = disk_cached(model, parts, lambda: _as_record(_build(model, task, seed, recipe)),
                           rebuild=("function_vector", task, seed, recipe))
        per_model[key] = _from_record(raw)
    return per_model[key]


def task_scan(model, task: str, seed: int = 0,
              recipe: FunctionVectorRecipe | None = None) -> TaskScan:
    """Mean head ``z`` and causal head effects of ``task`` from train prompts (kept per model)."""
    recipe = recipe or COURSE_RECIPE
    per_model = _SCANS.setdefault(model, {})
    key = (task, seed, recipe.n_prompts, recipe.n_scan, recipe.scan_from)
    if key not in per_model:
        def compute() -> dict:
            from fv_exercises.tasks import ICLDataset

            train = ICLDataset.build(task, recipe.n_prompts, seed=seed, split="train")
            mean_z = mean_head_z(model, train.prompts)
            n = min(recipe.n_scan, len(train))
            scanned = recipe.scanned_heads(model.cfg.n_layers, model.cfg.n_heads)
            effects = head_effects(model, train.corrupted_prompts[:n], train.answers[:n], mean_z,
                                   heads=scanned)
            return {"mean_z": mean_z, "effects": effects}

        parts = ("task_scan", task, seed, recipe.n_prompts, recipe.n_scan, recipe.scan_from,
                 task_data([task]))
        raw = disk_cached(model, parts, compute, rebuild=("task_scan", task, seed, recipe))
        per_model[key] = TaskScan(task, raw["mean_z"], raw["effects"])
    return per_model[key]


def universal_head_effects(model, seed: int = 0,
                           recipe: FunctionVectorRecipe | None = None) -> Tensor:
    """Mean over all shipped tasks of each head's causal effect: ``[n_layers, n_heads]``
    (``NaN`` for heads the recipe does not scan).

    Todd et al. (section 2.3) rank heads by this average to find heads that carry *any* task.
    """
    recipe = recipe or COURSE_RECIPE
    per_model = _UNIVERSAL.setdefault(model, {})
    key = (seed, recipe.n_prompts, recipe.n_scan, recipe.scan_from)
    if key not in per_model:
        per_model[key] = torch.stack(
            [task_scan(model, t, seed, recipe).effects for t in _universe()]).mean(0)
    return per_model[key]


def _universe() -> list[str]:
    from fv_exercises.tasks import task_names

    return task_names()


def _build(model, task: str, seed: int, recipe: FunctionVectorRecipe) -> TaskFunctionVector:
    """The recipe, uncached."""
    from fv_exercises.recipe import steered_scores
    from fv_exercises.tasks import ICLDataset

    scan = task_scan(model, task, seed, recipe)
    if recipe.heads == "universal":
        effects = universal_head_effects(model, seed, recipe)
    elif recipe.heads == "task":
        effects = scan.effects
    else:
        raise ValueError(f"recipe.heads must be 'task' or 'universal', not {recipe.heads!r}")
    select = ICLDataset.build(task, recipe.n_select, seed=seed + SELECT_SEED_OFFSET, split="train")
    candidates, variants, raws = [], [], {}
    for k in recipe.ks:
        raws[k] = function_vector(model, scan.mean_z, top_heads(effects, k))
        for scale in recipe.scales:
            for layer in recipe.layers(model.cfg.n_layers):
                candidates.append((k, layer, float(scale)))
                variants.append({layer: raws[k] * scale})
    correct, logprob = steered_scores(model, select.zero_shot_prompts, select.answers, variants)
    acc = correct.float().mean(1)  # [n_candidates]
    lp = logprob.mean(1)
    # best accuracy; ties broken by mean log-probability of the answer, then by candidate order
    best = max(range(len(candidates)), key=lambda i: (acc[i].item(), lp[i].item(), -i))
    k, layer, scale = candidates[best]
    grid = {c: acc[i].item() for i, c in enumerate(candidates)}
    per_layer = {}
    for (_, l, _), a in grid.items():
        per_layer[l] = max(per_layer.get(l, 0.0), a)
    return TaskFunctionVector(task, raws[k] * scale, layer, top_heads(effects, k), effects,
                              per_layer, scale, raws[k], k, grid, recipe.heads)


def _as_record(fv: TaskFunctionVector) -> dict:
    """A :class:`TaskFunctionVector` as plain tensors/lists/dicts (safe for ``weights_only``)."""
    return {"task": fv.task, "vector": fv.vector, "layer": fv.layer, "heads": [list(h) for h in fv.heads],
            "effects": fv.effects, "train_accuracy": dict(fv.train_accuracy), "scale": fv.scale,
            "raw": fv.raw, "k": fv.k, "train_grid": [[*c, a] for c, a in (fv.train_grid or {}).items()],
            "heads_from": fv.heads_from}


def _from_record(r: dict) -> TaskFunctionVector:
    grid = {(int(k), int(l), float(s)): float(a) for k, l, s, a in r["train_grid"]}
    return TaskFunctionVector(r["task"], r["vector"], int(r["layer"]), [(int(l), int(h)) for l, h in r["heads"]],
                              r["effects"], {int(l): float(a) for l, a in r["train_accuracy"].items()},
                              float(r["scale"]), r["raw"], int(r["k"]), grid, r["heads_from"])


def headline(ctx) -> list:
    """Main-job rows for notebook 03: top heads, and the course's function vector on the test
    queries (few-shot accuracy for reference, a random vector of the same norm as the control)."""
    from fv_exercises.evaluation import top1_correct
    from fv_exercises.report import Row, accuracy_row, difference_row
    from fv_exercises.stats import accuracy, paired_difference
    from fv_exercises.task_vectors import random_like

    model, test = ctx.model, ctx.test
    fv = function_vector_details(model, ctx.task, ctx.seed)
    layer, effects = fv.layer, fv.effects
    few = top1_correct(model, test.prompts, test.answers)
    zero = top1_correct(model, test.zero_shot_prompts, test.answers, add={layer: fv.vector})
    rnd = top1_correct(model, test.zero_shot_prompts, test.answers,
                       add={layer: random_like(fv.vector, ctx.seed)})
    shuffled = top1_correct(model, test.corrupted_prompts, test.answers, add={layer: fv.vector})
    top5 = ", ".join(f"{l}.{h} ({effects[l, h]:+.3f})" for l, h in fv.heads[:5])
    ratio = zero.float().mean() / few.float().mean() if few.any() else float("nan")
    rows = [
        Row("top heads (layer.head, gain in P(answer))", "", "", top5),
        Row(f"function vector: top-{len(fv.heads)} {fv.heads_from} heads x {fv.scale:g}, layer",
            str(layer), "", f"k, layer, scale chosen on train queries; |FV| = {fv.vector.norm():.0f}",
            float(layer)),
        accuracy_row("zero-shot + function vector", accuracy(zero), f"layer {layer}"),
        Row("  as a share of few-shot accuracy (same queries)", f"{ratio:.0%}", "", "", float(ratio)),
        accuracy_row("zero-shot + random vector, FV's norm", accuracy(rnd), "control"),
        difference_row("function vector - random vector (paired)", paired_difference(zero, rnd)),
        accuracy_row("shuffled-label ICL + function vector", accuracy(shuffled), f"layer {layer}"),
    ]
    path = ctx.figure_path("head_effects")
    if path is not None:
        import matplotlib.pyplot as plt

        from fv_exercises.plotting import plot_head_heatmap

        scan = task_scan(model, ctx.task, ctx.seed)
        first = COURSE_RECIPE.first_scanned_layer(model.cfg.n_layers)
        fig = plot_head_heatmap(scan.effects, title=f"{ctx.task}: causal effect of each head "
                                f"(layers {first}+ scanned)")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rows.append(Row("figure: head effects", "", "", str(path)))
    return rows
