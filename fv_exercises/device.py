"""Where the model runs: the device a user asks for, checked, and what this torch can offer.

The course runs on the CPU by default. ``load_model(device=...)`` or the environment variable
``FV_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) puts the model elsewhere; library and check
code then make their tensors on the model's device (``model_device(model)``), never on the CPU
by assumption. Random vectors are drawn on the CPU with a seeded generator and then moved, so
they are the same numbers on every device.

``describe_torch()`` is one line about the installed torch (scripts/install.sh prints it):
version, CPU or CUDA build, and whether a GPU is visible.
"""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "FV_DEVICE"
DEFAULT_DEVICE = "cpu"


class DeviceError(RuntimeError):
    """The requested device does not exist or is not available; the message says what to do."""


def requested_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: ``device`` if given, else ``$FV_DEVICE``, else the CPU; checked.

    Raises ``DeviceError`` for a name torch does not know or a device this machine lacks.
    """
    source = "device="
    if device is None:
        device = os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE
        source = f"{DEVICE_ENV}=" if os.environ.get(DEVICE_ENV) else "default "
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"{source}{device!r} is not a torch device; use cpu, cuda, cuda:1 or "
                          f"mps ({exc})") from None
    why = unavailable_reason(dev)
    if why:
        raise DeviceError(f"{source}{str(device)!r} is not available: {why}. Run on the CPU "
                          f"(unset {DEVICE_ENV} or set {DEVICE_ENV}=cpu), or see the README's "
                          "quick start for a CUDA build (FV_TORCH=cuda bash scripts/install.sh).")
    return dev


def unavailable_reason(dev: torch.device) -> str | None:
    """``None`` if tensors can be made on ``dev`` here, else the reason in words."""
    if dev.type in ("cpu", "meta"):
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                return f"this torch ({torch.__version__}) is a CPU build, without CUDA"
            return (f"this torch is a CUDA {torch.version.cuda} build but sees no GPU (no NVIDIA "
                    "driver, or CUDA_VISIBLE_DEVICES hides it)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
        return None
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "no Apple MPS device here"
    backend = getattr(torch, dev.type, None)
    if backend is not None and hasattr(backend, "is_available") and backend.is_available():
        return None
    return f"torch sees no {dev.type} device here"


def model_device(model) -> torch.device:
    """The device of ``model``'s parameters (CPU for a model without parameters)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def describe_torch() -> str:
    """One line: torch's version, CPU or CUDA build, and whether a GPU is visible."""
    if torch.version.cuda is None:
        build = "CPU build"
    else:
        build = f"CUDA {torch.version.cuda} build"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        gpu = f"GPU visible: {torch.cuda.device_count()} x {', '.join(names)} (FV_DEVICE=cuda)"
    elif torch.version.cuda is not None:
        gpu = "no GPU visible (runs on the CPU)"
    else:
        gpu = "no GPU (runs on the CPU)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        gpu += "; Apple MPS available (FV_DEVICE=mps)"
    return f"{torch.__version__}, {build}, {gpu}"
