"""The two editions of JupyterLab's nbgrader tools (fv_exercises/lab_edition.py), without a
browser: after each switch, what JupyterLab and the Jupyter server read from the configuration.

Every switch goes to a scratch configuration folder put first on ``JUPYTER_CONFIG_PATH`` (the
environment's own edition is neither read nor changed). What the pages show is tested in the
browser (tests/test_browser.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fv_exercises.course import ROOT
from fv_exercises.lab_edition import (INSTRUCTOR_LAB_PLUGINS, INSTRUCTOR_SERVER_EXTENSIONS,
                                      LEARNER_LAB_PLUGINS, LEARNER_SERVER_EXTENSIONS,
                                      current_edition, edition_chosen, set_edition)

NBGRADER_PLUGINS = LEARNER_LAB_PLUGINS + INSTRUCTOR_LAB_PLUGINS
NBGRADER_SERVER_EXTENSIONS = LEARNER_SERVER_EXTENSIONS + INSTRUCTOR_SERVER_EXTENSIONS


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A scratch Jupyter configuration folder that wins over the environment's own, and a HOME
    of the test's (nothing read from or written to the user's ~/.jupyter)."""
    folder = tmp_path / "etc-jupyter"
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(folder))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "home" / ".jupyter"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return folder


def _page_config_set(key: str) -> set[str]:
    """nbgrader plugins listed as on under ``key`` in the page config JupyterLab sends to the
    browser (a list there; a mapping in the files)."""
    from jupyterlab_server.config import get_page_config

    value = get_page_config([]).get(key, [])
    names = value if isinstance(value, list) else [p for p, on in value.items() if on]
    return {p for p in names if p in NBGRADER_PLUGINS}


def lab_disabled_plugins() -> set[str]:
    return _page_config_set("disabledExtensions")


def lab_locked_plugins() -> set[str]:
    return _page_config_set("lockedExtensions")


def server_enabled_extensions() -> set[str]:
    """nbgrader server extensions a Jupyter server started now would load (its own lookup)."""
    from jupyter_server.serverapp import ServerApp

    app = ServerApp()
    app.find_server_extensions()
    return {name for name, on in app.jpserver_extensions.items()
            if on and name in NBGRADER_SERVER_EXTENSIONS}


def labextension_list(env_dir) -> str:
    """What ``jupyter labextension list`` prints (JupyterLab's own command, in a subprocess)."""
    import os

    env = dict(os.environ, JUPYTER_CONFIG_PATH=str(env_dir))
    result = subprocess.run([sys.executable, "-m", "jupyterlab.labextensions", "list"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_learner_then_instructor_then_learner(config_dir):
    set_edition("learner", config_dir)
    assert lab_disabled_plugins() == set(INSTRUCTOR_LAB_PLUGINS)
    assert lab_locked_plugins() == set(INSTRUCTOR_LAB_PLUGINS)  # the plugin manager cannot undo it
    assert server_enabled_extensions() == set(LEARNER_SERVER_EXTENSIONS)
    assert current_edition(config_dir) == "learner"

    set_edition("instructor", config_dir)
    assert lab_disabled_plugins() == set()
    assert lab_locked_plugins() == set()
    assert server_enabled_extensions() == set(NBGRADER_SERVER_EXTENSIONS)
    assert current_edition(config_dir) == "instructor"

    set_edition("learner", config_dir)
    assert lab_disabled_plugins() == set(INSTRUCTOR_LAB_PLUGINS)
    assert server_enabled_extensions() == set(LEARNER_SERVER_EXTENSIONS)


def test_jupyter_labextension_list_shows_the_learner_edition(config_dir):
    set_edition("learner", config_dir)
    listed = labextension_list(config_dir)
    disabled = listed.split("Disabled extensions:")[1] if "Disabled extensions:" in listed else ""
    assert sorted(p for p in NBGRADER_PLUGINS if p in disabled) == sorted(INSTRUCTOR_LAB_PLUGINS), listed


def test_other_settings_in_the_same_files_are_kept(config_dir):
    (config_dir / "labconfig").mkdir(parents=True)
    (config_dir / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/some-other:plugin": True}}))
    set_edition("learner", config_dir)
    set_edition("instructor", config_dir)
    page = json.loads((config_dir / "labconfig" / "page_config.json").read_text())
    assert page["disabledExtensions"]["@jupyterlab/some-other:plugin"] is True


def test_a_hand_change_reads_as_mixed(config_dir):
    set_edition("learner", config_dir)
    # as `jupyter server extension enable --sys-prefix nbgrader.server_extensions.formgrader` does
    path = config_dir / "jupyter_server_config.d" / f"{INSTRUCTOR_SERVER_EXTENSIONS[0]}.json"
    path.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {INSTRUCTOR_SERVER_EXTENSIONS[0]: True}}}))
    assert current_edition(config_dir) == "mixed"


def test_unknown_edition_is_refused(config_dir):
    with pytest.raises(ValueError, match="learner"):
        set_edition("teacher", config_dir)


def test_command_line_and_unless_chosen(config_dir, capsys):
    """``fv edition learner --unless-chosen`` (what install.sh runs) sets the learner edition on a
    fresh install and keeps an instructor's choice on a re-run."""
    from fv_exercises.__main__ import main

    assert not edition_chosen(config_dir)
    assert main(["edition", "learner", "--unless-chosen", "--config-dir", str(config_dir)]) == 0
    assert current_edition(config_dir) == "learner"
    assert main(["edition", "instructor", "--config-dir", str(config_dir)]) == 0
    assert main(["edition", "learner", "--unless-chosen", "--config-dir", str(config_dir)]) == 0
    assert current_edition(config_dir) == "instructor"
    assert main(["edition", "--config-dir", str(config_dir)]) == 0
    assert "instructor edition" in capsys.readouterr().out.splitlines()[-1]


def test_install_script_sets_the_learner_edition_once():
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert "-m fv_exercises edition learner --unless-chosen" in text
