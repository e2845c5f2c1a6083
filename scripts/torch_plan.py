"""Decide which torch build to install, say so out loud, and write pip's arguments to a file.

Run by ``scripts/install.sh`` with the new virtual environment's Python, before anything else
is installed there (standard library only)::

    python scripts/torch_plan.py MODE PIN ARGS_FILE

``MODE`` is the value of ``FV_TORCH``:

- ``cpu`` (default): a CPU build, without CUDA packages. First what pip finds by itself (a CPU
  wheel on disk, as on the course's CI machines, or PyPI's wheel where it is CPU-only: macOS,
  Windows, Linux on ARM); else PyTorch's CPU index (``FV_TORCH_CPU_INDEX``, default
  https://download.pytorch.org/whl/cpu); if that is unreachable, the CUDA build from PyPI, with
  its size printed before the download.
- ``cpu-strict``: the same, but stops (exit 1) instead of downloading the CUDA build.
- ``cuda``: the CUDA build from PyPI (Linux), its size printed first.

Each decision is one printed line in install.sh's format (label padded to 64 characters, then
the result). ``ARGS_FILE`` receives the arguments for ``pip install``, one per line (empty when
the wanted build is already installed). pip's own output is kept back and shown only on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

MODES = ("cpu", "cpu-strict", "cuda")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_INDEX_ENV = "FV_TORCH_CPU_INDEX"
# Stated when the sizes cannot be asked for: torch 2.13.0's CUDA build for Linux x86_64 and the
# 28 packages it pulls (nvidia-*, cuda-*, triton, ...): 2.7 GB of wheels (PyPI's sizes, measured
# for Python 3.12 with this script's file_size).
CUDA_ESTIMATE = "about 2.7 GB to download (estimate: sizes unavailable)"
CUDA_PREFIXES = ("nvidia-", "nvidia_", "cuda-", "cuda_")


class PlanError(RuntimeError):
    """No torch build fits the request; the message says what to do."""


@dataclass
class Resolution:
    """What ``pip install --dry-run --report`` would install for one torch requirement."""

    torch_version: str
    packages: list[dict] = field(default_factory=list)  # the report's "install" items

    @property
    def is_cuda(self) -> bool:
        """A CUDA build: a ``+cuXXX`` version, or CUDA packages among what pip would install."""
        return "+cu" in self.torch_version or any(_is_cuda_name(p) for p in self._names())

    @property
    def cuda_packages(self) -> list[str]:
        """Names of the CUDA runtime packages pip would install."""
        return [n for n in self._names() if _is_cuda_name(n)]

    def _names(self) -> list[str]:
        return [p["metadata"]["name"].lower() for p in self.packages]

    def urls(self) -> list[str]:
        """Where each package would come from (``file://`` for wheels on this machine)."""
        return [p.get("download_info", {}).get("url", "") for p in self.packages]


def _is_cuda_name(name: str) -> bool:
    return name.lower().startswith(CUDA_PREFIXES)


def parse_report(report: dict) -> Resolution:
    """Turn a pip installation report (``--report``, format version 1) into a ``Resolution``."""
    items = report.get("install", [])
    torch = [p for p in items if p["metadata"]["name"].lower() == "torch"]
    if not torch:
        raise PlanError("pip's dry run would not install torch (is another torch pinned?)")
    return Resolution(torch_version=torch[0]["metadata"]["version"], packages=items)


def exact_requirement(version: str) -> str:
    """``torch===VERSION``: arbitrary equality, so ``2.13.0`` does not also match ``2.13.0+cpu``.

    With ``==2.13.0`` pip counts an installed ``2.13.0+cpu`` as satisfying the pin (and prefers
    a ``+cpu`` wheel it finds on disk), so asking for the CUDA build would silently keep the CPU one.
    """
    return f"torch==={version}"


def dry_run(requirement: str, index_args: list[str], python: str = sys.executable) -> Resolution:
    """Ask pip what it would install for ``requirement`` (no download of the wheels themselves)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--report", str(report), *index_args, requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not report.is_file():
            raise PlanError(f"pip could not resolve {requirement} {' '.join(index_args)}:\n"
                            f"{done.stdout}{done.stderr}".rstrip())
        return parse_report(json.loads(report.read_text()))


def index_reachable(url: str, timeout: float = 10.0) -> str | None:
    """``None`` if ``url`` answers; otherwise the reason in a few words."""
    if url.startswith("file://"):
        return None if Path(url[len("file://"):]).exists() else "no such folder"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason)[:80]


def file_size(url: str, timeout: float = 15.0) -> int | None:
    """Bytes of one wheel: from disk for ``file://``, else the server's Content-Length."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(url[len("file://"):]))
        return path.stat().st_size if path.is_file() else None
    if not url.startswith(("http://", "https://")):
        return None
    try:
        req = urllib.request.Request(url.split("#")[0], method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            return int(length) if length else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def describe_size(res: Resolution) -> str:
    """The download in words: total, the part fetched over the network, the part already on disk.

    Falls back to a stated estimate when a size cannot be had (e.g. a server without HEAD).
    """
    urls = res.urls()
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(file_size, urls))
    if any(s is None for s in sizes):
        return CUDA_ESTIMATE if res.is_cuda else "size unknown"
    net = sum(s for s, u in zip(sizes, urls) if not u.startswith("file://"))
    local = sum(sizes) - net
    text = f"{len(urls)} packages, {_gb(net)} to download"
    return text + (f" (+ {_gb(local)} on this machine)" if local else "")


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def installed_build(pin_version: str) -> str | None:
    """``"cpu"`` or ``"cuda"`` if torch ``pin_version`` (any local label) is installed here, else None.

    Read from the installed distributions' metadata, without importing torch (fast).
    """
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return None
    if dist.version.split("+")[0] != pin_version:
        return None
    requires = [r.split(";")[0].split()[0] for r in (dist.requires or []) if "extra ==" not in r]
    cuda = "+cu" in dist.version or any(_is_cuda_name(r) for r in requires)
    return "cuda" if cuda else "cpu"


def line(label: str, result: str) -> None:
    """One line in install.sh's format."""
    print(f"{label + ' ...':64} {result}", flush=True)


def plan(mode: str, pin: str) -> list[str]:
    """Return ``pip install`` arguments for ``mode`` (``[]``: nothing to do), printing each step."""
    if mode not in MODES:
        raise PlanError(f"FV_TORCH={mode!r}: choose one of {', '.join(MODES)} (default cpu)")
    version = pin.split("==")[-1]
    want = "cuda" if mode == "cuda" else "cpu"
    have = installed_build(version)
    if have == want:
        line(f"torch {version}, {want.upper()} build (FV_TORCH={mode})", "present")
        return []
    t0 = time.monotonic()
    if want == "cuda":
        res = dry_run(exact_requirement(version), [])
        if not res.is_cuda:
            raise PlanError(f"FV_TORCH=cuda: PyPI offers no CUDA build of torch {version} for "
                            "this platform (it has CUDA builds for Linux only); use FV_TORCH=cpu")
        line(f"torch: PyPI's CUDA build (dry run, {time.monotonic() - t0:.0f} s)",
             describe_size(res))
        return [exact_requirement(res.torch_version)]
    res = dry_run(pin, [])
    if not res.is_cuda:
        line(f"torch: a CPU build pip finds by itself (dry run, {time.monotonic() - t0:.0f} s)",
             f"{res.torch_version}, {describe_size(res)}")
        return [exact_requirement(res.torch_version)]
    index = os.environ.get(CPU_INDEX_ENV, CPU_INDEX)
    why = index_reachable(index.rstrip("/") + "/torch/")
    if why is None:
        cpu = dry_run(pin, ["--index-url", index])
        if not cpu.is_cuda:
            line(f"torch: PyTorch's CPU index (dry run, {time.monotonic() - t0:.0f} s)",
                 f"{cpu.torch_version}, {describe_size(cpu)}")
            return ["--index-url", index, exact_requirement(cpu.torch_version)]
        why = f"it offers no CPU build of {pin}"
    line("torch: PyTorch's CPU index", f"unusable: {index} ({why})")
    size = describe_size(res)
    if mode == "cpu-strict":
        raise PlanError(
            f"FV_TORCH=cpu-strict: no CPU build of {pin} is reachable, and the CUDA build from "
            f"PyPI would be {size}. Make {index} reachable (or set {CPU_INDEX_ENV} to a mirror), "
            "or run again with FV_TORCH=cpu to accept the CUDA build.")
    line("torch: falling back to PyPI's CUDA build (runs on CPU too)", size)
    return [exact_requirement(res.torch_version)]


def main(argv: list[str]) -> int:
    """``torch_plan.py MODE PIN ARGS_FILE``; exit 1 with a message when no build fits."""
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    mode, pin, args_file = argv
    try:
        args = plan(mode, pin)
    except PlanError as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    Path(args_file).write_text("".join(a + "\n" for a in args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
