"""The course on other model families: tiny random GPT-2, GPT-NeoX, Qwen2 and Gemma models.

Built from a config only (no download), saved into a folder and loaded with ``load_model(path)``.
Their numbers are meaningless; the mechanics must hold: shapes, hook names, no hard-coded sizes,
no Llama-only attribute. Every reference function passes its own check (visible and hidden
cases), the exact head scan agrees with the naive scan, and the main job runs end to end.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import fv_exercises.checks
from fv_exercises import load_model
from fv_exercises.heads import attribution_head_effects, head_effects, head_effects_naive, mean_head_z
from fv_exercises.tasks import ICLDataset

from tiny_models import FAMILIES, build_tiny_model


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tiny_paths):
    """(family, loaded bridge) for each family in turn."""
    with torch.no_grad():
        yield request.param, load_model(tiny_paths[request.param])


def _check_pairs():
    """(id, check function, reference function) for every check of every notebook."""
    pairs = []
    for info in pkgutil.iter_modules(fv_exercises.checks.__path__):
        if info.name == "core":
            continue
        checks = importlib.import_module(f"fv_exercises.checks.{info.name}")
        try:
            reference = importlib.import_module(f"fv_exercises.reference.{info.name}")
        except ModuleNotFoundError:
            reference = None  # reported by the test itself, not as a collection error
        for name, check in inspect.getmembers(checks, inspect.isfunction):
            if name.startswith("check_") and check.__module__ == checks.__name__:
                pairs.append((f"{info.name}.{name}", check,
                              getattr(reference, name[len("check_"):], None)))
    return pairs


def test_sizes_come_from_the_model(tiny):
    family, model = tiny
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) == (4, 4, 64), family
    logits = model("Q: hot\nA:")
    assert logits.shape[-1] == model.cfg.d_vocab


def test_exact_head_scan_matches_naive(tiny):
    family, model = tiny
    data = ICLDataset.build("antonym", 3, n_shots=2, seed=0)
    mean_z = mean_head_z(model, data.prompts)
    fast = head_effects(model, data.corrupted_prompts, data.answers, mean_z)
    naive = head_effects_naive(model, data.corrupted_prompts, data.answers, mean_z)
    scale = naive.abs().max().item()
    assert scale > 0, f"{family}: every effect is exactly 0, the comparison proves nothing"
    assert (fast - naive).abs().max().item() <= 1e-4 * scale + 1e-12, family
    estimate = attribution_head_effects(model, data.corrupted_prompts, data.answers, mean_z)
    assert estimate.shape == naive.shape and torch.isfinite(estimate).all()


@pytest.mark.parametrize("check_id, check, reference", _check_pairs(), ids=[p[0] for p in _check_pairs()])
def test_reference_passes_its_check(tiny, tiny_paths, check_id, check, reference, capsys):
    family, model = tiny
    assert reference is not None, f"{check_id}: no reference function of that name (course build?)"
    extra = []
    if "nn_model" in inspect.signature(check).parameters:  # notebook 07: a separate nnsight copy
        from fv_exercises.nnsight_model import load_nnsight_model

        extra = [load_nnsight_model(tiny_paths[family])]
    check(reference, model, *extra)
    check(reference, model, *extra, hidden=True)
    assert capsys.readouterr().out.strip(), f"{check_id} printed nothing on success"


def test_main_job_runs(tiny, tiny_paths, tmp_path, capsys):
    from fv_exercises.__main__ import main

    family, _ = tiny
    assert main(["run", "--quiet", "--model", str(tiny_paths[family]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "zero-shot + mean task vector" in out and "95% interval" in out
