"""The autograder under real conditions: planted submissions, graded by nbgrader in one batch.

Each case is a submission of notebook 01 (the cheapest) placed in ``submitted/`` beside a correct
one; ``nbgrader autograde`` (through the instructor's command,
:func:`fv_exercises.autograding.autograde`) grades the batch, and every student's score per grade
cell is asserted, with the message the learner reads in the feedback. The first batch also holds
the dishonest and hostile submissions of tests/grading_attacks.py, graded before the correct one.

Cost: every submission executes the whole notebook. To keep CI short, the planted submissions
keep only the cells grading needs (imports, set-up, the learner's functions, the grade cells)
plus the cells each case plants: a learner may delete exploration cells, and what the exploration
cells of the real notebook do under grading is covered by ``test_nbgrader_roundtrip.py`` and the
grading benchmark. Two batches: the hung cell's timeout is set from the slowest kernel cell of the
correct submission in the first batch (three times it, at least 60 s, so that a busy machine does
not time out a correct cell), instead of ``nbgrader_config.py``'s 300 s, which would cost five minutes here.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import pytest

import grading_attacks
from fv_exercises.autograding import (
    autograde, cell_scores, cell_seconds, nbgrader, notebook_path, reference_submission,
    scratch_course, submit)

pytestmark = pytest.mark.notebook

NAME = "01_task_vectors"
FIND, MEAN = "test_find_task_vector", "test_mean_task_vector"
FULL, ZERO = "full", 0.0

# ---------------------------------------------------------------------------------------------
# Building submissions
# ---------------------------------------------------------------------------------------------


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _trimmed(nb):
    """Only the cells grading needs: nbgrader cells, ``export`` imports, the set-up cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and (
        _grade_id(c) or "export" in c.metadata.get("tags", []) or "load_model(" in c.source)]
    return nb


def _index(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if _grade_id(c) == grade_id)


def _with(nb, **sources: str):
    """A copy of ``nb`` with the cells of the given grade ids replaced by new source."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for grade_id, source in sources.items():
        nb.cells[_index(nb, grade_id)].source = source
    return nb


def _insert_before(nb, grade_id: str, source: str):
    """A copy of ``nb`` with a new (learner's, ungraded) code cell right before ``grade_id``."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells.insert(_index(nb, grade_id), nbformat.v4.new_code_cell(source))
    return nb


HANGS = '''def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    while True:  # the learner's loop never ends
        pass
'''
RAISES = '''def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    hook_name = f"blocks.{layer}.resid_post"  # wrong name: the cache has no such key
    _, cache = model.run_with_cache(icl_prompt)
    h = cache[hook_name][:, -1]
    return model(zero_shot_prompt)
'''
WRONG_SHAPE = '''def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    return model(zero_shot_prompt)[0]  # [seq, d_vocab]: the batch dimension dropped
'''
LEAKS_HOOK = '''def find_task_vector(model, icl_prompt, zero_shot_prompt, layer):
    hook_name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(icl_prompt, names_filter=lambda n: n == hook_name)
    h = cache[hook_name][:, -1]

    def add(resid, hook):
        resid[:, -1] += h
        return resid

    model.add_hook(hook_name, add)  # never removed
    return model(zero_shot_prompt)
'''
RETURNS_NONE = '''def mean_task_vector(model, icl_prompts, zero_shot_prompts, layer):
    name = f"blocks.{layer}.hook_resid_post"
    mean = lambda ps: torch.stack([model.run_with_cache(p)[1][name][0, -1] for p in ps]).mean(0)
    h = mean(icl_prompts) - mean(zero_shot_prompts)  # ... and no return
'''
WRONG_DTYPE = '''def mean_task_vector(model, icl_prompts, zero_shot_prompts, layer):
    name = f"blocks.{layer}.hook_resid_post"
    mean = lambda ps: torch.stack([model.run_with_cache(p)[1][name][0, -1] for p in ps]).mean(0)
    return (mean(icl_prompts) - mean(zero_shot_prompts)).long()
'''
# Exploration code that leaves the shared model and torch's global state poisoned. Each of these
# would make the next check fail if it were not undone: NaN weights and a NaN hook make every
# output NaN (which a check reports).
POISON = '''params = [p for p in model.parameters() if p.ndim == 2]
params[len(params) // 2].data.mul_(float("nan"))  # a weight matrix edited in place
model.add_hook("blocks.0.hook_resid_post", lambda resid, hook: resid * float("nan"))
torch.set_grad_enabled(True)
torch.set_default_dtype(torch.float64)
print("poisoned:", torch.get_default_dtype(), torch.is_grad_enabled())
'''
NOISE = '''import sys, warnings
print("\\n".join(f"line {i}" for i in range(100_000)))  # far more lines than nbgrader keeps
print("x" * 1_000_000)  # one huge line
for i in range(2_000):
    print(f"learner noise {i}", file=sys.stderr)
warnings.warn("a learner's warning")
'''


def _submissions(reference, attackers: dict[str, str]) -> tuple[dict, dict]:
    """(first batch, second batch): ``{student: notebook, text or None}``. ``attackers``:
    ``{student: find_task_vector cell}`` of tests/grading_attacks.py (in the first batch).

    Several cases share a submission where they touch different grade cells (each submission
    costs a kernel, a model load and the checks).
    """
    base = _trimmed(reference)
    # Poisoned before the first check, its test edited (nbgrader restores it); the other deleted.
    tampered = _insert_before(base, FIND, POISON)
    tampered = _with(tampered, **{FIND: 'print("all good")  # the learner edited a locked test'})
    del tampered.cells[_index(tampered, MEAN)]
    # A test moved above the function it tests.
    reordered = nbformat.from_dict(json.loads(json.dumps(base)))
    cell = reordered.cells.pop(_index(reordered, FIND))
    reordered.cells.insert(_index(reordered, "find_task_vector"), cell)
    # A learner function that leaves its hook registered; then exploration code that poisons
    # the model and global state and floods the output, before the next check.
    leaky = _insert_before(_with(base, find_task_vector=LEAKS_HOOK), MEAN, POISON + NOISE)
    first = {
        "correct": base,
        "errors": _with(base, find_task_vector=RAISES, mean_task_vector=RETURNS_NONE),
        "types": _with(base, find_task_vector=WRONG_SHAPE, mean_task_vector=WRONG_DTYPE),
        "tampered": tampered,
        "leaky": leaky,
        "unreadable": '{"cells": [{"cell_type": "code", "source": "def find_task_vector(',
        "missing": None,
        **{student: _with(base, find_task_vector=code, mean_task_vector="pass")
           for student, code in attackers.items()},
    }
    # nbgrader grades students in name order: "reordered" runs in the kernel after the hang.
    second = {"hangs": _with(base, find_task_vector=HANGS), "reordered": reordered}
    return first, second


# What each student must score per grade cell, and the messages their feedback must show.
EXPECTED = {
    "correct": ({FIND: FULL, MEAN: FULL}, []),
    "errors": ({FIND: ZERO, MEAN: ZERO}, ["`find_task_vector` raised KeyError",
                                          "`mean_task_vector` returned None"]),
    "types": ({FIND: ZERO, MEAN: ZERO}, ["`find_task_vector` returned shape",
                                         "`mean_task_vector` returned a torch.int64 tensor"]),
    "tampered": ({FIND: FULL, MEAN: ZERO}, ["poisoned: torch.float64 True"]),
    "leaky": ({FIND: ZERO, MEAN: FULL}, ["left hooks registered", "poisoned: torch.float64 True"]),
    "unreadable": ({FIND: ZERO, MEAN: ZERO}, []),
    "missing": ({FIND: ZERO, MEAN: ZERO}, []),
    "hangs": ({FIND: ZERO, MEAN: FULL}, ["CellTimeoutError"]),
    "reordered": ({FIND: ZERO, MEAN: FULL}, ["`find_task_vector` is not defined when its grade cell runs"]),
}
# The attackers' scores and what their notebooks show are asserted by grading_attacks.failures.
ATTACKERS = set(grading_attacks.EXPECTED)

# ---------------------------------------------------------------------------------------------
# The batches
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def course(tmp_path_factory, model):
    """Both batches graded; returns ``(root, {student: outcome}, timeout used for the hang,
    the attackers' traps after the first batch)``.

    ``model`` (the session's embedded model) is requested so that the model cache exists before
    the first kernel starts: a cold conversion inside a graded cell would only cost time.
    """
    root = tmp_path_factory.mktemp("autograder")
    scratch_course(root, [NAME])
    attackers, traps = grading_attacks.plant(root)
    first, second = _submissions(reference_submission(root, NAME), attackers)
    for student, nb in first.items():
        submit(root, NAME, student, nb)
    grading_attacks.arm(traps)
    try:
        outcomes = {o.student: o for o in autograde(root, NAME)}
    finally:
        grading_attacks.collect(traps)
    correct = nbformat.read(notebook_path(root, "autograded", "correct", NAME), as_version=4)
    # The limit applies to what runs in the kernel: its cells and each call of a learner's
    # function from a grade cell (the grade cells themselves run in the judge, untimed by it).
    slowest = max(seconds for label, seconds in cell_seconds(correct) if label not in (FIND, MEAN))
    timeout = int(max(60, 3 * slowest))
    for student, nb in second.items():
        submit(root, NAME, student, nb)
    # Without --force, the first batch is kept and only the new submissions are graded.
    outcomes.update({o.student: o for o in autograde(
        root, NAME, extra=[f"--Execute.timeout={timeout}"]) if o.student in second})
    nbgrader(root, "generate_feedback", NAME, "--force")
    return root, outcomes, timeout, traps


def _feedback_text(root: Path, student: str) -> str:
    path = notebook_path(root, "feedback", student, NAME).with_suffix(".html")
    text = html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _planted_submission_scores(course, student):
    root, outcomes, *_ = course
    expected, _ = EXPECTED[student]
    scores = cell_scores(root, NAME, student)
    assert set(scores) == set(expected), scores
    for cell, want in expected.items():
        score, max_score = scores[cell]
        want = max_score if want == FULL else want
        assert score == want, (f"{student}: {cell} scored {score}/{max_score}, expected {want}; "
                               f"{outcomes[student]}")


def _feedback_says_what_went_wrong(course, student):
    root, *_ = course
    text = _feedback_text(root, student)
    for message in EXPECTED[student][1]:
        assert message in text, f"{student}: {message!r} not in the feedback"


def _batch_reports_every_student(course):
    """The instructor's command grades the whole batch and says what happened to each student."""
    root, outcomes, timeout, _ = course
    assert set(outcomes) == set(EXPECTED) | ATTACKERS
    assert "cannot be read" in outcomes["unreadable"].problem
    assert "no 01_task_vectors.ipynb" in outcomes["missing"].problem
    assert outcomes["hangs"].failed_cells == [f"{FIND} (timed out)"], (timeout, outcomes["hangs"])
    o = outcomes["correct"]
    assert o.score == o.max_score > 0 and not o.problem and not o.failed_cells, o


def _huge_output_is_cut_and_grade_cells_stay_silent(course):
    """Learner noise outside grade cells: nbgrader keeps 1000 lines, the grade cells have no
    stderr (nbgrader would score them zero)."""
    root, *_ = course
    nb = nbformat.read(notebook_path(root, "autograded", "leaky", NAME), as_version=4)
    noisy = [c for c in nb.cells if "learner noise" in c.source]
    assert len(noisy) == 1
    text = "".join(o.get("text", "") for c in noisy for o in c.outputs)
    assert "Output truncated" in text
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            assert not [o for o in cell.outputs if o.get("name") == "stderr"], _grade_id(cell)


def test_autograder_batch(course):
    """Every assertion above, and the attackers' (tests/grading_attacks.py), on the one graded
    batch, in one test: a test that shares the batch with others could run on the other xdist
    worker, which would grade the batch again."""
    root, outcomes, _, traps = course
    failures = [f"attacks: {f}" for f in grading_attacks.failures(traps, outcomes)]
    failures += [f"attacks: a sandboxed process outlived grading: {p}"
                 for p in grading_attacks.leftover_processes()]
    checks = ([(_planted_submission_scores, s) for s in EXPECTED]
              + [(_feedback_says_what_went_wrong, s) for s, (_, msgs) in EXPECTED.items() if msgs]
              + [(_batch_reports_every_student, None), (_huge_output_is_cut_and_grade_cells_stay_silent, None)])
    for check, student in checks:
        try:
            check(course, student) if student is not None else check(course)
        except AssertionError as e:
            failures.append(f"{check.__name__.strip('_')}({student or ''}): {e}")
    assert not failures, "\n\n".join(failures)


def test_grading_bench_splits_a_batch_into_even_shards():
    from fv_exercises.grading_bench import shard_sizes

    assert shard_sizes(6, 2) == [3, 3]
    assert shard_sizes(5, 2) == [3, 2]
    assert shard_sizes(1, 2) == [1]  # never an empty shard
    assert shard_sizes(4, 1) == [4]
    assert all(sum(shard_sizes(n, k)) == n for n in range(1, 12) for k in range(1, 5))
