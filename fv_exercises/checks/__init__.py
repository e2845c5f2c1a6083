"""Check cells: one module per notebook, named like its reference module.

``from fv_exercises.checks.task_vectors import check_find_task_vector`` (notebook 01),
``fv_exercises.checks.layer_sweep`` (02), ``fv_exercises.checks.heads`` (03), ... The shared
machinery (calling a learner's function safely, guarding the model, comparing, naming mistakes)
is in :mod:`fv_exercises.checks.core`.
"""

from fv_exercises.checks.core import CheckFailure

__all__ = ["CheckFailure"]
