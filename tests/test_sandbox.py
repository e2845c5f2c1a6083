"""The grading sandbox on its own (no model, no nbgrader): what a process inside it can see and
do, its limits, and what happens where bubblewrap is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fv_exercises import course, sandbox
from fv_exercises.sandbox import (INSIDE_WORK, Limits, SandboxSpec, SandboxUnavailable, _BOOT,
                                  _SUBMISSION, _write_scratch, bwrap_args)

PROBE = r'''
import json, os, resource, socket, sys
facts = {"cwd": os.getcwd(), "files": sorted(os.listdir(".")), "uid": os.getuid()}
facts["limits"] = [resource.getrlimit(r)[1] for r in (resource.RLIMIT_AS, resource.RLIMIT_FSIZE)]
facts["sees"] = {p: os.path.exists(p) for p in sys.argv[1:]}
try:
    import fv_exercises.reference.task_vectors
    facts["answer_key"] = "imported"
except ImportError as exc:
    facts["answer_key"] = type(exc).__name__
try:
    import fv_exercises.checks.core
    facts["checks"] = "imported"
except ImportError as exc:
    facts["checks"] = repr(exc)
writable = []
for d in ("/", "/usr", sys.prefix, os.path.dirname(fv_exercises.checks.core.__file__), "/opt",
          "/etc", "/run", "/tmp", os.path.expanduser("~"), "."):
    try:
        with open(os.path.join(d, "probe.txt"), "w") as f:
            f.write("x")
        writable.append(d)
    except OSError:
        pass
facts["writable"] = writable
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    facts["raised_limit"] = True
except (ValueError, OSError):
    facts["raised_limit"] = False
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
    facts["network"] = True
except OSError:
    facts["network"] = False
facts["env"] = sorted(os.environ)
print(json.dumps(facts))
'''




@pytest.fixture
def probe(tmp_path):
    """Run PROBE in a sandbox (through the same boot as a kernel); its findings as a dict."""
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "answer.ipynb").write_text("{}")
    spec = SandboxSpec(submission_dir=sub, limits=Limits(memory_bytes=5 << 30))
    scratch = _write_scratch(spec)
    connection = tmp_path / "connection.json"
    connection.write_text("{}")
    canary = Path.home() / f".fv-sandbox-canary-{tmp_path.name}"  # the grader's own file
    canary.write_text("x")
    hidden = [str(course.ROOT / "solutions"), str(course.ROOT / ".git"), str(canary),
              str(tmp_path), str(course.ROOT / "fv_exercises" / "reference" / "task_vectors.py")]

    def run() -> dict:
        boot = _BOOT.format(submission=_SUBMISSION, work=INSIDE_WORK).replace(
            "os.dup2(devnull, 1)", "")
        cmd = [*bwrap_args(spec, str(connection), scratch), "--", sys.executable, "-I", "-c", boot,
               str(spec.limits.memory_bytes), "4096", str(spec.limits.file_bytes), "-c", PROBE,
               *hidden]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            canary.unlink()
        assert done.returncode == 0, done.stderr
        return {"hidden": hidden, **json.loads(done.stdout.strip().splitlines()[-1])}

    return run



def test_a_sandboxed_process_sees_only_the_environment_and_its_scratch(probe):
    facts = probe()
    assert facts["cwd"] == INSIDE_WORK and facts["files"] == ["answer.ipynb"]  # its scratch copy
    assert facts["uid"] == 1000
    assert not any(facts["sees"].values()), facts["sees"]  # course, home, answer key: absent
    assert facts["answer_key"] in ("ModuleNotFoundError", "ImportError")
    assert facts["checks"] == "imported"  # the course's library works
    assert set(facts["writable"]) == {"/tmp", ".", "/home/learner", "/run"}, facts["writable"]
    assert facts["network"] is False
    assert facts["limits"] == [5 << 30, Limits().file_bytes]
    assert facts["raised_limit"] is False
    assert "HOME" in facts["env"] and not any(k.startswith(("SSH", "GIT", "AWS")) for k in facts["env"])


def test_missing_bubblewrap_is_said_clearly(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*--no-sandbox"):
        sandbox.check_available()


def test_autograde_refuses_without_a_sandbox_unless_told(monkeypatch, capsys):
    import fv_exercises.autograding as autograding

    calls = []
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(autograding, "autograde", lambda *a, **k: calls.append(k) or [])
    assert course.main(["autograde", "01_task_vectors"]) == 2
    assert "autograde refused" in capsys.readouterr().err and not calls
    assert course.main(["autograde", "01_task_vectors", "--no-sandbox"]) == 0
    assert calls and "--SecureExecute.sandbox=False" in calls[0]["extra"]
