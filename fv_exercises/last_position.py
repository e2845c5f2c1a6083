"""Recomputing only the last position of a prompt, given the rest: the forward pass, cut short.

Patching an activation at a prompt's **last** position cannot change any earlier position in a
causal model, so every earlier position's keys and values are those of the unpatched run. Many
interventions at the last position (one per attention head, say) can therefore share one run of
the prefix and recompute just one position each. Two engines do that here:

- :class:`LlamaLastPosition` re-implements a Llama-style block (RMSNorm, RoPE, grouped-query
  attention, gated MLP) with the model's own weights, for *one* new position per row, starting at
  any layer. Rows patched at layer ``l`` skip layers ``0 .. l-1`` entirely: the fastest path, and
  only for Llama-style models (the embedded SmolLM2 is one).
- :func:`prefix_cache` and :func:`run_last_position` use the model's own key/value cache through
  the bridge: the prefix is run once, its cache repeated for ``R`` rows, and the last token run
  for all rows with the usual hooks. Exact for every architecture the bridge can cache (GPT-2,
  GPT-NeoX, Qwen2, Gemma, ...), about 3x slower than the Llama engine on the embedded model.

:mod:`fv_exercises.heads` uses both for its exact head scan; callers should check their results
against the bridge's own forward (both scans carry an unpatched control row).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor



# --------------------------------------------------------------------------------------------
# Any architecture: the model's own key/value cache
# --------------------------------------------------------------------------------------------


def prefix_cache(model, tokens: Tensor):
    """Run ``tokens[:, :-1]`` (one prompt, ``[1, S]``) and return the Hugging Face KV cache, or
    ``None`` when this model's bridge cannot return one."""
    if tokens.shape[0] != 1 or tokens.shape[1] < 2:
        raise ValueError(f"prefix_cache takes one prompt of at least 2 tokens, got {tuple(tokens.shape)}")
    try:
        _, cache = model(tokens[:, :-1], return_type="logits_and_cache")
    except Exception:  # pragma: no cover - architectures without a cache path
        return None
    return cache if cache is not None and hasattr(cache, "batch_repeat_interleave") else None


def run_last_position(model, tokens: Tensor, cache, rows: int,
                      fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Tensor:
    """Logits of the last token of ``tokens`` (``[1, S]``) for ``rows`` copies: ``[rows, d_vocab]``.

    ``cache``: from :func:`prefix_cache` on the same tokens (left untouched: a copy is repeated).
    Hooks see activations of shape ``[rows, 1, ...]``: row ``r`` is one version of the last
    position, so a hook can patch each row differently.
    """
    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(rows)
    logits = model.run_with_hooks(tokens[:, -1:].repeat(rows, 1), fwd_hooks=list(fwd_hooks),
                                  past_key_values=repeated)
    return logits[:, -1]


# --------------------------------------------------------------------------------------------
# Llama-style models: re-implemented blocks, one new position per row, from any layer
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


class LlamaLastPosition:
    """The forward pass of a Llama-style model for ONE new position per prompt, given its prefix.

    Uses the bridge's own weights (the HF modules it wraps) and the same operations as the
    bridge's attention (RoPE via transformers' ``apply_rotary_pos_emb``, grouped-query
    attention, softmax in float32), so it matches the bridge's forward up to float rounding.
    Nothing here is hard-coded: sizes come from ``model.cfg``.

    Shapes: ``B`` prompts (right-padded to ``S`` positions, prompt ``b`` ends at ``last[b]``),
    ``R`` rows per prompt (versions of its last position: one per patched head).
    """

    def __init__(self, model):
        problems = llama_style_problems(model)
        if problems:
            raise NotImplementedError("; ".join(problems))
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
            rows = torch.arange(logits.shape[0], device=logits.device)
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


def llama_style_problems(model) -> list[str]:
    """Why the Llama engine cannot run ``model`` (empty when it can)."""
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
    return problems
