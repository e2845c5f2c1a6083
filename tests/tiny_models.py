"""Tiny randomly initialised models of other families, built from a config only (no download).

Each uses the embedded model's tokenizer (so the course's prompts tokenize as usual), is saved
into a folder and loaded with ``load_model(path)`` like any local model. The numbers they give are
meaningless; what they prove is that the course's code holds for other architectures: shapes,
hook names, no hard-coded sizes, no Llama-only attribute.

``initializer_range`` is large so that the random models' next-token distributions are peaked
and interventions change probabilities measurably (with the default 0.02 every probability is
about 1/49152 and every effect about 0, which proves nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("gpt2", "gpt_neox", "qwen2", "gemma")


def _config(family: str, vocab_size: int, bos: int, eos: int):
    from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                  initializer_range=0.4)
    if family == "gpt2":  # learned positions, LayerNorm, biases everywhere, Conv1D weights
        return GPT2Config(n_positions=256, n_embd=64, n_layer=4, n_head=4, **common)
    if family == "gpt_neox":  # rotary on part of each head, parallel attention + MLP, LayerNorm
        return GPTNeoXConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=256, **common)
    if family == "qwen2":  # RMSNorm, grouped-query attention, q/k/v biases
        return Qwen2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128,
                           max_position_embeddings=256, **common)
    if family == "gemma":  # one key/value head (multi-query), scaled embeddings, GeGLU
        return GemmaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, intermediate_size=128,
                           max_position_embeddings=256, **common)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def build_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` model with the embedded tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fv_exercises.model import convert_embedded

    tokenizer = AutoTokenizer.from_pretrained(convert_embedded())
    config = _config(family, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
