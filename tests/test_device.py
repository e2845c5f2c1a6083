"""Where the model runs: FV_DEVICE / ``device=``, clear errors, and library tensors on the model's device.

GPUs are not available on the machines these tests run on. What can be tested without one:
the choice of device, the message for a device that is missing, and that library and check code
names the device of every tensor it makes (a tensor made without one lands on the CPU, which is
wrong as soon as the model is on a GPU). The last is checked with a ``TorchFunctionMode`` that
records every tensor factory called from ``fv_exercises`` without a ``device=`` while real library
functions run on the embedded model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fv_exercises
from fv_exercises import model as model_mod
from fv_exercises.device import (DEVICE_ENV, DeviceError, describe_torch, model_device,
                                 requested_device)

PACKAGE = Path(fv_exercises.__file__).resolve().parent
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor,
             torch.randn, torch.rand, torch.randint, torch.randperm, torch.eye, torch.linspace}
NO_GPU = not torch.cuda.is_available()


def test_default_is_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert requested_device() == torch.device("cpu")


def test_env_chooses_and_argument_wins(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "meta")
    assert requested_device() == torch.device("meta")
    assert requested_device("cpu") == torch.device("cpu")  # the argument beats the variable


def test_unknown_device_name_is_named(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(DeviceError, match=r"FV_DEVICE='gpu' is not a torch device; use cpu, cuda"):
        requested_device()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: cuda is available here")
def test_missing_gpu_says_why_and_what_to_do(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(DeviceError) as err:
        requested_device()
    text = str(err.value)
    assert "FV_DEVICE='cuda' is not available" in text
    assert ("CPU build" in text) == (torch.version.cuda is None)
    assert "FV_DEVICE=cpu" in text and "FV_TORCH=cuda" in text
    with pytest.raises(DeviceError, match=r"device='cuda:1' is not available"):
        requested_device("cuda:1")


def test_load_model_refuses_a_missing_device_before_loading(monkeypatch):
    """The check comes first: no conversion, no 20 s wait, for a device that is not there."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("load_model converted or loaded before checking the device")

    monkeypatch.setattr(model_mod, "convert_embedded", must_not_run)
    missing = "cuda:0" if NO_GPU else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DeviceError, match="is not available"):
        model_mod.load_model(device=missing)
    monkeypatch.setenv(DEVICE_ENV, missing)
    with pytest.raises(DeviceError, match=f"FV_DEVICE='{missing}'"):
        model_mod.load_model()


def test_describe_torch_reports_version_build_and_gpu():
    line = describe_torch()
    assert line.startswith(torch.__version__)
    assert ("CPU build" in line) == (torch.version.cuda is None)
    assert ("GPU visible:" in line) == torch.cuda.is_available()  # "no GPU visible" otherwise


def test_model_is_on_the_requested_device(model):
    assert model_device(model) == torch.device("cpu")  # the session model: FV_DEVICE unset
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


class _DevicelessFactories(TorchFunctionMode):
    """Records tensor factories called from fv_exercises code without ``device=``."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            caller = sys._getframe(1)
            path = Path(caller.f_code.co_filename).resolve()
            if PACKAGE in path.parents:
                self.found.append(f"{path.relative_to(PACKAGE)}:{caller.f_lineno} "
                                  f"torch.{func.__name__}")
        return func(*args, **kwargs)


def _library_calls(model) -> list:
    """A few real library and check functions on two short prompts: their results."""
    from fv_exercises import evaluation, heads, recipe, task_vectors
    from fv_exercises.ablation import ablated_correct, random_directions, single_layer_plans
    from fv_exercises.stats import accuracy, paired_difference

    prompts = ["hot -> cold\nbig -> small\nup ->", "Q: wet\nA:"]
    answers = ["down", "dry"]
    d = model.cfg.d_model
    vec = torch.ones(d, device=model_device(model))
    logits = evaluation.last_position_logits(model, prompts, add={3: vec})
    correct = evaluation.top1_correct(model, prompts, answers, add={3: vec})
    probs = evaluation.answer_probs(model, prompts, answers)
    states = evaluation.last_position_states(model, prompts, 2)
    z = heads.mean_head_z(model, prompts)
    fv = heads.function_vector(model, z, [(1, 0), (2, 1)])
    effects = heads.head_effects(model, prompts, answers, mean_z=z, heads=[(1, 0), (2, 1)],
                                 progress=False)
    steered = recipe.steered_scores(model, prompts, answers, [{}, {2: fv}])
    rnd = task_vectors.random_like(fv)
    plans = single_layer_plans(random_directions(1, d, device=model_device(model))[0],
                               model.cfg.n_layers, layers=[1])
    ablated = ablated_correct(model, prompts, answers, plans)
    accuracy(correct), paired_difference(correct.float(), correct.float())
    return [logits, correct, probs, states, z, fv, effects, *steered, rnd, ablated]


def test_library_tensors_name_their_device(model):
    """Every tensor the library makes says where: the model's device, or the CPU on purpose."""
    with _DevicelessFactories() as spy:
        results = _library_calls(model)
    assert spy.found == [], "tensors made without device=:\n" + "\n".join(sorted(set(spy.found)))
    assert {r.device for r in results} == {model_device(model)}


def test_the_spy_catches_a_deviceless_tensor():
    """The check above can fail: a tensor made without device= in package code is recorded."""
    from fv_exercises import evaluation

    scope = {"torch": torch}
    exec(compile("def made_here(n):\n    return torch.zeros(n)\n", evaluation.__file__, "exec"),
         scope)
    with _DevicelessFactories() as spy:
        scope["made_here"](3)
        torch.zeros(3)  # from the tests themselves: not the library's business
    assert spy.found == ["evaluation.py:2 torch.zeros"]
