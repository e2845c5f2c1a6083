"""What the course keeps on disk between runs: built function vectors, head scans, accuracies.

A value is a dict of tensors and plain values (loadable with ``torch.load(weights_only=True)``),
kept under ``cache_root() / "function_vectors"`` in a file whose name is a digest of the model's
fingerprint (:func:`model_fingerprint`) and of what the value was built from (its ``parts``: a
kind, a task, a seed, a recipe, the digest of the task data). A changed model, recipe or data set
therefore reads a different file; an unreadable file is rebuilt. Set ``FV_NO_DISK_CACHE=1`` to
neither read nor write.

In the grading sandbox the cache is read-only: a kernel builds what it needs and cannot keep it.
It notes the build in :data:`UNSAVED` (a request that only *names* what to build), and the grader
builds and keeps it with its own code (:mod:`fv_exercises.grader_cache`), so what a submission
computed never reaches the cache another submission reads.

This module sits at the bottom of the package (it imports only the model and task data).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch

DISK_CACHE_ENV = "FV_NO_DISK_CACHE"  # set to 1 to neither read nor write the disk cache

#: What this process built but could not keep, because its cache is read-only (a kernel in the
#: grading sandbox): ``(kind, name, seed, spec)`` tuples, for
#: :func:`fv_exercises.grader_cache.rebuild_unsaved` in the grader.
UNSAVED: list[tuple] = []


def task_data(tasks: Sequence[str]) -> str:
    """A digest of the pairs of ``tasks`` (the cache is stale when the data changes)."""
    from fv_exercises.tasks import load_task

    h = hashlib.sha256()
    for t in sorted(set(tasks)):
        task = load_task(t)
        h.update(repr((task.name, task.pairs)).encode())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """A digest of the model's weights and of what shapes its prompts (tokenizer, BOS).

    Per parameter: name, shape, sum, sum of squares and a strided sample of values; cheap (one
    pass over the weights) and different for any edit that matters in practice.
    """
    h = hashlib.sha256()
    hf = getattr(model, "original_model", model)
    h.update(type(hf).__name__.encode())
    with torch.no_grad():
        for name, p in hf.named_parameters():
            flat = p.detach().flatten().float()
            stats = torch.stack([flat.sum(), (flat * flat).sum()]).double()
            sample = flat[:: max(1, flat.numel() // 256)]
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(stats.cpu().numpy().tobytes())  # .cpu(): the model may be on a GPU
            h.update(sample.cpu().numpy().tobytes())
    tok = model.tokenizer
    h.update(f"{len(tok)}|{tok.encode('Q: hot  A: cold', add_special_tokens=False)}".encode())
    h.update(f"bos={getattr(model.cfg, 'default_prepend_bos', None)}".encode())
    return h.hexdigest()[:24]


def disk_cache_dir() -> Path:
    """Where built values are kept: ``cache_root() / "function_vectors"``."""
    from fv_exercises.model import cache_root

    return cache_root() / "function_vectors"


def disk_cached(model, parts: tuple, compute: Callable[[], dict],
                rebuild: tuple | None = None) -> dict:
    """``compute()`` (a dict of tensors and plain values), kept on disk under a key made of the
    model's fingerprint and ``parts``; written atomically (temporary file, then rename).
    ``rebuild``: how the grader builds the same value, noted in :data:`UNSAVED` when it cannot
    be kept."""
    if os.environ.get(DISK_CACHE_ENV):
        return compute()
    key = hashlib.sha256(repr((model_fingerprint(model), parts)).encode()).hexdigest()[:32]
    folder = disk_cache_dir()
    path = folder / f"{parts[0]}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # unreadable (e.g. another torch version): rebuild it
            pass
    value = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        os.close(fd)
        torch.save(value, tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache is not an error: the value is still correct
        if rebuild is not None and rebuild not in UNSAVED:
            UNSAVED.append(rebuild)
    return value
