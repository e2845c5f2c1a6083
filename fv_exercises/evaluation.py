"""Batched forward passes, last-position interventions and first-token scoring.

Prompts of different lengths are batched with **right** padding. For a causal model that is
exact without an attention mask: a real token never attends to the padding after it. Each
prompt's own last position (``last_pos[b]``) is where we read logits and where we intervene.
All functions run under ``torch.no_grad()``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device

DEFAULT_BATCH = 16


def resid_post_name(layer: int) -> str:
    """TransformerLens hook name of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def answer_token_ids(model, answers: Sequence[str]) -> Tensor:
    """First token of ``" " + answer`` for each answer: LongTensor ``[n]``.

    The leading space matters: after ``"A:"`` the model continues with ``" cold"``, not ``"cold"``.
    """
    ids = [model.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in answers]
    return torch.tensor(ids, dtype=torch.long, device=model_device(model))


def tokenize_right_padded(model, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Tokens ``[b, seq]`` (right-padded; BOS as ``model.cfg.default_prepend_bos`` says) and each prompt's last index ``[b]``.

    Both on the model's device."""
    device = model_device(model)
    rows = [model.to_tokens(p)[0] for p in prompts]
    last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long, device=device)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.full((len(rows), int(last.max()) + 1), pad, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, last


def add_at_positions_hook(vector: Tensor, positions: Tensor) -> Callable:
    """Hook adding ``vector`` (``[d_model]`` or ``[b, d_model]``) to ``resid[b, positions[b]]``.

    Returns a new tensor instead of editing the activation in place.
    """

    def hook(resid: Tensor, hook=None) -> Tensor:
        resid = resid.clone()
        rows = torch.arange(resid.shape[0], device=resid.device)
        resid[rows, positions.to(resid.device)] += vector.to(resid.device, resid.dtype)
        return resid

    return hook


def last_position_logits(
    model,
    prompts: Sequence[str],
    add: Mapping[int, Tensor] | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Tensor:
    """Logits at each prompt's last position: ``[n, d_vocab]``.

    Args:
        add: optional ``{layer: vector}``; each ``vector`` (``[d_model]``) is added to
            ``blocks.{layer}.hook_resid_post`` at the last position of every prompt.
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start : start + batch_size])
            hooks = [
                (resid_post_name(layer), add_at_positions_hook(vec, last))
                for layer, vec in (add or {}).items()
            ]
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
            out.append(logits[torch.arange(len(last), device=last.device), last])
    return torch.cat(out)


def top1_correct(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    add: Mapping[int, Tensor] | None = None,
) -> Tensor:
    """Per prompt, is the top-1 next token the answer's first token? BoolTensor ``[n]``.

    Per-query outcomes are what :mod:`fv_exercises.stats` needs for intervals and paired
    comparisons (``stats.accuracy(top1_correct(...))``).
    """
    logits = last_position_logits(model, prompts, add=add)
    return logits.argmax(-1) == answer_token_ids(model, answers)


def top1_accuracy(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    add: Mapping[int, Tensor] | None = None,
) -> float:
    """Fraction of prompts whose top-1 next token is the answer's first token."""
    return top1_correct(model, prompts, answers, add=add).float().mean().item()


def answer_probs(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    add: Mapping[int, Tensor] | None = None,
) -> Tensor:
    """Probability of each answer's first token at the last position: ``[n]``."""
    logits = last_position_logits(model, prompts, add=add)
    probs = logits.softmax(-1)
    return probs[torch.arange(len(answers), device=probs.device), answer_token_ids(model, answers)]


def last_position_resid_post(
    model, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH
) -> Tensor:
    """``resid_post`` of every layer at each prompt's last position: ``[n, n_layers, d_model]``."""
    names = {resid_post_name(layer) for layer in range(model.cfg.n_layers)}
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start : start + batch_size])
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            stacked = torch.stack(
                [cache[resid_post_name(layer)] for layer in range(model.cfg.n_layers)], dim=1
            )  # [b, n_layers, seq, d_model]
            out.append(stacked[torch.arange(len(last), device=last.device), :, last])
    return torch.cat(out)


def last_position_states(model, prompts: Sequence[str], layer: int) -> Tensor:
    """``resid_post`` of one layer at each prompt's last position: ``[n, d_model]``.

    One right-padded batch; the forward pass stops after ``layer`` (``stop_at_layer``): the
    later blocks and the unembedding are not run (at two thirds of the depth, half the cost).
    """
    name = resid_post_name(layer)
    tokens, last = tokenize_right_padded(model, prompts)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name,
                                        stop_at_layer=layer + 1)
    return cache[name][torch.arange(len(last), device=last.device), last]


def mean_resid_post(model, prompts: Sequence[str]) -> Tensor:
    """Mean over prompts of the last-position ``resid_post``: ``[n_layers, d_model]``."""
    return last_position_resid_post(model, prompts).mean(0)


def layer_sweep(
    model,
    vectors: Tensor,
    prompts: Sequence[str],
    answers: Sequence[str],
    progress: bool = False,
) -> Tensor:
    """Top-1 accuracy when ``vectors[l]`` is added at layer ``l``'s last position: ``[n_layers]``.

    The same numbers as ``top1_accuracy(model, prompts, answers, add={l: vectors[l]})`` for each
    layer, computed the cheap way (:func:`fv_exercises.recipe.steered_top1`: the prompts run once,
    their last position is recomputed from each layer up).

    Args:
        vectors: ``[n_layers, d_model]``, one vector per layer (e.g. ``mean_resid_post`` output).
        progress: kept for callers of the earlier, layer-by-layer version (one call now: no bar).
    """
    from fv_exercises.recipe import steered_top1

    variants = [{layer: vectors[layer]} for layer in range(vectors.shape[0])]
    return steered_top1(model, prompts, answers, variants).float().mean(1)
