"""Figures of the course: layer sweeps and head heatmaps (matplotlib, no display needed)."""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt  # on a machine without a display matplotlib falls back to Agg
from torch import Tensor


def plot_layer_sweep(curves: Mapping[str, Tensor], title: str = "") -> plt.Figure:
    """Accuracy against layer, one line per task. ``curves[task]``: ``[n_layers]`` in [0, 1]."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for task, accuracy in curves.items():
        ax.plot(range(len(accuracy)), accuracy.tolist(), marker="o", ms=3, label=task)
    ax.set_xlabel("layer where the task vector is added")
    ax.set_ylabel("zero-shot top-1 accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_head_heatmap(effects: Tensor, title: str = "") -> plt.Figure:
    """Heatmap of ``effects`` ``[n_layers, n_heads]``, layers on the y axis, diverging at 0
    (``NaN``, a head not scanned, is left blank)."""
    limit = float(effects.nan_to_num(0.0).abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(4 + 0.3 * effects.shape[1], 1.5 + 0.18 * effects.shape[0]))
    image = ax.imshow(effects.numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto",
                      origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(effects.shape[1]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="gain in P(answer)")
    fig.tight_layout()
    return fig


# -- notebook 04 (arithmetic) ------------------------------------------------------------------


def plot_prompt_count_curve(curves: Mapping[str, Mapping[int, Tensor]], title: str = "") -> plt.Figure:
    """Zero-shot accuracy against the number of prompts a function vector is averaged over.

    ``curves[task][n]``: BoolTensor ``[n_draws, n_queries]`` (one row per draw of ``n`` prompts,
    as :func:`fv_exercises.arithmetic.prompt_count_curve` returns). Each draw is a dot; the line
    joins the mean over draws. The x axis is logarithmic.
    """
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (task, curve) in enumerate(curves.items()):
        color = f"C{i}"
        counts = sorted(curve)
        means = [curve[n].float().mean().item() for n in counts]
        for n in counts:
            per_draw = curve[n].float().mean(-1).tolist()
            ax.scatter([n] * len(per_draw), per_draw, s=14, color=color, alpha=0.45)
        ax.plot(counts, means, marker="o", color=color, label=f"{task} (mean over draws)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({n for c in curves.values() for n in c}))
    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.set_xlabel("number of prompts averaged")
    ax.set_ylabel("zero-shot top-1 accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_cosine_map(cosines: Tensor, labels: list[str], split_halves: Mapping[str, Tensor],
                    random: Tensor, title: str = "") -> plt.Figure:
    """Left: cosine similarity between the tasks' function vectors (``cosines`` ``[T, T]``).

    Right, on one axis: the between-task cosines (off-diagonal), each ``split_halves[task]``
    (``[n_splits]`` cosines between two function vectors of that task from disjoint halves of its
    prompts) and ``random`` (``[n_pairs]`` cosines between random directions). One dot each.
    """
    import torch

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
    image = ax.imshow(cosines.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            value = float(cosines[i, j])
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.7 else "black")
    ax.set_title("between the tasks' function vectors", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")

    above = torch.triu(torch.ones(len(labels), len(labels), dtype=torch.bool), diagonal=1)
    off_diagonal = cosines[above]  # each pair of tasks once
    groups = [("random directions", random)] + [
        (f"{task}: two halves", values) for task, values in split_halves.items()] + [
        ("between tasks", off_diagonal)]
    g = torch.Generator().manual_seed(0)
    for row, (name, values) in enumerate(groups):
        jitter = (torch.rand(len(values), generator=g, device="cpu") - 0.5) * 0.3
        bx.scatter(values.double().numpy(), (row + jitter).numpy(), s=8, alpha=0.5, color=f"C{row}")
    bx.set_yticks(range(len(groups)))
    bx.set_yticklabels([name for name, _ in groups], fontsize=8)
    bx.set_xlim(-0.25, 1.02)
    bx.axvline(0, color="grey", lw=0.6)
    bx.set_xlabel("cosine similarity")
    bx.set_title("against the baselines", fontsize=9)
    bx.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
