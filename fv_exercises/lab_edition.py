"""Two editions of JupyterLab's nbgrader tools: what a learner sees, and what an instructor sees.

nbgrader 0.9 installs six JupyterLab plugins and four Jupyter server extensions, all switched on.
A learner needs two of them: the assignment list (``Nbgrader > Assignment List``) and the
notebook toolbar's *Validate* button. The instructor's tools (the *Create Assignment* panel, the
formgrader and the course list) only confuse a learner, and the formgrader serves a gradebook.

- **learner** (the default of ``scripts/install.sh``): the instructor's lab plugins are disabled
  and locked (JupyterLab's plugin manager cannot switch them back on) and their server
  extensions are disabled;
- **instructor**: every nbgrader tool on, as nbgrader installs itself.

``python -m fv_exercises edition [learner|instructor]`` switches this environment (its
``sys.prefix`` level of Jupyter's configuration, i.e. ``.venv/etc/jupyter``) and, without an
argument, prints the current edition. Restart JupyterLab afterwards.

It writes exactly the files that Jupyter's own commands write, so either can undo the other::

    jupyter labextension disable --level=sys_prefix @jupyter/nbgrader:formgrader   # + lock
    jupyter server extension disable --sys-prefix nbgrader.server_extensions.formgrader

but without those commands' cost (they import every extension to validate it: tens of seconds
on a busy 2-core machine for the seven toggles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jupyter_server.config_manager import BaseJSONConfigManager
from jupyter_server.extension.config import ExtensionConfigManager

EDITIONS = ("learner", "instructor")

_LAB = "@jupyter/nbgrader:"
# The menu plugin adds only the entries whose plugin is on: a learner's Nbgrader menu lists
# "Assignment List" alone.
LEARNER_LAB_PLUGINS = (_LAB + "assignment-list", _LAB + "validate-assignment", _LAB + "menu")
INSTRUCTOR_LAB_PLUGINS = (_LAB + "create-assignment", _LAB + "formgrader", _LAB + "course-list")

_SERVER = "nbgrader.server_extensions."
LEARNER_SERVER_EXTENSIONS = (_SERVER + "assignment_list", _SERVER + "validate_assignment")
INSTRUCTOR_SERVER_EXTENSIONS = (_SERVER + "formgrader", _SERVER + "course_list")


def sys_prefix_config_dir() -> Path:
    """This environment's Jupyter configuration folder (what ``--sys-prefix`` writes to)."""
    return Path(sys.prefix) / "etc" / "jupyter"


def _server_config(config_dir: Path) -> ExtensionConfigManager:
    """Server-extension switches of ``config_dir`` alone (read and write), as ``jupyter server
    extension enable --sys-prefix`` uses them. Both folders are given: the defaults are the
    user's ``~/.jupyter``."""
    return ExtensionConfigManager(read_config_path=[str(config_dir)],
                                  write_config_dir=str(config_dir / "jupyter_server_config.d"))


def set_edition(edition: str, config_dir: Path | None = None) -> None:
    """Write ``edition``'s plugin and server-extension switches into ``config_dir``.

    Only nbgrader's entries are touched; other extensions' settings in the same files stay.
    Every nbgrader entry is written explicitly (``False`` as well as ``True``), so the edition
    also wins over an older setting of the same level.
    """
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, not {edition!r}")
    config_dir = config_dir or sys_prefix_config_dir()
    off = edition == "learner"
    plugins = {p: False for p in LEARNER_LAB_PLUGINS} | {p: off for p in INSTRUCTOR_LAB_PLUGINS}
    # labconfig/page_config.json: as `jupyter labextension disable|enable` and `lock|unlock` write
    BaseJSONConfigManager(config_dir=str(config_dir / "labconfig")).update(
        "page_config", {"disabledExtensions": plugins, "lockedExtensions": plugins})
    # jupyter_server_config.d/<extension>.json: as `jupyter server extension enable|disable` writes
    servers = _server_config(config_dir)
    for name in LEARNER_SERVER_EXTENSIONS:
        servers.enable(name)
    for name in INSTRUCTOR_SERVER_EXTENSIONS:
        servers.disable(name) if off else servers.enable(name)


def edition_chosen(config_dir: Path | None = None) -> bool:
    """Whether an edition was ever set in ``config_dir`` (by :func:`set_edition` or by hand):
    some nbgrader plugin has an entry in its lab page config."""
    config_dir = config_dir or sys_prefix_config_dir()
    page = BaseJSONConfigManager(config_dir=str(config_dir / "labconfig")).get("page_config")
    return any(p.startswith(_LAB) for p in page.get("disabledExtensions", {}))


def current_edition(config_dir: Path | None = None) -> str:
    """The edition ``config_dir`` holds: ``learner``, ``instructor``, or ``mixed`` (some of the
    switches were changed by hand, or the edition was never set: nbgrader's default is all on,
    which reads as ``instructor``)."""
    config_dir = config_dir or sys_prefix_config_dir()
    page = BaseJSONConfigManager(config_dir=str(config_dir / "labconfig")).get("page_config")
    disabled = page.get("disabledExtensions", {})
    if isinstance(disabled, list):  # the format of jupyterlab_server < 2.10
        disabled = dict.fromkeys(disabled, True)
    servers = _server_config(config_dir).get_jpserver_extensions()
    learner_on = [not disabled.get(p, False) for p in LEARNER_LAB_PLUGINS]
    learner_on += [servers.get(n, True) for n in LEARNER_SERVER_EXTENSIONS]
    instructor_on = [not disabled.get(p, False) for p in INSTRUCTOR_LAB_PLUGINS]
    instructor_on += [servers.get(n, True) for n in INSTRUCTOR_SERVER_EXTENSIONS]
    if not all(learner_on):
        return "mixed"
    if all(instructor_on):
        return "instructor"
    return "learner" if not any(instructor_on) else "mixed"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``edition`` subcommand of ``python -m fv_exercises``."""
    parser = sub.add_parser("edition", help="JupyterLab's nbgrader tools: learner or instructor",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edition", nargs="?", choices=EDITIONS,
                        help="switch to this edition (default: print the current one)")
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="Jupyter configuration folder (default: this environment's, "
                             f"{sys_prefix_config_dir()})")
    parser.add_argument("--unless-chosen", action="store_true",
                        help="switch only if no edition was chosen before (scripts/install.sh: "
                             "a fresh install gets the learner edition, a re-run keeps the choice)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Switch to ``args.edition`` (if given) and print the edition now in force."""
    where = args.config_dir or sys_prefix_config_dir()
    switch = args.edition and not (args.unless_chosen and edition_chosen(where))
    if switch:
        set_edition(args.edition, where)
    edition = current_edition(where)
    tools = {"learner": "assignment list and Validate only",
             "instructor": "Create Assignment, formgrader, course list, assignment list, Validate",
             "mixed": "switched by hand; `python -m fv_exercises edition learner|instructor` resets"}
    print(f"JupyterLab nbgrader tools: {edition} edition ({tools[edition]}) in {where}")
    if switch:
        print("restart JupyterLab (and reload the page) to see the change")
    return 0
