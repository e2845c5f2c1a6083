"""The grader's side of the disk cache: build and keep what a sandboxed kernel could not.

A kernel in the grading sandbox reads the course's cache but cannot write it
(:mod:`fv_exercises.disk_cache`); what it builds it notes in ``disk_cache.UNSAVED``. After each
submission the judge (:mod:`fv_exercises.judge`) asks the kernel for that list and calls
:func:`rebuild_unsaved`, which builds each named value *with the grader's own code and model*
and keeps it, so the next kernel reads it. A request only names what to build; anything that is
not a shipped task, a small seed and a recipe no costlier than the course's (or, for notebook
09's few-shot accuracies, a list of shipped tasks) is ignored.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from fv_exercises.heads import (
    COURSE_RECIPE, FunctionVectorRecipe, function_vector_details, task_scan)
from fv_exercises.recipe import few_shot_accuracies
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
    shipped task, a seed, a recipe no costlier than the course's; or a list of shipped tasks
    for their few-shot accuracies); anything else, anything past
    ``limit`` requests and anything once ``time.monotonic()`` passes ``deadline`` is ignored (so a
    submission cannot keep the grader busy). Returns how many requests were built (or kept).
    """
    done = 0
    for request in list(requests)[:limit]:
        if deadline is not None and time.monotonic() > deadline:
            break
        build = _builder(request)
        if build is not None:
            build(model)
            done += 1
    return done


def _builder(request: object) -> Callable | None:
    """How to build what ``request`` names (a function of the model), or None if it names
    anything the grader should not build."""
    if not isinstance(request, (tuple, list)) or not request:
        return None
    kind, *args = request
    if kind in ("function_vector", "task_scan") and len(args) == 3:
        task, seed, recipe = args
        if (task in task_names() and type(seed) is int and 0 <= seed < 1000
                and _within_course_recipe(recipe)):
            if kind == "function_vector":
                return lambda model: function_vector_details(model, task, seed, recipe)
            return lambda model: task_scan(model, task, seed, recipe)
    if kind == "few_shot" and len(args) == 1:
        # notebook 09's few-shot accuracies over the shipped tasks (each task at most once)
        tasks = args[0]
        if (isinstance(tasks, (tuple, list)) and tasks and len(set(tasks)) == len(tasks)
                and all(isinstance(t, str) and t in task_names() for t in tasks)):
            return lambda model: few_shot_accuracies(model, list(tasks))
    return None
