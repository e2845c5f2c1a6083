"""The course's headline numbers, computed end to end (the main job) and the task table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fv_exercises.evaluation import layer_sweep, mean_resid_post, top1_accuracy
from fv_exercises.heads import function_vector, head_effects, mean_head_z, top_heads
from fv_exercises.tasks import ICLDataset, task_names

N_TRAIN, N_TEST, N_TOP_HEADS = 32, 40, 10


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    name: str
    value: str
    note: str = ""


def _pct(x: float) -> str:
    return f"{x:.0%}"


def headline_results(model, task: str = "antonym", out_dir: str | Path | None = None,
                     progress: bool = True) -> list[Row]:
    """ICL, zero-shot, task-vector and function-vector accuracies for ``task`` (notebooks 01-03).

    Vectors are built from ``N_TRAIN`` train prompts, layers are chosen on the train queries, and
    every accuracy is top-1 on ``N_TEST`` test queries.
    """
    torch.manual_seed(0)
    train = ICLDataset.build(task, N_TRAIN, seed=0, split="train")
    test = ICLDataset.build(task, N_TEST, seed=1, split="test")
    rows = [
        Row("few-shot ICL (5 examples)", _pct(top1_accuracy(model, test.prompts, test.answers))),
        Row("shuffled-label ICL", _pct(top1_accuracy(model, test.corrupted_prompts, test.answers))),
        Row("zero-shot", _pct(top1_accuracy(model, test.zero_shot_prompts, test.answers))),
    ]
    icl_states = mean_resid_post(model, train.prompts)  # [n_layers, d_model]
    task_vectors = icl_states - mean_resid_post(model, train.zero_shot_prompts)
    train_sweep = layer_sweep(model, task_vectors, train.zero_shot_prompts, train.answers, progress)
    best = int(train_sweep.argmax())
    raw = top1_accuracy(model, test.zero_shot_prompts, test.answers, add={best: icl_states[best]})
    tv = top1_accuracy(model, test.zero_shot_prompts, test.answers, add={best: task_vectors[best]})
    noise = torch.randn(task_vectors.shape[1], generator=torch.Generator().manual_seed(0))
    noise *= task_vectors[best].norm() / noise.norm()
    rnd = top1_accuracy(model, test.zero_shot_prompts, test.answers, add={best: noise})
    rows += [
        Row("task-vector layer (chosen on train queries)", str(best),
            f"of 0..{model.cfg.n_layers - 1}"),
        Row("zero-shot + raw mean ICL state (seed recipe)", _pct(raw), f"layer {best}"),
        Row("zero-shot + mean task vector (ICL - zero-shot)", _pct(tv), f"layer {best}"),
        Row("zero-shot + random vector, same norm", _pct(rnd), f"layer {best}, control"),
    ]
    head_rows, effects = _head_results(model, train, test, progress)
    rows += head_rows
    if out_dir is not None:
        rows += _write_figures(task, train_sweep, effects, out_dir)
    return rows


def _head_results(model, train: ICLDataset, test: ICLDataset, progress: bool,
                  k: int = N_TOP_HEADS) -> tuple[list[Row], torch.Tensor]:
    """Rows for the top heads and the top-``k`` function vector (notebook 03), and the
    ``[n_layers, n_heads]`` effects they come from."""
    mean_z = mean_head_z(model, train.prompts)
    effects = head_effects(model, train.corrupted_prompts, train.answers, mean_z, progress=progress)
    heads = top_heads(effects, k)
    fv = function_vector(model, mean_z, heads)
    n = model.cfg.n_layers
    candidates = range(n // 4, 3 * n // 4 + 1)  # the sweep in notebook 02: the ends never win
    train_acc = {layer: top1_accuracy(model, train.zero_shot_prompts, train.answers, add={layer: fv})
                 for layer in candidates}
    layer = max(train_acc, key=train_acc.get)
    zero = top1_accuracy(model, test.zero_shot_prompts, test.answers, add={layer: fv})
    shuffled = top1_accuracy(model, test.corrupted_prompts, test.answers, add={layer: fv})
    top5 = ", ".join(f"{l}.{h} ({effects[l, h]:+.3f})" for l, h in heads[:5])
    return [
        Row("top heads (layer.head, gain in P(answer))", "", top5),
        Row(f"function vector: top-{k} heads, layer (chosen on train)", str(layer),
            f"|FV| = {fv.norm():.0f}"),
        Row("zero-shot + function vector", _pct(zero), f"layer {layer}"),
        Row("shuffled-label ICL + function vector", _pct(shuffled), f"layer {layer}"),
    ], effects


def _write_figures(task: str, sweep: torch.Tensor, effects: torch.Tensor,
                   out_dir: str | Path) -> list[Row]:
    """Save the layer sweep and the head heatmap as PNG files; return rows naming them."""
    import matplotlib.pyplot as plt

    from fv_exercises.plotting import plot_head_heatmap, plot_layer_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep_png, heads_png = out / f"{task}_layer_sweep.png", out / f"{task}_head_effects.png"
    fig = plot_layer_sweep({task: sweep}, title=f"{task}: mean task vector added at each layer "
                           "(train queries)")
    fig.savefig(sweep_png, dpi=120)
    plt.close(fig)
    fig = plot_head_heatmap(effects, title=f"{task}: causal effect of each head")
    fig.savefig(heads_png, dpi=120)
    plt.close(fig)
    return [Row("figure: layer sweep", "", str(sweep_png)),
            Row("figure: head effects", "", str(heads_png))]


def print_table(rows: list[Row], title: str) -> None:
    """Print rows as an aligned plain-text table."""
    width = max(len(r.name) for r in rows)
    print(title)
    print("-" * (width + 24))
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>6}  {r.note}")


def accuracy_table(model, n_test: int = N_TEST) -> list[tuple[str, float, float, float]]:
    """(task, few-shot, shuffled-label, zero-shot) top-1 accuracy on ``n_test`` test prompts."""
    table = []
    for task in task_names():
        test = ICLDataset.build(task, n_test, seed=1, split="test")
        table.append((task,
                      top1_accuracy(model, test.prompts, test.answers),
                      top1_accuracy(model, test.corrupted_prompts, test.answers),
                      top1_accuracy(model, test.zero_shot_prompts, test.answers)))
    return table


def write_accuracy_table(output: str | Path = "docs/task_accuracy.md") -> str:
    """Measure the table on the embedded model and write it as Markdown; return the text."""
    from fv_exercises import load_model

    rows = accuracy_table(load_model())
    lines = [
        "# Task accuracy on the embedded model",
        "",
        "Generated by `python -m fv_exercises table` (SmolLM2-135M-Instruct, float32, CPU).",
        f"Top-1 accuracy of the answer's first token on {N_TEST} test prompts per task",
        "(5 demonstrations from train pairs, queries from test pairs, seed 1, no BOS token).",
        "`tests/test_tasks.py` keeps few-shot accuracy above a floor chosen from this table.",
        "",
        "| task | few-shot | shuffled labels | zero-shot |",
        "|---|---:|---:|---:|",
    ] + [f"| {t} | {_pct(a)} | {_pct(s)} | {_pct(z)} |" for t, a, s, z in rows]
    text = "\n".join(lines) + "\n"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    return text
