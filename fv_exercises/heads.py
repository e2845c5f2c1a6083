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
  and recompute only the last position, only from the patched layer upward, for many
  patched heads at once (a batch of one-position rows sharing the same prefix).
- :func:`attribution_head_effects` -- a first-order (gradient) estimate from one forward
  and one backward pass per batch of prompts: cheap, approximate.

Everything runs on the ``TransformerBridge`` returned by :func:`fv_exercises.load_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from fv_exercises.evaluation import answer_token_ids, tokenize_right_padded

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


def last_position_z(model, prompts: Sequence[str], batch_size: int = DEFAULT_BATCH) -> Tensor:
    """Every head's ``z`` at each prompt's last position.

    Returns:
        ``[n_prompts, n_layers, n_heads, d_head]``.
    """
    n_layers = model.cfg.n_layers
    names = {z_name(l) for l in range(n_layers)}
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens, last = tokenize_right_padded(model, prompts[start : start + batch_size])
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            rows = torch.arange(len(last))
            # cache[z_name(l)] is [batch, pos, n_heads, d_head]; keep each prompt's own last pos
            out.append(torch.stack([cache[z_name(l)][rows, last] for l in range(n_layers)], dim=1))
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
        z[:, pos, head] = value.to(z.dtype)
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
    total = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
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
    effects = torch.full_like(total, float("nan"))
    for l, h in heads:
        effects[l, h] = total[l, h] / len(corrupted_prompts)
    return effects


# --------------------------------------------------------------------------------------------
# 3. Causal effects, fast: reuse the prefix, recompute only the last position
# --------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One decoder layer's pieces, taken from the HF modules underneath the bridge."""

    ln1: torch.nn.Module  # RMSNorm before attention
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    ln2: torch.nn.Module  # RMSNorm before the MLP
    mlp: "_GatedMLP"  # down(act(gate(x)) * up(x))
    scaling: float


class _LlamaLastPosition:
    """The forward pass of a Llama-style model for ONE new position per prompt, given its prefix.

    Uses the bridge's own weights (the HF modules it wraps) and the same operations as the
    bridge's attention (RoPE via transformers' ``apply_rotary_pos_emb``, grouped-query
    attention, softmax in float32), so it matches the bridge's forward up to float rounding.
    Nothing here is hard-coded: sizes come from ``model.cfg``.

    Shapes: ``B`` prompts (right-padded to ``S`` positions, prompt ``b`` ends at ``last[b]``),
    ``R`` rows per prompt (versions of its last position: one per patched head).
    """

    def __init__(self, model):
        _check_llama_style(model)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.apply_rotary_pos_emb = apply_rotary_pos_emb
        self.n_heads = model.cfg.n_heads
        self.n_kv = getattr(model.cfg, "n_key_value_heads", None) or self.n_heads
        self.d_head = model.cfg.d_head
        self.rotary = model.original_model.model.rotary_emb.original_component
        self.norm = model.ln_final.original_component
        self.unembed = model.unembed.original_component
        self.layers = []
        for block in model.blocks:
            attn = block.attn.original_component
            self.layers.append(
                _Layer(
                    ln1=block.ln1.original_component,
                    q=block.attn.q.original_component,
                    k=block.attn.k.original_component,
                    v=block.attn.v.original_component,
                    o=block.attn.o.original_component,
                    ln2=block.ln2.original_component,
                    mlp=_GatedMLP(block.mlp),
                    scaling=float(getattr(attn, "scaling", self.d_head**-0.5)),
                )
            )

    def cos_sin(self, n_positions: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE tables for positions ``0 .. n_positions-1``: two ``[1, n_positions, d_head]``."""
        position_ids = torch.arange(n_positions, device=like.device)[None]
        return self.rotary(like, position_ids)

    def prefix_kv(
        self, layer: int, resid_pre: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Rotated keys and values of every position at ``layer``, as the unpatched run saw them.

        ``resid_pre``: ``[B, S, d_model]`` -> two ``[B, n_kv, S, d_head]``. Only positions
        before each prompt's last one are used (see ``attention``): a patch at the last position
        cannot reach back to them in a causal model, so they are the same in every patched run.
        """
        L = self.layers[layer]
        B, S, _ = resid_pre.shape
        x = L.ln1(resid_pre)
        k = L.k(x).view(B, S, self.n_kv, self.d_head).transpose(1, 2)
        v = L.v(x).view(B, S, self.n_kv, self.d_head).transpose(1, 2)
        # apply_rotary_pos_emb rotates q and k together; pass k twice and keep one
        _, k = self.apply_rotary_pos_emb(k, k, cos, sin)
        return k, v

    def attention(
        self,
        layer: int,
        x: Tensor,
        kv: tuple[Tensor, Tensor],
        prefix_mask: Tensor,
        cos_p: Tensor,
        sin_p: Tensor,
    ) -> Tensor:
        """Every head's ``z`` for rows ``x`` (last-position ``resid_pre``, ``[B, R, d_model]``).

        All rows of prompt ``b`` attend to the same prefix (``kv``: two ``[B, n_kv, S, d_head]``,
        of which ``prefix_mask`` ``[B, S]`` keeps positions ``< last[b]``) and to their own new
        key/value. ``cos_p``/``sin_p``: RoPE at position ``last[b]``, ``[B, 1, d_head]``.
        Returns ``z``: ``[B, R, n_heads, d_head]``.
        """
        L = self.layers[layer]
        B, R, _ = x.shape
        G, D = self.n_kv, self.d_head
        n_rep = self.n_heads // G  # query heads per key/value head (GQA)
        h = L.ln1(x)
        q = L.q(h).view(B, R, self.n_heads, D)
        k = L.k(h).view(B, R, G, D)
        v = L.v(h).view(B, R, G, D)
        q, k = self.apply_rotary_pos_emb(q, k, cos_p, sin_p)  # broadcast over rows and heads
        # query head g*n_rep + j reads key/value head g (transformers' repeat_kv layout)
        q = q.view(B, R, G, n_rep, D)
        K, V = kv
        scores_prefix = torch.einsum("brgjd,bgsd->brgjs", q, K)  # [B, R, G, n_rep, S]
        keep = prefix_mask[:, None, None, None, :]
        scores_prefix = scores_prefix.masked_fill(~keep, float("-inf"))
        score_self = torch.einsum("brgjd,brgd->brgj", q, k)[..., None]  # [B, R, G, n_rep, 1]
        scores = torch.cat([scores_prefix, score_self], dim=-1) * L.scaling
        pattern = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        z = torch.einsum("brgjs,bgsd->brgjd", pattern[..., :-1], V)
        z = z + pattern[..., -1:] * v[:, :, :, None, :]
        return z.reshape(B, R, self.n_heads, D)

    def finish_block(self, layer: int, resid_pre: Tensor, z: Tensor) -> Tensor:
        """``resid_post`` of block ``layer`` from ``resid_pre`` ``[..., d_model]`` and ``z``.

        ``z``: ``[..., n_heads, d_head]``. Returns ``[..., d_model]``.
        """
        L = self.layers[layer]
        resid_mid = resid_pre + L.o(z.flatten(-2))
        return resid_mid + L.mlp(L.ln2(resid_mid))

    def answer_probs(self, resid: Tensor, answer_ids: Tensor, rows_per_step: int = 512) -> Tensor:
        """P(answer) after the final norm and unembedding: ``[B, R, d_model]`` -> ``[B, R]``.

        ``answer_ids``: ``[B]``. Done ``rows_per_step`` rows at a time: full logits for all rows
        would need ``B x R x d_vocab`` floats (e.g. 8 x 270 x 49152 x 4 bytes = 425 MB).
        """
        B, R, d = resid.shape
        flat = resid.reshape(B * R, d)
        ans = answer_ids.repeat_interleave(R)
        out = []
        for i in range(0, B * R, rows_per_step):
            logits = self.unembed(self.norm(flat[i : i + rows_per_step])).float()
            rows = torch.arange(logits.shape[0])
            out.append(logits.softmax(-1)[rows, ans[i : i + rows_per_step]])
        return torch.cat(out).view(B, R)


class _GatedMLP:
    """``down(act(gate(x)) * up(x))`` with the HF weights (skips the bridge's hook points)."""

    def __init__(self, mlp_bridge):
        self.gate = mlp_bridge.gate.original_component
        self.up = getattr(mlp_bridge, "in").original_component
        self.down = mlp_bridge.out.original_component
        self.act = mlp_bridge.original_component.act_fn

    def __call__(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def _check_llama_style(model) -> None:
    """Raise ``NotImplementedError`` unless the model is Llama-style (all the fast path knows)."""
    hf = getattr(model, "original_model", None)
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    problems = []
    if model_type != "llama":
        problems.append(f"model_type is {model_type!r}, not 'llama'")
    if getattr(model.cfg, "positional_embedding_type", None) != "rotary":
        problems.append("positional embeddings are not rotary")
    if getattr(model.cfg, "normalization_type", None) != "RMS":
        problems.append("normalization is not RMSNorm")
    if not getattr(model.cfg, "gated_mlp", False):
        problems.append("MLP is not gated")
    if not problems:
        block = model.blocks[0]
        if getattr(block.mlp, "_use_processed_weights", False):
            problems.append("compatibility mode (processed weights) is enabled")
        if getattr(block.attn.original_component, "sliding_window", None):
            problems.append("sliding-window attention")
    if problems:
        raise NotImplementedError(
            "head_effects' fast path supports Llama-style models (RoPE, RMSNorm, gated MLP, "
            "full causal attention) loaded without compatibility mode; here: "
            f"{'; '.join(problems)}. Use head_effects_naive(...) instead: same numbers, "
            "one forward pass per head and prompt."
        )


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

    For a batch of prompts: one forward pass of the bridge gives every layer's ``resid_pre``
    (``[batch, pos, d_model]``) and ``z`` (``[batch, pos, n_heads, d_head]``). For a head
    ``(l, h)`` the patched run differs only at the last position and only from layer ``l`` on,
    so we build one row, ``resid_post[l]`` at the last position with ``z[last, h]`` replaced by
    ``mean_z[l, h]``, then push it through layers ``l+1 ..`` alone, attending to the prefix's
    (unchanged) keys and values. All heads travel together as a batch of rows per prompt that
    grows layer by layer; prompts are batched too.

    Args:
        mean_z: ``[n_layers, n_heads, d_head]`` from :func:`mean_head_z` on clean prompts.
        heads: optional list of ``(layer, head)``; the others are ``NaN`` (default: all heads).
        batch_heads: at most this many patched heads per batch (default: all at once; lower it
            only to save memory).
        progress: show a tqdm progress bar (off by default: grading cells must not write to
            stderr).
        check_tol: each prompt also recomputes its *unpatched* last position from layer 0 this
            way; if its answer probability differs from the bridge's own forward by more than
            this, we raise instead of returning wrong numbers.

    Returns:
        ``effects``: ``[n_layers, n_heads]``.

    Raises:
        NotImplementedError: for architectures other than Llama-style (use the naive scan).
    """
    fast = _LlamaLastPosition(model)
    heads = _all_heads(model) if heads is None else sorted({(int(l), int(h)) for l, h in heads})
    batch_heads = len(heads) if batch_heads is None else max(1, int(batch_heads))
    chunks = [heads[i : i + batch_heads] for i in range(0, len(heads), batch_heads)]
    n_layers = model.cfg.n_layers
    pre_names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    names = set(pre_names) | {z_name(l) for l in range(n_layers)}
    answer_ids = answer_token_ids(model, answers)
    total = torch.zeros(n_layers, model.cfg.n_heads)
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
            logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
            rows = torch.arange(len(last))
            p_corrupted = logits[rows, last].float().softmax(-1)[rows, ans]  # [B]
            prefix = _Prefix(
                resid_pre=[cache[name] for name in pre_names],  # each [B, S, d_model]
                z_last=[cache[z_name(l)][rows, last] for l in range(n_layers)],  # [B, H, d_head]
                last=last,
            )
            del cache
            for c, chunk in enumerate(chunks):
                probs, p_check = _scan_chunk(fast, prefix, chunk, mean_z, ans, with_check=c == 0)
                if p_check is not None:
                    worst = (p_check - p_corrupted).abs().max().item()
                    if worst > check_tol:
                        raise RuntimeError(
                            "head_effects: the last-position recomputation disagrees with the "
                            f"bridge's forward (answer probability off by {worst:.2e}); "
                            "use head_effects_naive for this model."
                        )
                effect = (probs - p_corrupted[:, None]).sum(0)  # summed over prompts: [len(chunk)]
                for (l, h), e in zip(chunk, effect.tolist()):
                    total[l, h] += e
            if bar is not None:
                bar.update(len(last))
    if bar is not None:
        bar.close()
    effects = torch.full_like(total, float("nan"))
    for l, h in heads:
        effects[l, h] = total[l, h] / n
    return effects


@dataclass
class _Prefix:
    """What the fast scan keeps from the unpatched forward pass of a batch of ``B`` prompts."""

    resid_pre: list[Tensor]  # per layer: [B, S, d_model], every position (right-padded)
    z_last: list[Tensor]  # per layer: [B, n_heads, d_head], each prompt's last position
    last: Tensor  # [B]: index of each prompt's last position


def _scan_chunk(
    fast: _LlamaLastPosition,
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
    batch = torch.arange(B)
    cos, sin = fast.cos_sin(S, prefix.resid_pre[0])  # [1, S, d_head]
    cos_p, sin_p = cos[0, last][:, None], sin[0, last][:, None]  # [B, 1, d_head]
    prefix_mask = torch.arange(S)[None] < last[:, None]  # [B, S]: positions before the last
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
            z[:, torch.arange(len(new)), new] = mean_z[l, new].to(z.dtype)
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
    total = torch.zeros(n_layers, n_heads)
    for start in range(0, len(corrupted_prompts), batch_size):
        tokens, last = tokenize_right_padded(model, corrupted_prompts[start : start + batch_size])
        rows = torch.arange(len(last))
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
            dz = mean_z[l].to(g.dtype) - z_seen[l][rows, last]
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
    fv = torch.zeros(W_O.shape[-1], dtype=W_O.dtype)
    for l, h in heads:
        fv = fv + mean_z[l, h].to(W_O.dtype) @ W_O[l, h]
    return fv
