"""Task vectors in the residual stream (notebooks 01 and 02): the main job's numbers for them.

The building blocks are in :mod:`fv_exercises.evaluation` (``mean_resid_post``, ``layer_sweep``);
the learner's graded versions are in ``fv_exercises.reference.task_vectors`` and
``fv_exercises.reference.layer_sweep``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fv_exercises.evaluation import layer_sweep, mean_resid_post, top1_correct
from fv_exercises.report import Context, Row, accuracy_row, difference_row
from fv_exercises.stats import accuracy, paired_difference


def random_like(vector: Tensor, seed: int = 0) -> Tensor:
    """A random direction with the norm of ``vector`` (the control for any added vector)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(vector.shape[-1], generator=g, device="cpu")
    noise = noise.to(vector.device)  # drawn on the CPU: the same numbers on every device
    return noise * vector.norm() / noise.norm()


def task_vectors_all_layers(model, icl_prompts, zero_shot_prompts) -> Tensor:
    """Mean final-position ICL state minus mean zero-shot state, every layer: ``[n_layers, d_model]``."""
    return mean_resid_post(model, icl_prompts) - mean_resid_post(model, zero_shot_prompts)


def headline(ctx: Context) -> list[Row]:
    """ICL, zero-shot and task-vector accuracies on the test queries; the layer chosen on train."""
    model, train, test = ctx.model, ctx.train, ctx.test
    zs, answers = test.zero_shot_prompts, test.answers
    rows = [
        accuracy_row("few-shot ICL (5 examples)", accuracy(top1_correct(model, test.prompts, answers))),
        accuracy_row("shuffled-label ICL", accuracy(top1_correct(model, test.corrupted_prompts, answers))),
        accuracy_row("zero-shot", accuracy(top1_correct(model, zs, answers))),
    ]
    icl_states = mean_resid_post(model, train.prompts)  # [n_layers, d_model]
    vectors = icl_states - mean_resid_post(model, train.zero_shot_prompts)
    sweep = layer_sweep(model, vectors, train.zero_shot_prompts, train.answers, ctx.progress)
    best = int(sweep.argmax())
    raw = top1_correct(model, zs, answers, add={best: icl_states[best]})
    tv = top1_correct(model, zs, answers, add={best: vectors[best]})
    rnd = top1_correct(model, zs, answers, add={best: random_like(vectors[best], ctx.seed)})
    rows += [
        Row("task-vector layer (chosen on train queries)", str(best), "",
            f"of 0..{model.cfg.n_layers - 1}", float(best)),
        accuracy_row("zero-shot + raw mean ICL state (seed recipe)", accuracy(raw), f"layer {best}"),
        accuracy_row("zero-shot + mean task vector (ICL - zero-shot)", accuracy(tv), f"layer {best}"),
        accuracy_row("zero-shot + random vector, same norm", accuracy(rnd), f"layer {best}, control"),
        difference_row("task vector - random vector (paired)", paired_difference(tv, rnd),
                       "same test queries"),
    ]
    path = ctx.figure_path("layer_sweep")
    if path is not None:
        import matplotlib.pyplot as plt

        from fv_exercises.plotting import plot_layer_sweep

        fig = plot_layer_sweep({ctx.task: sweep}, title=f"{ctx.task}: mean task vector added at "
                               "each layer (train queries)")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rows.append(Row("figure: layer sweep", "", "", str(path)))
    return rows
