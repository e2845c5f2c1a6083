"""Cheap grading without changing what is graded.

nbgrader executes every cell of every submission, exploration cells included, and sets
``NBGRADER_EXECUTION`` while it autogrades. Exploration cells size their work with :func:`size`:
the full amount for a learner, a small one while grading. Grade cells never use it: they run the
checks in full either way.
"""

from __future__ import annotations

import os


def grading_run() -> bool:
    """True while ``nbgrader autograde`` (or ``validate``) executes the notebook."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def size(full: int, grading: int) -> int:
    """``full`` normally, ``grading`` during an autograde run (exploration cells only)."""
    return grading if grading_run() else full
