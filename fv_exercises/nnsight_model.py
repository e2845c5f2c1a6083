"""nnsight on the course model (notebook 07): a separate copy of the weights, and both libraries'
versions of the course's interventions.

nnsight wraps a plain Hugging Face model. ``with nn_model.trace(prompt):`` runs the body of the
``with`` block *during* the forward pass: reading ``layer.output`` waits until that layer has run
and hands over its real output tensor, assigning to it (or editing it in place) changes what the
next layer receives, and ``.save()`` marks the values the block hands back when it ends.

Two copies, never one. ``TransformerBridge.boot_transformers(..., hf_model=m)`` rewrites ``m``'s
attention modules in place, so the nnsight copy is loaded separately from the same offline cache
(:func:`load_nnsight_model`). Both copies run eager attention (the bridge's choice), so the two
libraries compute bit-identical activations here; with PyTorch's fused ``sdpa`` attention they
differ by float rounding (measured: about 1e-3 on residual-stream entries in the thousands).

Tokenization: the course tokenizes the embedded model without BOS (``default_prepend_bos =
False`` on the bridge); the Hugging Face tokenizer nnsight uses adds none either, so both see the
same token ids (:func:`token_ids_match`). Tiny test models loaded through the bridge prepend BOS
by default: :func:`matching_bos` makes the bridge follow the nnsight side while comparing.

Which nnsight module holds the decoder layers depends on the family (``model.layers`` for
Llama, Qwen2 and Gemma, ``transformer.h`` for GPT-2, ``gpt_neox.layers`` for GPT-NeoX):
:func:`decoder_layers` finds them from the Hugging Face model's ``base_model_prefix``. In
transformers 5 every decoder layer returns its hidden states as one tensor (not a tuple), so
``decoder_layers(nn_model)[l].output`` *is* TransformerLens's ``blocks.{l}.hook_resid_post``.

Remote execution (``trace(..., remote=True)`` on NDIF) is shown in the notebook as guarded code
that runs only when asked to *and* ``$NDIF_API_KEY`` is set; nothing here touches a network.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from fv_exercises.evaluation import (answer_token_ids, last_position_logits, mean_resid_post,
                                     resid_post_name, tokenize_right_padded)
from fv_exercises.model import ModelLoadError, _quiet_transformers, convert_embedded
from fv_exercises.report import Row, accuracy_row
from fv_exercises.stats import accuracy

if TYPE_CHECKING:  # pragma: no cover
    from nnsight import TransformersModel

DEFAULT_BATCH = 16


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_nnsight_model(path: str | os.PathLike | None = None,
                       attn_implementation: str = "eager") -> "TransformersModel":
    """A fresh Hugging Face copy of a local model, wrapped for nnsight tracing.

    Args:
        path: ``None`` for the embedded SmolLM2-135M-Instruct (the offline cache that
            :func:`fv_exercises.load_model` also reads; converted first if needed), or any local
            folder holding a saved Hugging Face causal LM (``config.json``, weights, tokenizer).
        attn_implementation: ``"eager"`` (default) matches the TransformerLens bridge bit for bit;
            ``"sdpa"`` is faster on long prompts and differs by float rounding.

    Returns:
        ``nnsight.TransformersModel`` (task ``text-generation``) in eval mode, float32, with frozen
        parameters. Its tokenizer pads on the left (nnsight's choice for decoders), so
        ``output[:, -1]`` is every prompt's last real token in a batch.

    Never pass a Hugging Face model that a ``TransformerBridge`` wraps: the bridge has rewritten
    it. This function always loads its own copy (about 0.5 GB for the embedded model).
    """
    _quiet_transformers()
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = convert_embedded() if path is None else Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} holds no config.json: not a saved Hugging Face model. "
                             "nnsight here loads local folders only (no hub).")
    hf_model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn_implementation)
    hf_model.eval()
    hf_model.requires_grad_(False)
    if (folder / "model.safetensors").is_file():
        hf_model.fv_weights_file = folder / "model.safetensors"  # the checks restore from it
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # TransformersModel, not LanguageModel: in nnsight 0.8 LanguageModel is a deprecated alias
    # that warns on construction.
    return TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")


def bridge_folder(model) -> Path | None:
    """The local folder a bridge from :func:`fv_exercises.load_model` was loaded from (or None)."""
    weights = getattr(model, "fv_weights_file", None)
    return Path(weights).parent if weights is not None else None


def hf_module(nn_model) -> torch.nn.Module:
    """The Hugging Face model an nnsight model wraps."""
    return nn_model._module


def decoder_layers(nn_model):
    """The nnsight envoys of the decoder layers, indexable like a list: ``[l].output``.

    ``nn_model.model.layers`` for Llama/Qwen2/Gemma, ``nn_model.transformer.h`` for GPT-2,
    ``nn_model.gpt_neox.layers`` for GPT-NeoX: found through the Hugging Face model's
    ``base_model_prefix`` and the first of ``layers``, ``h``, ``blocks`` that is a ModuleList.
    """
    hf = hf_module(nn_model)
    base = getattr(nn_model, hf.base_model_prefix)
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(base._module, name, None), torch.nn.ModuleList):
            return getattr(base, name)
    raise ValueError(f"no decoder layers found in {type(hf).__name__} "
                     f"(looked for layers/h/blocks under `{hf.base_model_prefix}`)")


def n_layers(nn_model) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(nn_model)._module)


# --------------------------------------------------------------------------------------------
# Same tokens on both sides
# --------------------------------------------------------------------------------------------


def adds_bos(tokenizer) -> bool:
    """Does ``tokenizer(text)`` (nnsight's tokenization) start with the BOS token?"""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("x")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def nnsight_token_ids(nn_model, prompt: str) -> list[int]:
    """The token ids nnsight's trace feeds the model for ``prompt`` (its tokenizer's defaults)."""
    return list(nn_model.tokenizer(prompt)["input_ids"])


def token_ids_match(model, nn_model, prompts: Sequence[str]) -> bool:
    """Do the bridge (``model.to_tokens``) and nnsight tokenize every prompt identically?"""
    return all(model.to_tokens(p)[0].tolist() == nnsight_token_ids(nn_model, p) for p in prompts)


@contextlib.contextmanager
def matching_bos(model, nn_model) -> Iterator[None]:
    """Inside: the bridge prepends BOS exactly when nnsight's tokenizer adds it (restored after).

    A no-op for the embedded model (neither side adds BOS). Tiny test models loaded through the
    bridge prepend BOS by default while their tokenizer adds none.
    """
    before = model.cfg.default_prepend_bos
    model.cfg.default_prepend_bos = adds_bos(nn_model.tokenizer)
    try:
        yield
    finally:
        model.cfg.default_prepend_bos = before


# --------------------------------------------------------------------------------------------
# nnsight: read, write, project out (batched: left padding, so [:, -1] is the last real token)
# --------------------------------------------------------------------------------------------


def nnsight_hidden_states(nn_model, prompt: str) -> Tensor:
    """Every decoder layer's output for one prompt: ``[n_layers, seq, d_model]``.

    Equal to TransformerLens's ``blocks.{l}.hook_resid_post`` for ``l = 0 .. n_layers - 1``.
    """
    layers = decoder_layers(nn_model)
    with torch.no_grad(), nn_model.trace(prompt):
        states = [layer.output[0] for layer in layers]  # row 0 of each [1, seq, d_model]
        states.save()  # the list itself must be saved, not only its items
    return torch.stack(states)


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def nnsight_last_logits(nn_model, prompts: Sequence[str], add: Mapping[int, Tensor] | None = None,
                        project_out: Mapping[int, Tensor] | None = None,
                        batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Last-position logits ``[n, d_vocab]``, optionally with interventions.

    Args:
        add: ``{layer: vector}``: ``vector`` (``[d_model]``) added to that layer's output at the
            last position of every prompt (notebook 01's task vector).
        project_out: ``{layer: direction}``: the direction projected out of that layer's output
            at every position (notebook 05's ablation).

    Interventions are applied in layer order: inside one trace, modules must be visited in the
    order the model runs them (nnsight raises ``OutOfOrderError`` otherwise).
    """
    layers = decoder_layers(nn_model)
    plan = sorted([(l, "add", v) for l, v in (add or {}).items()]
                  + [(l, "project", v) for l, v in (project_out or {}).items()], key=lambda x: x[0])
    out = []
    for chunk in _chunks(prompts, batch_size):
        with torch.no_grad(), nn_model.trace(chunk):
            for layer, kind, vector in plan:
                if kind == "add":
                    layers[layer].output[:, -1] += vector
                else:
                    unit = vector / vector.norm()
                    hidden = layers[layer].output
                    layers[layer].output = hidden - (hidden @ unit)[..., None] * unit
            logits = nn_model.output.logits[:, -1].save()
        out.append(logits)
    return torch.cat(out)


def nnsight_project_out(nn_model, prompt: str, direction: Tensor, layer: int) -> Tensor:
    """Logits ``[1, seq, d_vocab]`` with ``direction`` projected out of layer ``layer``'s output
    at every position: ``h - (h . u) u`` with ``u = direction / |direction|``."""
    layers = decoder_layers(nn_model)
    unit = direction / direction.norm()
    with torch.no_grad(), nn_model.trace(prompt):
        hidden = layers[layer].output
        layers[layer].output = hidden - (hidden @ unit)[..., None] * unit
        logits = nn_model.output.logits.save()
    return logits


def nnsight_add_icl_state(nn_model, icl_prompt: str, zero_shot_prompt: str, layer: int) -> Tensor:
    """nnsight: logits of ``zero_shot_prompt`` with ``icl_prompt``'s last-position state added.

    Decoder layer ``layer``'s output at the last position of ``icl_prompt`` (``[1, d_model]``) is
    added to the same layer's output at the last position of ``zero_shot_prompt`` only. The
    computation notebook 07's graded ``nnsight_task_vector_logits`` asks for; its TransformerLens
    counterpart is :func:`tl_add_icl_state`.

    Returns:
        logits ``[1, seq_len(zero_shot_prompt), d_vocab]``.
    """
    layers = decoder_layers(nn_model)
    with torch.no_grad():
        with nn_model.trace(icl_prompt):
            h_task = layers[layer].output[:, -1].save()  # [1, d_model]
        with nn_model.trace(zero_shot_prompt):
            layers[layer].output[:, -1] += h_task
            logits = nn_model.output.logits.save()
    return logits


def nnsight_generate(nn_model, prompt: str, n_tokens: int, vector: Tensor | None = None,
                     layer: int | None = None) -> Tensor:
    """Greedy continuation of exactly ``n_tokens`` new token ids ``[n_tokens]`` (no stop at EOS).

    Args:
        vector: ``None`` (default) for no intervention; else ``[d_model]``, added to decoder layer
            ``layer``'s output at the last position of *every* forward pass (with the key/value
            cache: the prompt's last token, then each new token once). The computation notebook
            07's graded ``nnsight_generate_with_vector`` asks for; its TransformerLens counterpart
            is :func:`tl_generate_with_vector`.
        layer: the decoder layer ``vector`` is added to (required with ``vector``).
    """
    if vector is None:
        with torch.no_grad(), nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False,
                                                eos_token_id=None) as tracer:
            ids = tracer.result.save()
        return ids[0, -n_tokens:]
    if layer is None:
        raise ValueError("nnsight_generate: a vector needs the layer to add it to")
    layers = decoder_layers(nn_model)
    with torch.no_grad(), nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False,
                                            eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:  # one forward pass per new token
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()  # [1, prompt_len + n_tokens]
    return ids[0, -n_tokens:]


# --------------------------------------------------------------------------------------------
# TransformerLens counterparts (notebooks 01, 05 and 06 write the graded versions)
# --------------------------------------------------------------------------------------------


def _projection_hook(direction: Tensor):
    unit = direction / direction.norm()

    def hook(resid: Tensor, hook=None) -> Tensor:
        return resid - (resid @ unit)[..., None] * unit

    return hook


def tl_add_icl_state(model, icl_prompt: str, zero_shot_prompt: str, layer: int) -> Tensor:
    """TransformerLens: logits of ``zero_shot_prompt`` with ``icl_prompt``'s last-position
    ``blocks.{layer}.hook_resid_post`` (``[1, d_model]``) added at the same hook, last position
    only (notebook 01's ``find_task_vector``; nnsight: :func:`nnsight_add_icl_state`).

    Returns:
        logits ``[1, seq_len(zero_shot_prompt), d_vocab]``.
    """
    name = resid_post_name(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(icl_prompt, names_filter=lambda n: n == name)
        h_task = cache[name][:, -1]  # [1, d_model]: the final position

        def add(resid: Tensor, hook=None) -> Tensor:
            resid = resid.clone()
            resid[:, -1] += h_task
            return resid

        return model.run_with_hooks(zero_shot_prompt, fwd_hooks=[(name, add)])


def tl_project_out(model, prompt: str, direction: Tensor, layer: int) -> Tensor:
    """TransformerLens: ``direction`` projected out of ``blocks.{layer}.hook_resid_post`` at every
    position; logits ``[1, seq, d_vocab]`` (notebook 05's ``ablate_function_vector``)."""
    with torch.no_grad():
        return model.run_with_hooks(prompt, fwd_hooks=[(resid_post_name(layer), _projection_hook(direction))])


def tl_last_logits_projected(model, prompts: Sequence[str], direction: Tensor, layer: int,
                             batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Batched :func:`tl_project_out`, last-position logits ``[n, d_vocab]`` (right padding:
    projecting padded positions cannot reach real ones in a causal model)."""
    out = []
    with torch.no_grad():
        for chunk in _chunks(prompts, batch_size):
            tokens, last = tokenize_right_padded(model, chunk)
            logits = model.run_with_hooks(
                tokens, fwd_hooks=[(resid_post_name(layer), _projection_hook(direction))])
            out.append(logits[torch.arange(len(chunk), device=last.device), last])
    return torch.cat(out)


def tl_generate_with_vector(model, prompt: str, vector: Tensor | None, layer: int, n_tokens: int,
                            use_cache: bool = True, every_position: bool = False) -> Tensor:
    """TransformerLens: greedy generation of exactly ``n_tokens`` new tokens ``[n_tokens]``, with
    ``vector`` added to ``blocks.{layer}.hook_resid_post`` at the last position of *every*
    forward pass (no early stop at EOS).

    With the key/value cache (``use_cache``, the default, as ``nn_model.generate`` runs) the first
    pass reads the whole prompt and each later pass only the newest token, so every generated
    token gets the vector once and keeps it in its cached keys and values. ``use_cache=False`` is
    the seed's loop: the whole sequence is recomputed each step and only its last position gets
    the vector. ``every_position`` adds it at every position of each pass. ``vector=None``: no
    intervention.
    """
    tokens = model.to_tokens(prompt)
    hooks = []
    if vector is not None:
        def add(resid: Tensor, hook=None) -> Tensor:
            resid = resid.clone()
            if every_position:
                resid += vector
            else:
                resid[:, -1] += vector
            return resid

        hooks = [(resid_post_name(layer), add)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        out = model.generate(tokens, max_new_tokens=n_tokens, do_sample=False, stop_at_eos=False,
                             use_past_kv_cache=use_cache, verbose=False)
    return out[0, tokens.shape[1]:]


# --------------------------------------------------------------------------------------------
# The main job
# --------------------------------------------------------------------------------------------


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def headline(ctx) -> list:
    """Main-job rows for notebook 07: both libraries on the same interventions.

    For each intervention, the largest difference between TransformerLens (on ``ctx.model``) and
    nnsight (on a separate copy of the same weights), and the wall time of each. The task vector
    is notebook 01's mean difference (train prompts) at 2/3 of the depth (fixed, not tuned); its
    accuracy is on the test queries, in both libraries.
    """
    model, train, test = ctx.model, ctx.train, ctx.test
    folder = bridge_folder(model)
    if folder is None:
        return [Row("nnsight comparison", "", "", "skipped: the bridge was not loaded from a local folder")]
    nn_model = load_nnsight_model(folder)
    rows = []
    with torch.no_grad(), matching_bos(model, nn_model):
        layer = 2 * model.cfg.n_layers // 3
        prompt = test.prompts[0]

        def timing(name: str, diff: float, t_tl: float, t_nn: float, note: str = "") -> Row:
            return Row(name, f"{diff:.1g}", "", f"{note}TL {t_tl:.2f} s, nnsight {t_nn:.2f} s", diff)

        _, cache = model.run_with_cache(prompt)
        tl_states = torch.stack([cache[resid_post_name(l)][0] for l in range(model.cfg.n_layers)])
        nn_states, t_nn = _timed(nnsight_hidden_states, nn_model, prompt)
        _, t_tl = _timed(model.run_with_cache, prompt)
        rows.append(timing("hidden states, every layer: max |TL - nnsight|",
                           (tl_states - nn_states).abs().max().item(), t_tl, t_nn))

        icl, zero = train.prompts[0], test.zero_shot_prompts[0]
        tl_logits, t_tl = _timed(tl_add_icl_state, model, icl, zero, layer)
        nn_logits, t_nn = _timed(nnsight_add_icl_state, nn_model, icl, zero, layer)
        rows.append(timing("task vector added (logits): max |TL - nnsight|",
                           (tl_logits - nn_logits).abs().max().item(), t_tl, t_nn, f"layer {layer}; "))

        vector = (mean_resid_post(model, train.prompts) - mean_resid_post(model, train.zero_shot_prompts))[layer]
        tl_proj, t_tl = _timed(tl_project_out, model, prompt, vector, layer)
        nn_proj, t_nn = _timed(nnsight_project_out, nn_model, prompt, vector, layer)
        rows.append(timing("task direction projected out (logits): max |TL - nnsight|",
                           (tl_proj - nn_proj).abs().max().item(), t_tl, t_nn, f"layer {layer}; "))

        n_tokens, queries = 8, test.zero_shot_prompts[:3]
        same, t_tl, t_nn = 0, 0.0, 0.0
        for query in queries:
            a, dt = _timed(tl_generate_with_vector, model, query, vector, layer, n_tokens)
            b, dn = _timed(nnsight_generate, nn_model, query, n_tokens, vector, layer)
            same, t_tl, t_nn = same + int(torch.equal(a, b)), t_tl + dt, t_nn + dn
        rows.append(Row("generation with the vector: identical continuations", f"{same}/{len(queries)}",
                        "", f"{n_tokens} tokens each; TL {t_tl:.2f} s, nnsight {t_nn:.2f} s", same / len(queries)))

        answers = test.answers
        ids = answer_token_ids(model, answers)
        tl_pred = last_position_logits(model, test.zero_shot_prompts, add={layer: vector}).argmax(-1)
        nn_pred = nnsight_last_logits(nn_model, test.zero_shot_prompts, add={layer: vector}).argmax(-1)
        rows += [
            accuracy_row("zero-shot + mean task vector, TransformerLens", accuracy(tl_pred == ids), f"layer {layer}"),
            accuracy_row("zero-shot + mean task vector, nnsight", accuracy(nn_pred == ids), f"layer {layer}"),
            Row("same top-1 token in both libraries", f"{int((tl_pred == nn_pred).sum())}/{len(ids)}", "",
                "test queries", (tl_pred == nn_pred).float().mean().item()),
        ]
    del nn_model
    return rows
