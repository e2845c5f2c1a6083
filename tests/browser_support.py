"""JupyterLab servers and headless Chromium for the browser tests (tests/test_browser.py).

Each server runs on a free localhost port with a random token, a HOME and Jupyter configuration
of its own (so the tests neither read nor change the environment's edition, nor the user's
settings), in its own process group, and is always shut down. Chromium is Debian's
(``/usr/bin/chromium``, or ``$FV_CHROMIUM``) driven by Playwright, in a new empty profile, with
Chromium's own network traffic (updates, sync, field trials) switched off.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fv_exercises.course import tool_env
from fv_exercises.lab_edition import set_edition
from fv_exercises.model import cache_root

CHROMIUM = os.environ.get("FV_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = ("run `bash scripts/install_browser.sh` (as root it installs Debian's chromium with "
                "apt-get, and Playwright), or `sudo apt-get install chromium` and "
                "`.venv/bin/pip install -e '.[browser]'`")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 180  # JupyterLab imports nbgrader and friends: ~20 s on a busy 2-core machine


def missing_tools() -> str | None:
    """Why the browser tests cannot run here (and how to fix it), or ``None``."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed at {CHROMIUM}: {INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright for Python is not installed: {INSTALL_HINT}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running Jupyter server: where it listens, its token, and its log."""

    url: str
    token: str
    log: Path
    process: subprocess.Popen

    def page_url(self, path: str) -> str:
        """``path`` on this server, with the token (the browser then keeps a cookie)."""
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.token}"

    def status(self, path: str) -> int:
        """HTTP status of ``path`` (token in the header), as a script would see it."""
        request = urllib.request.Request(self.url + path,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code


def _environment(home: Path, edition: str) -> dict[str, str]:
    """Environment of a server with its own HOME and Jupyter folders, set to ``edition``.

    ``JUPYTER_CONFIG_PATH`` comes before this environment's own configuration: the edition
    written there wins over whatever edition the environment has.
    """
    edition_dir = home / "edition"
    set_edition(edition, edition_dir)
    env = tool_env()
    env.update({
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_CONFIG_PATH": str(edition_dir),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "FV_CACHE_DIR": str(cache_root()),  # the model converted once, not again in a new HOME
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    env.pop("JUPYTER_PLATFORM_DIRS", None)
    # the answer a user gives to "Would you like to get notified about official Jupyter news?":
    # no, and no toast over the page
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    return env


def _wait_until_up(server: Server, timeout_s: float) -> None:
    """Return when the server answers ``/api/status``; fail with its log if it dies or hangs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({server.process.returncode}):\n"
                               + server.log.read_text()[-4000:])
        with contextlib.suppress(OSError):
            if server.status("/api/status") == 200:
                return
        time.sleep(0.25)  # polling a port, not waiting for the page: the browser waits on selectors
    raise RuntimeError(f"jupyter lab did not answer within {timeout_s} s:\n"
                       + server.log.read_text()[-4000:])


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and everything it started (its kernels): its own process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # Jupyter's clean shutdown: kernels, then the server
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group, kernels included
    process.wait(timeout=15)


@contextlib.contextmanager
def jupyter_lab(root_dir: Path, edition: str) -> Iterator[Server]:
    """``jupyter lab`` serving ``root_dir`` (its working folder too: nbgrader's formgrader reads
    ``nbgrader_config.py`` from there) with ``edition``'s nbgrader tools; stopped on exit."""
    home = Path(tempfile.mkdtemp(prefix="fv-browser-home-"))
    port, token = free_port(), secrets.token_hex(16)
    log = home / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=None",  # nothing to fetch
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.getuid() == 0:  # CI runs as root
        cmd.append("--allow-root")
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=root_dir, env=_environment(home, edition), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", token, log, process)
    try:
        _wait_until_up(server, SERVER_START_TIMEOUT_S)
        yield server
    finally:
        _stop(process)


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 900):
    """A Playwright page in headless Chromium with a new, empty profile; closed on exit."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="fv-chromium-profile-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            context.set_default_timeout(60_000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def artifacts_dir() -> Path:
    """Where screenshots go: ``$FV_ARTIFACTS`` (tests/conftest.py sets a fresh one per run)."""
    folder = Path(os.environ.get("FV_ARTIFACTS") or tempfile.mkdtemp(prefix="fv-artifacts-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
