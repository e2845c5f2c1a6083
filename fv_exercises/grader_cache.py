"""The grader's side of the disk cache: build and keep what a sandboxed kernel could not.

A kernel in the grading sandbox reads the course's cache but cannot write it
(:mod:`fv_exercises.disk_cache`); what it builds it notes in ``disk_cache.UNSAVED``. After each
submission the judge (:mod:`fv_exercises.judge`) asks the kernel for that list and calls
:func:`rebuild_unsaved`, which builds each named value *with the grader's own code and model*
and keeps it, so the next kernel reads it. A request only names what to build; anything that is
not a shipped task, a small seed and a recipe no costlier than the course's is ignored.
"""

from __future__ import annotations

import time
from typing import Sequence

from fv_exercises.heads import (
    COURSE_RECIPE, FunctionVectorRecipe, function_vector_details, task_scan)
from fv_exercises.tasks import task_names


def _within_course_recipe(recipe: object) -> bool:
    """A recipe that costs no more than the course's (so a request to rebuild it is bounded)."""
    c = COURSE_RECIPE
    return (type(recipe) is FunctionVectorRecipe and recipe.heads in ("task", "universal")
            and len(recipe.ks) <= len(c.ks) and all(0 < k <= max(c.ks) for k in recipe.ks)
            and len(recipe.layer_fractions) <= len(c.layer_fractions)
            and all(0 <= f <= 1 for f in recipe.layer_fractions)
            and len(recipe.scales) <= len(c.scales) and 0 < recipe.n_prompts <= c.n_prompts
            and 0 < recipe.n_scan <= c.n_scan and 0 < recipe.n_select <= c.n_select
            and c.scan_from <= recipe.scan_from <= 1)


def rebuild_unsaved(model, requests: Sequence, limit: int = 16,
                    deadline: float | None = None) -> int:
    """Build and keep on disk what a sandboxed kernel built but could not keep (its
    ``disk_cache.UNSAVED``), so that the next submission's kernel reads it instead of building
    it again.

    Runs in the grader, with its own model and code: a request only names what to build (a
    shipped task, a seed, a recipe no costlier than the course's); anything else, anything past
    ``limit`` requests and anything once ``time.monotonic()`` passes ``deadline`` is ignored (so a
    submission cannot keep the grader busy). Returns how many requests were built (or kept).
    """
    done = 0
    for request in list(requests)[:limit]:
        if deadline is not None and time.monotonic() > deadline:
            break
        if not (isinstance(request, (tuple, list)) and len(request) == 4):
            continue
        kind, task, seed, recipe = request
        if (kind not in ("function_vector", "task_scan") or task not in task_names()
                or type(seed) is not int or not 0 <= seed < 1000 or not _within_course_recipe(recipe)):
            continue
        if kind == "function_vector":
            function_vector_details(model, task, seed, recipe)
        else:
            task_scan(model, task, seed, recipe)
        done += 1
    return done
