"""Projecting a direction out of the residual stream (notebook 05): is one direction necessary?

To *ablate* a direction ``u`` (a unit vector, ``[d_model]``) at layer ``l`` is to replace
``resid_post[l]`` at **every position** by its component orthogonal to ``u``:

    r  ->  r - (r . u) u

Nothing else changes. If the model needs the direction to do the task, few-shot accuracy falls; if
it does not, accuracy stays where it was. A *plan* says which direction goes at which layer:
``plans[c, l]`` (``[d_model]``) is projected out at layer ``l`` in condition ``c``; a zero vector
means "leave layer ``l`` alone". Plans hold raw vectors: each is normalised to unit length here.

- :func:`single_layer_plans` -- one condition per layer, the direction removed at that layer only;
- :func:`upward_plans` -- one condition per layer ``l``, removed at every layer from ``l`` to the
  last (the model cannot write the direction back further up);
- :func:`ablation_outcomes` -- top-1 correctness and P(answer) of every (condition, prompt),
  ``[C, n]``, and the same without ablation; :func:`ablated_correct` -- the correctness only.
  ``from_position=1`` spares the first token (see notebook 05 for why that matters).

Cost. A condition changes nothing below its first ablated layer, so all conditions of a prompt
share the clean run up to there. On Llama-style models (the embedded one) :func:`ablation_outcomes`
runs the clean prompts once through the bridge, then carries only the ablated versions ("rows")
through the layers above their first ablation, in one growing batch, with re-implemented blocks
(the bridge's own weights), and unembeds the last position only. A condition first ablated at
layer ``l`` costs ``(n_layers - 1 - l) / n_layers`` of a forward pass. Any other architecture uses
the bridge itself with one hook per layer that projects each row's own direction out (every
condition costs a full forward pass). Both give the same numbers (a test compares them); the fast
engine also carries an unablated control row and raises if it disagrees with the bridge.

Prompts are right-padded in a batch, and each prompt's own last position is read. Projecting
padding positions too is harmless: in a causal model no real token attends to the padding after it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from fv_exercises.device import model_device
from fv_exercises.evaluation import answer_token_ids, resid_post_name, tokenize_right_padded

DEFAULT_BATCH = 16
ROWS_PER_STEP = 64  # rows (prompt x condition) per forward pass of the generic engine


# --------------------------------------------------------------------------------------------
# Directions and plans
# --------------------------------------------------------------------------------------------


def unit(vectors: Tensor) -> Tensor:
    """``vectors / |vectors|`` along the last axis; zero vectors stay zero. Any shape ``[..., d]``."""
    norm = vectors.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, vectors / norm.clamp_min(1e-30), torch.zeros_like(vectors))


def project_out(resid: Tensor, direction: Tensor) -> Tensor:
    """``resid`` with its component along ``direction`` removed, at every position (new tensor).

    ``resid``: ``[..., d_model]``; ``direction``: ``[d_model]`` or anything broadcasting against
    ``resid`` (e.g. ``[rows, 1, d_model]`` for one direction per row). Normalised here.
    """
    u = unit(direction.to(resid.device, resid.dtype))
    return resid - (resid * u).sum(-1, keepdim=True) * u


def random_directions(n: int, d_model: int, seed: int = 0,
                      device: torch.device | str = "cpu") -> Tensor:
    """``n`` random unit vectors ``[n, d_model]`` (uniform on the sphere), seeded.

    Deterministic in ``seed``: drawn on the CPU (the same numbers on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    return unit(torch.randn(n, d_model, generator=g, device="cpu")).to(device)


def _per_layer(vectors: Tensor, n_layers: int) -> Tensor:
    """``[d_model]`` (the same direction at every layer) or ``[n_layers, d_model]`` -> the latter."""
    if vectors.ndim == 1:
        return vectors.expand(n_layers, -1)
    if vectors.ndim != 2 or vectors.shape[0] != n_layers:
        raise ValueError(f"expected [d_model] or [{n_layers}, d_model], got {tuple(vectors.shape)}")
    return vectors


def single_layer_plans(vectors: Tensor, n_layers: int, layers: Sequence[int] | None = None) -> Tensor:
    """One condition per layer in ``layers`` (default all): the direction removed there only.

    ``vectors``: ``[d_model]`` or ``[n_layers, d_model]`` (layer ``l`` uses ``vectors[l]``).
    Returns ``[len(layers), n_layers, d_model]``.
    """
    per_layer = _per_layer(vectors, n_layers)
    layers = list(range(n_layers)) if layers is None else list(layers)
    plans = per_layer.new_zeros(len(layers), n_layers, per_layer.shape[-1])
    for c, layer in enumerate(layers):
        plans[c, layer] = per_layer[layer]
    return plans


def upward_plans(vectors: Tensor, n_layers: int, layers: Sequence[int] | None = None) -> Tensor:
    """One condition per start layer ``l`` in ``layers`` (default all): removed at ``l .. n_layers-1``.

    Returns ``[len(layers), n_layers, d_model]``.
    """
    per_layer = _per_layer(vectors, n_layers)
    layers = list(range(n_layers)) if layers is None else list(layers)
    plans = per_layer.new_zeros(len(layers), n_layers, per_layer.shape[-1])
    for c, layer in enumerate(layers):
        plans[c, layer:] = per_layer[layer:]
    return plans


def first_layers(plans: Tensor) -> Tensor:
    """First ablated layer of each condition ``[C]`` (``n_layers`` when nothing is ablated)."""
    active = plans.abs().amax(-1) > 0  # [C, n_layers]
    n_layers = plans.shape[1]
    idx = torch.arange(n_layers, device=active.device).expand_as(active)
    return torch.where(active, idx, torch.full_like(idx, n_layers)).amin(-1)


# --------------------------------------------------------------------------------------------
# Outcomes: every (condition, prompt)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """Per condition and prompt: top-1 correct ``[C, n]`` and P(answer's first token) ``[C, n]``.

    ``clean_correct`` / ``clean_prob`` ``[n]``: the same prompts without any ablation.
    """

    correct: Tensor
    prob: Tensor
    clean_correct: Tensor
    clean_prob: Tensor


def ablation_outcomes(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    plans: Tensor,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    engine: str = "auto",
    check_tol: float = 1e-4,
    from_position: int = 0,
    verify: bool | None = None,
) -> Outcomes:
    """Top-1 correctness and P(answer) of every prompt under every ablation plan.

    Args:
        plans: ``[C, n_layers, d_model]``; ``plans[c, l]`` is projected out of
            ``blocks.{l}.hook_resid_post`` at every position in condition ``c`` (zero: nothing).
        engine: ``"auto"`` (the fast engine on Llama-style models, else the bridge),
            ``"bridge"`` or ``"llama"``.
        progress: a tqdm bar over prompts (off by default: grade cells must stay silent).
        from_position: project at positions ``from_position ..`` only (0: every position; 1:
            spare the first token, whose state is huge in many models: an "attention sink").
        verify: run the fast engine's unablated control row (an extra row from layer 0 on the
            first batch) and raise if it disagrees with the bridge by more than ``check_tol``.
            Default: on the first call for each model only (the code path is the same after).

    Returns:
        :class:`Outcomes` with ``correct`` and ``prob`` ``[C, n]``.
    """
    n_layers = model.cfg.n_layers
    if plans.ndim != 3 or plans.shape[1] != n_layers:
        raise ValueError(f"plans must be [C, {n_layers}, d_model], got {tuple(plans.shape)}")
    from fv_exercises.last_position import llama_style_problems

    if engine == "auto":
        engine = "llama" if not llama_style_problems(model) else "bridge"
    run = {"llama": _batch_llama, "bridge": _batch_bridge}[engine]
    if verify is None:
        verify = engine == "llama" and model not in _VERIFIED
    answer_ids = answer_token_ids(model, answers)
    units = unit(plans.float())
    correct, prob, clean_correct, clean_prob = [], [], [], []
    bar = _bar(len(prompts), progress)
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            ids = answer_ids[start : start + len(batch)]
            c, p, cc, cp = run(model, batch, ids, units, check_tol, verify and start == 0,
                               from_position)
            if verify and engine == "llama":
                _VERIFIED[model] = True
            correct.append(c)
            prob.append(p)
            clean_correct.append(cc)
            clean_prob.append(cp)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return Outcomes(torch.cat(correct, 1), torch.cat(prob, 1), torch.cat(clean_correct),
                    torch.cat(clean_prob))


def ablated_correct(model, prompts: Sequence[str], answers: Sequence[str], plans: Tensor,
                    progress: bool = False, **kwargs) -> Tensor:
    """Top-1 correct under each plan: BoolTensor ``[C, n]`` (see :func:`ablation_outcomes`)."""
    return ablation_outcomes(model, prompts, answers, plans, progress=progress, **kwargs).correct


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ablation (prompts)")


def _score(logits: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """``logits`` ``[..., B, d_vocab]``, ``ids`` ``[B]`` -> (top-1 correct, P(answer)), ``[..., B]``."""
    logits = logits.float()
    correct = logits.argmax(-1) == ids
    prob = logits.softmax(-1).gather(-1, ids.expand(logits.shape[:-1])[..., None])[..., 0]
    return correct, prob


def _batch_bridge(model, prompts: list[str], ids: Tensor, units: Tensor, check_tol: float,
                  with_check: bool, from_pos: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Any architecture: rows (condition x prompt) through the bridge, one hook per layer that
    projects each row's own direction out of ``resid_post`` at every position."""
    tokens, last = tokenize_right_padded(model, prompts)
    B, C = len(prompts), units.shape[0]
    clean = model(tokens)[torch.arange(B, device=last.device), last]  # [B, d_vocab]
    clean_correct, clean_prob = _score(clean, ids)
    device = model_device(model)
    correct = torch.zeros(C, B, dtype=torch.bool, device=device)
    prob = torch.zeros(C, B, device=device)
    per_step = max(1, ROWS_PER_STEP // B)  # conditions per forward pass
    for c0 in range(0, C, per_step):
        chunk = units[c0 : c0 + per_step]  # [c, n_layers, d_model]
        rows_u = chunk.repeat_interleave(B, 0)  # row r = condition r // B, prompt r % B
        hooks = []
        for layer in range(units.shape[1]):
            u = rows_u[:, layer]  # [R, d_model]
            if u.abs().amax() > 0:
                hooks.append((resid_post_name(layer), _rows_hook(u, from_pos)))
        logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        rows = torch.arange(len(chunk) * B, device=last.device)
        c, p = _score(logits[rows, last.repeat(len(chunk))], ids.repeat(len(chunk)))
        correct[c0 : c0 + len(chunk)] = c.view(len(chunk), B)
        prob[c0 : c0 + len(chunk)] = p.view(len(chunk), B)
    return correct, prob, clean_correct, clean_prob


def _remove(x: Tensor, u: Tensor) -> Tensor:
    """``x - (x . u) u`` for unit ``u`` broadcasting against ``x`` ``[..., d_model]``."""
    return x - (x * u).sum(-1, keepdim=True) * u


def _rows_hook(u: Tensor, from_pos: int):
    """Hook on ``resid_post`` ``[R, S, d_model]``: row ``r`` loses ``u[r]`` at positions
    ``from_pos ..`` (a new tensor; the activation passed in is not edited)."""

    def hook(resid: Tensor, hook=None) -> Tensor:
        out = resid.clone()
        out[:, from_pos:] = _remove(resid[:, from_pos:], u[:, None].to(resid.device, resid.dtype))
        return out

    return hook


# --------------------------------------------------------------------------------------------
# The fast engine (Llama-style models): clean prefix shared, rows carried from their first layer
# --------------------------------------------------------------------------------------------

_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_VERIFIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # models whose check passed


def _llama_engine(model):
    if model not in _ENGINES:
        from fv_exercises.last_position import LlamaLastPosition

        _ENGINES[model] = LlamaLastPosition(model)
    return _ENGINES[model]


def _llama_block(fast, layer: int, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``resid_post`` of block ``layer`` for full sequences ``x`` ``[N, S, d_model]`` (causal)."""
    import torch.nn.functional as F

    L = fast.layers[layer]
    N, S, _ = x.shape
    H, G, D = fast.n_heads, fast.n_kv, fast.d_head
    h = L.ln1(x)
    q = L.q(h).view(N, S, H, D).transpose(1, 2)  # [N, H, S, D]
    k = L.k(h).view(N, S, G, D).transpose(1, 2)  # [N, G, S, D]
    v = L.v(h).view(N, S, G, D).transpose(1, 2)
    q, k = fast.apply_rotary_pos_emb(q, k, cos, sin)
    if G != H:  # grouped-query attention: query head g * (H // G) + j reads key/value head g
        k = k.repeat_interleave(H // G, dim=1)
        v = v.repeat_interleave(H // G, dim=1)
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=L.scaling)  # [N, H, S, D]
    return fast.finish_block(layer, x, z.transpose(1, 2))


def _batch_llama(model, prompts: list[str], ids: Tensor, units: Tensor, check_tol: float,
                 with_check: bool, from_pos: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One batch of prompts on the fast engine.

    The bridge runs the clean prompts once and records ``resid_post`` of every layer. Conditions
    are sorted by their first ablated layer ``s``; at layer ``s`` a condition's rows (one per
    prompt) join the batch as the clean ``resid_post[s]``, and from there on every row goes
    through each block and has its own direction (if any) projected out after it. With
    ``with_check``, an unablated control row starts at layer 0 and must match the bridge.
    """
    fast = _llama_engine(model)
    tokens, last = tokenize_right_padded(model, prompts)
    B, S = tokens.shape
    n_layers, d = units.shape[1], units.shape[2]
    names = {resid_post_name(l) for l in range(n_layers)}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    batch = torch.arange(B, device=last.device)
    clean_correct, clean_prob = _score(logits[batch, last], ids)
    post = [cache[resid_post_name(l)] for l in range(n_layers)]  # each [B, S, d_model]
    del logits, cache

    starts = first_layers(units)
    order = [int(i) for i in torch.argsort(starts, stable=True)]
    active = [i for i in order if starts[i] < n_layers]
    cos, sin = fast.cos_sin(S, post[0])
    rows = post[0].new_zeros(B, 0, S, d)  # [B, R, S, d_model]: the ablated versions so far
    row_units = units.new_zeros(0, n_layers, d)  # [R, n_layers, d_model]
    if with_check:
        # control row: embeddings are not cached, so start it at resid_post[0] with nothing removed
        rows = post[0][:, None]
        row_units = units.new_zeros(1, n_layers, d)
    n_control = rows.shape[1]
    for layer in range(n_layers):
        if rows.shape[1] and layer > 0:
            R = rows.shape[1]
            rows = _llama_block(fast, layer, rows.reshape(B * R, S, d), cos, sin).view(B, R, S, d)
        new = [i for i in active if starts[i] == layer]
        if new:
            rows = torch.cat([rows, post[layer][:, None].expand(-1, len(new), -1, -1)], dim=1)
            row_units = torch.cat([row_units, units[new]])
        u = row_units[:, layer]  # [R, d_model]
        if u.numel() and u.abs().amax() > 0:
            ablated = _remove(rows[:, :, from_pos:], u[None, :, None])
            rows = torch.cat([rows[:, :, :from_pos], ablated], dim=2) if from_pos else ablated
    final = rows[batch, :, last]  # [B, R, d_model]: each prompt's own last position
    out_logits = fast.unembed(fast.norm(final))  # [B, R, d_vocab]
    correct_rows, prob_rows = _score(out_logits.transpose(0, 1), ids)  # [R, B]
    if with_check:
        worst = (prob_rows[0] - clean_prob).abs().max().item()
        if worst > check_tol:
            raise RuntimeError(
                "ablation engine disagrees with the bridge's forward (P(answer) off by "
                f"{worst:.2e}); use engine='bridge' for this model.")
    correct = torch.zeros(units.shape[0], B, dtype=torch.bool, device=correct_rows.device)
    prob = torch.zeros(units.shape[0], B, device=correct_rows.device)
    correct[active] = correct_rows[n_control:]
    prob[active] = prob_rows[n_control:]
    idle = [i for i in order if starts[i] >= n_layers]  # plans that remove nothing: clean
    correct[idle] = clean_correct
    prob[idle] = clean_prob
    return correct, prob, clean_correct, clean_prob


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


@dataclass
class AblationPanel:
    """What one panel of :func:`plot_ablation` shows (one task).

    ``curves[label] = (layers, accuracies)``: accuracy ``[len(layers)]`` against layer; a label
    containing ``"upward"`` is drawn dashed. At ``layer``, the controls: ``random`` accuracies
    ``[n_random]`` (drawn as mean +- sd) and ``others[label]`` single accuracies.
    """

    task: str
    clean: float
    curves: dict[str, tuple[list[int], Tensor]]
    layer: int
    random: Tensor
    others: dict[str, float]


def plot_ablation(panels: Sequence[AblationPanel], n_layers: int, title: str = ""):
    """Few-shot accuracy with a direction projected out, against layer: one panel per task."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 4.2),
                             squeeze=False, sharey=True)
    colors: dict[str, str] = {}
    for ax, panel in zip(axes[0], panels):
        for label, (layers, acc) in panel.curves.items():
            key = label.split(",")[0]
            style = "--" if "upward" in label else "-"
            (line,) = ax.plot(layers, torch.as_tensor(acc).tolist(), style, marker="o", ms=3,
                              label=label, color=colors.get(key))
            colors.setdefault(key, line.get_color())
        ax.axhline(panel.clean, color="black", lw=1, ls=":", label="no ablation")
        r = torch.as_tensor(panel.random, dtype=torch.float64)
        sd = r.std().item() if r.numel() > 1 else 0.0
        ax.errorbar([panel.layer], [r.mean().item()], yerr=[sd], fmt="s", color="grey", capsize=3,
                    label=f"{r.numel()} random directions (mean, sd)")
        for (label, acc), color in zip(panel.others.items(), ("tab:red", "tab:purple", "tab:brown")):
            ax.plot([panel.layer], [acc], "x", ms=8, mew=2, color=color, label=label)
        ax.set_title(f"{panel.task} (controls at layer {panel.layer})", fontsize=9)
        ax.set_xlabel("layer where the direction is projected out")
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("few-shot top-1 accuracy")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    ncol = min(4, 2 * len(panels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.09 * -(-len(handles) // ncol) / 2 + 0.02, 1, 1))
    return fig


# --------------------------------------------------------------------------------------------
# The main job's section
# --------------------------------------------------------------------------------------------

N_RANDOM = 10
FIGURE_PROMPTS, FIGURE_STEP = 16, 3


def headline(ctx) -> list:
    """Main-job rows for notebook 05: few-shot accuracy with the function vector's direction
    projected out of the middle layer (``n_layers // 2``, every position), against ``N_RANDOM``
    random directions, another direction (the task vector's) and the first token spared.

    The function vector comes from :func:`fv_exercises.heads.function_vector_details` (train
    prompts, kept per model); the task vector is the mean difference on the train prompts;
    accuracies are on the test prompts. The figure (when ``ctx.out_dir`` is set): accuracy with
    each direction removed at single layers (every ``FIGURE_STEP``-th) on ``FIGURE_PROMPTS`` test
    prompts.
    """
    from fv_exercises.heads import function_vector_details
    from fv_exercises.report import Row, accuracy_row, difference_row
    from fv_exercises.stats import accuracy, mean_and_spread, paired_difference
    from fv_exercises.task_vectors import task_vectors_all_layers

    model, train, test = ctx.model, ctx.train, ctx.test
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    fv = function_vector_details(model, ctx.task, ctx.seed).vector
    layer = n_layers // 2  # the notebook's control layer: where the task is used (notebooks 02-03)
    tv = task_vectors_all_layers(model, train.prompts, train.zero_shot_prompts)  # [n_layers, d]
    randoms = random_directions(N_RANDOM, d_model, seed=ctx.seed, device=model_device(ctx.model))
    plans = torch.cat([single_layer_plans(fv, n_layers, [layer]),
                       single_layer_plans(tv, n_layers, [layer])]
                      + [single_layer_plans(u, n_layers, [layer]) for u in randoms])
    out = ablation_outcomes(model, test.prompts, test.answers, plans, progress=ctx.progress)
    spared = ablation_outcomes(model, test.prompts, test.answers, plans[:1], from_position=1)
    fv_c, tv_c, rnd_c = out.correct[0], out.correct[1], out.correct[2:].float()  # [n], [n], [R, n]
    mean, sd = mean_and_spread(rnd_c.mean(1).tolist())
    rows = [
        accuracy_row("few-shot ICL, nothing removed", accuracy(out.clean_correct)),
        accuracy_row("few-shot, function-vector direction removed", accuracy(fv_c),
                     f"layer {layer}, every position"),
        Row(f"few-shot, one of {N_RANDOM} random directions removed", f"{mean:.0%}", f"sd {sd:.0%}",
            f"layer {layer}, control", mean),
        difference_row("FV removed - random removed (paired)", paired_difference(fv_c, rnd_c.mean(0)),
                       "mean over the random directions per query"),
        accuracy_row("few-shot, task-vector direction removed", accuracy(tv_c), f"layer {layer}"),
        accuracy_row("few-shot, FV removed except at the first token", accuracy(spared.correct[0]),
                     f"layer {layer}"),
    ]
    path = ctx.figure_path("ablation")
    if path is not None:
        import matplotlib.pyplot as plt

        layers = sorted(set(range(0, n_layers, FIGURE_STEP)) | {layer})
        few = slice(0, FIGURE_PROMPTS)
        curves = ablation_outcomes(
            model, test.prompts[few], test.answers[few],
            torch.cat([single_layer_plans(fv, n_layers, layers), single_layer_plans(tv, n_layers, layers)]),
            progress=ctx.progress)
        acc = curves.correct.float().mean(1)
        panel = AblationPanel(ctx.task, curves.clean_correct.float().mean().item(),
                              {"FV, single layer": (layers, acc[:len(layers)]),
                               "TV, single layer": (layers, acc[len(layers):])},
                              layer, rnd_c[:, few].mean(1), {})
        fig = plot_ablation([panel], n_layers, title=f"{ctx.task}: direction projected out "
                            f"({min(FIGURE_PROMPTS, len(test))} test prompts)")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rows.append(Row("figure: ablation by layer", "", "", str(path)))
    return rows
