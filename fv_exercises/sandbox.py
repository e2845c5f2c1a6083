"""The grading sandbox: a Jupyter kernel inside bubblewrap, for one submission.

What the kernel that runs a submission sees (everything else of the machine is absent):

- the course's Python environment, read-only: the interpreter, the virtual environment and the
  ``fv_exercises`` package, with its answer key (``fv_exercises/reference/``) masked by an empty
  folder;
- the converted model cache, read-only;
- its own scratch space, in memory and size-limited: the working folder (a copy of the
  submission's folder), ``HOME`` and ``/tmp``;
- no network (its own empty network namespace), no other process (its own PID namespace: every
  process it starts dies with it), no capabilities, a fresh environment (no instructor variables).

Limits: the sandbox's processes and all its memory together, with control groups where this
process may make them (as root; root is exempt from the per-user process limit); and, set with
``setrlimit`` before the kernel starts, inherited by everything it starts and not raisable from
inside: address space per process, processes of the user, largest file, no core dumps.

The kernel speaks Jupyter's protocol over Unix sockets in its own scratch ``/run/kernel``; the
grading process reaches them through ``/proc/<pid>/root``, so no folder outside the sandbox is
writable from inside it. :class:`SandboxedKernelManager` is a ``jupyter_client`` kernel manager
doing all of that; :func:`check_available` says whether bubblewrap works on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

INSIDE_HOME = "/home/learner"
INSIDE_WORK = f"{INSIDE_HOME}/work"  # the kernel's working folder
INSIDE_CACHE = "/opt/fv-cache"
_SOCKETS = "/run/kernel"  # inside: the kernel's Unix sockets live here (its own tmpfs)
_CONNECTION = "/run/connection.json"
_SUBMISSION = "/run/submission"  # inside, read-only: copied into INSIDE_WORK at start


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says what to do."""


@dataclass
class Limits:
    """Resource limits of one sandbox (defaults fit the course on the embedded model)."""

    memory_bytes: int = 8 << 30  # address space per process: the kernel with torch uses ~4 GB
    total_memory_bytes: int = 10 << 30  # all its processes and files together (cgroup; ~2 GB used)
    processes: int = 256  # processes and threads of the sandbox (the kernel runs ~30)
    file_bytes: int = 256 << 20  # largest file the sandbox may write
    scratch_bytes: int = 512 << 20  # each of the in-memory folders (work/home, /tmp)


@dataclass
class SandboxSpec:
    """What one sandbox binds: the course environment, the model cache, one submission folder."""

    submission_dir: Path
    cache_dir: Path | None = None
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)  # extra variables (e.g. NBGRADER_EXECUTION)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` unless bubblewrap can build a sandbox here."""
    exe = bwrap_path()
    if exe is None:
        raise SandboxUnavailable(
            "bubblewrap (`bwrap`) is not installed, so submissions cannot be graded in a "
            "sandbox. Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
            "`sudo dnf install bubblewrap`), or pass --no-sandbox to grade without one (only for "
            "submissions you trust: their code then runs with your rights).")
    probe = subprocess.run([exe, "--unshare-all", "--unshare-user", "--die-with-parent",
                            "--ro-bind", "/", "/", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {probe.stderr.strip()[:300]}. On Ubuntu "
            "24.04+ unprivileged user namespaces may be restricted by AppArmor (see "
            "docs/instructors.md, 'The grading sandbox'); or pass --no-sandbox to grade without "
            "one (only for submissions you trust).")


class _Cgroups:
    """Control groups that cap one sandbox's processes and memory, where this process may make
    them (as root, cgroup v1 or v2). Elsewhere the per-user process limit (RLIMIT_NPROC) does
    that job; as root it does not (the kernel exempts uid 0), so root needs these.
    """

    def __init__(self, limits: Limits):
        self.dirs: list[Path] = []
        wanted = {"pids": {"pids.max": limits.processes},
                  "memory": {"memory.limit_in_bytes": limits.total_memory_bytes,  # v1
                             "memory.max": limits.total_memory_bytes}}  # v2
        name = f"fv-sandbox-{os.getpid()}-{time.monotonic_ns()}"
        for controller, path in _own_cgroups().items():
            parent = Path("/sys/fs/cgroup") / (controller if controller else "") / path.lstrip("/")
            _remove_stale(parent)
            folder = parent / name
            try:
                folder.mkdir()
            except OSError:
                continue
            self.dirs.append(folder)
            for file, value in [kv for c, kvs in wanted.items()
                                if controller in (c, "") for kv in kvs.items()]:
                try:
                    (folder / file).write_text(str(value))
                except OSError:
                    pass
        self.limited = {c for c in ("pids", "memory") if any(self._limits(d, c) for d in self.dirs)}

    @staticmethod
    def _limits(folder: Path, controller: str) -> bool:
        files = {"pids": ["pids.max"], "memory": ["memory.limit_in_bytes", "memory.max"]}[controller]
        for f in files:
            try:
                if (folder / f).read_text().strip() not in ("max", str(2 ** 63 - 4096)):
                    return True
            except OSError:
                pass
        return False

    def join_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        for folder in self.dirs:
            for _ in range(50):  # the sandbox's processes may take a moment to be reaped
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _remove_stale(parent: Path) -> None:
    """Remove sandbox cgroups left by grading processes that no longer run (e.g. killed)."""
    for folder in parent.glob("fv-sandbox-*"):
        owner = folder.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                folder.rmdir()  # fails, harmlessly, while a process is still in it
            except OSError:
                pass


def _own_cgroups() -> dict[str, str]:
    """``{controller: path}`` of this process's v1 pids and memory cgroups, or ``{"": path}``
    for the v2 hierarchy."""
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                if c in ("pids", "memory") or (c == "" and not controllers):
                    out[c] = path
    except OSError:
        pass
    if "pids" in out or "memory" in out:
        out.pop("", None)
    return out


# Runs before bubblewrap: joins the sandbox's cgroups, so that everything it starts is in them
# from its first instruction.
_JOIN = """
import os, sys
n = int(sys.argv[1])
for path in sys.argv[2:2 + n]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
os.execv(sys.argv[2 + n], sys.argv[2 + n:])
"""


def _count_user_tasks(uid: int) -> int:
    """Processes and threads the user ``uid`` runs now (what RLIMIT_NPROC counts)."""
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


# Runs inside the sandbox, before the kernel: limits, then the submission's files into the
# scratch working folder, then exec the kernel (limits are inherited and cannot be raised).
_BOOT = """
import os, resource, shutil, sys
mem, nproc, fsize = (int(x) for x in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
shutil.copytree({submission!r}, {work!r}, dirs_exist_ok=True)
os.chdir({work!r})
# ipykernel prints its connection banner to stdout when no Jupyter parent started it
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
# its own process group: an interrupt (ipykernel signals its group) must not reach bubblewrap
os.setsid()
os.execv(sys.executable, [sys.executable] + sys.argv[4:])
"""


def _python_roots() -> list[Path]:
    """Folders the course's interpreter needs: the environment and the base installation."""
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parents[1]}
    return sorted(r for r in roots if r.is_dir())


def bwrap_args(spec: SandboxSpec, connection_file: str, scratch: Path,
               extra_env: dict[str, str] | None = None) -> list[str]:
    """The bubblewrap command line up to ``--`` (what the sandbox sees, and its limits).

    ``extra_env``: variables the kernelspec sets (the course's own kernelspecs only)."""
    import fv_exercises

    package = Path(fv_exercises.__file__).resolve().parent
    lim = spec.limits
    args = [bwrap_path() or "bwrap", "--unshare-all", "--unshare-user", "--uid", "1000",
            "--gid", "1000", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--hostname", "sandbox"]
    for system in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(system):
            args += ["--symlink", os.readlink(system), system]
        elif os.path.isdir(system):
            args += ["--ro-bind", system, system]
    for etc in ("/etc/ld.so.cache", "/etc/localtime", "/etc/fonts", "/etc/alternatives"):
        args += ["--ro-bind-try", etc, etc]
    # The in-memory folders first: a course, environment or cache that lives under /tmp (a CI
    # clone) is then bound on top of the new /tmp instead of being hidden by it.
    size = str(lim.scratch_bytes)
    args += ["--size", size, "--tmpfs", INSIDE_HOME, "--size", size, "--tmpfs", "/tmp",
             "--size", str(16 << 20), "--tmpfs", "/run", "--dir", _SOCKETS]
    args += ["--ro-bind", str(scratch / "passwd"), "/etc/passwd",
             "--ro-bind", str(scratch / "group"), "/etc/group",
             "--proc", "/proc", "--dev", "/dev",
             "--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for root in _python_roots():
        args += ["--ro-bind", str(root), str(root)]
    # The package (an editable install reads it from the clone), its answer key masked.
    args += ["--ro-bind", str(package), str(package),
             "--tmpfs", str(package / "reference")]
    if spec.cache_dir is not None and spec.cache_dir.is_dir():
        args += ["--ro-bind", str(spec.cache_dir), INSIDE_CACHE]
    args += ["--ro-bind", connection_file, _CONNECTION,
             "--ro-bind", str(scratch / "submission"), _SUBMISSION,
             "--size", str(64 << 20), "--tmpfs", "/dev/shm",
             "--chdir", INSIDE_HOME]
    # What bubblewrap made writable for its own set-up (the root folder, /dev, the mask over
    # the answer key) is read-only from here on: the only writable places are the size-limited
    # folders above.
    args += ["--remount-ro", str(package / "reference"), "--remount-ro", "/dev", "--remount-ro", "/"]
    env = {"HOME": INSIDE_HOME, "USER": "learner", "PATH": f"{sys.prefix}/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": f"{INSIDE_HOME}/.config/matplotlib", "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FV_CACHE_DIR": INSIDE_CACHE,
           "JUPYTER_PLATFORM_DIRS": "1"}
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
                 "OPENBLAS_L2_SIZE", "FV_DEVICE"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(spec.env)
    env.update(extra_env or {})
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args


def _write_scratch(spec: SandboxSpec) -> Path:
    """A private host folder holding what the sandbox binds read-only: account files and a
    copy of the submission folder (the kernel copies it into its in-memory working folder)."""
    scratch = Path(tempfile.mkdtemp(prefix="fv-sandbox-"))
    (scratch / "passwd").write_text(f"learner:x:1000:1000:learner:{INSIDE_HOME}:/bin/sh\n")
    (scratch / "group").write_text("learner:x:1000:\n")
    shutil.copytree(spec.submission_dir, scratch / "submission",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"), dirs_exist_ok=True)
    return scratch


def _sandbox_child(pid: int, timeout: float = 10.0) -> int:
    """PID of the process bubblewrap started in the new namespaces (its first child)."""
    deadline = time.monotonic() + timeout
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        try:
            children = Path(path).read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise SandboxUnavailable("the sandboxed kernel did not start (bubblewrap made no process)")


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run inside :func:`bwrap_args`'s sandbox.

    Set :attr:`spec` before starting. The kernel uses the ``ipc`` transport with sockets in the
    sandbox's own ``/run/kernel``; after launch, :attr:`ip` is pointed at them through
    ``/proc/<pid>/root`` for this process's clients. Interrupts go as messages (a signal to
    bubblewrap would not reach a kernel in its own session).
    """

    spec: SandboxSpec | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        self.ip = f"{_SOCKETS}/k"
        self._scratch: Path | None = None
        self._cgroups: _Cgroups | None = None

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        assert self.spec is not None, "SandboxedKernelManager.spec is not set"
        cmd = super().format_kernel_cmd(extra_arguments)
        connection = os.path.realpath(self.connection_file)
        cmd = [_CONNECTION if a == connection else a for a in cmd]
        if cmd[0] != sys.executable:  # the course's kernel is this interpreter's ipykernel
            cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", _CONNECTION]
        self._scratch = _write_scratch(self.spec)
        lim = self.spec.limits
        self._cgroups = _Cgroups(lim)
        if "pids" not in self._cgroups.limited and os.getuid() == 0:
            self._cgroups.remove()
            raise SandboxUnavailable(
                "grading as root, and no cgroup could be made to limit the sandbox's processes "
                "(the kernel does not apply the per-user limit to root): grade as an ordinary "
                "user, or where /sys/fs/cgroup is writable.")
        nproc = _count_user_tasks(os.getuid()) + lim.processes
        boot = _BOOT.format(submission=_SUBMISSION, work=INSIDE_WORK)
        join = self._cgroups.join_files()
        spec_env = dict(getattr(self.kernel_spec, "env", None) or {})
        return [sys.executable, "-I", "-c", _JOIN, str(len(join)), *join,
                *bwrap_args(self.spec, connection, self._scratch, extra_env=spec_env), "--",
                sys.executable, "-I",
                "-c", boot, str(lim.memory_bytes), str(nproc), str(lim.file_bytes), *cmd[1:]]

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        # The kernel starts in the sandbox's working folder, whatever folder nbclient asked for.
        kw["cwd"] = tempfile.gettempdir()
        await super()._async_launch_kernel(kernel_cmd, **kw)
        child = _sandbox_child(self.provisioner.process.pid)
        self.ip = f"/proc/{child}/root{_SOCKETS}/k"

    async def interrupt_kernel(self) -> None:  # AsyncKernelManager binds the base method by name
        if self.kernel_spec is not None:
            self.kernel_spec.interrupt_mode = "message"
        await self._async_interrupt_kernel()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
