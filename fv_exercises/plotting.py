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
    """Heatmap of ``effects`` ``[n_layers, n_heads]``, layers on the y axis, diverging at 0."""
    limit = float(effects.abs().max()) or 1.0
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
