"""The judge without a kernel: grade cells executed in this process, the learner's functions
answered by :func:`fv_exercises.remote.reply_text` on a namespace that stands in for the kernel's.
(tests/test_grading_attacks.py grades real submissions in real sandboxed kernels.)"""

from __future__ import annotations

import ast

import nbformat
import pytest
import torch
from nbclient.exceptions import DeadKernelError

from fv_exercises import judge, remote, wire
from fv_exercises.judge import RemoteFunction, grade_cell_names, judge_grade_cell
from fv_exercises.reference.task_vectors import find_task_vector

CELL = "check_find_task_vector(find_task_vector, model)\ncheck_find_task_vector(find_task_vector, model, hidden=True)\n"


@pytest.fixture(autouse=True)
def _judge_uses_the_session_model(monkeypatch, model):
    """The judge's own model is the session's (a second copy would only cost time here; the
    graded batches in tests/test_grading_attacks.py use separate processes)."""
    monkeypatch.setitem(judge._SHARED, "model", model)


def kernel(namespace: dict):
    """``run(code)`` as the sandboxed kernel would answer it, from ``namespace``."""
    def run(code: str) -> list:
        call = ast.parse(code).body[0].value
        name, payload = (ast.literal_eval(a) for a in call.args[1:])
        return [nbformat.v4.new_output("display_data",
                                       data={remote.MIME: remote.reply_text(namespace, name, payload)})]
    return run


def _error(outputs):
    return next((o for o in outputs if o.output_type == "error"), None)


def test_the_reference_passes_and_prints_the_checks_lines(model):
    outputs = judge_grade_cell(CELL, kernel({"model": model, "find_task_vector": find_task_vector}), "t")
    assert _error(outputs) is None, _error(outputs)
    assert "matches the reference" in outputs[0].text


def test_a_wrong_function_fails_with_the_checks_message(model):
    def adds_nothing(model, icl, zero, layer):
        return model(zero)

    err = _error(judge_grade_cell(CELL, kernel({"model": model, "find_task_vector": adds_nothing}), "t"))
    assert err.ename == "CheckFailure" and "no vector was added at all" in err.evalue


def test_a_missing_function_and_a_silent_kernel_fail_clearly(model):
    err = _error(judge_grade_cell(CELL, kernel({"model": model}), "t"))
    assert "is not defined when its grade cell runs" in err.evalue
    err = _error(judge_grade_cell(CELL, lambda code: [], "t"))
    assert "the kernel gave no result" in err.evalue


@pytest.mark.parametrize("outputs, message", [
    ([{"output_type": "display_data", "data": {remote.MIME: "garbage"}}], "could not be graded"),
    ([{"output_type": "display_data", "data": {remote.MIME: wire.encode([1, 2])}}], "unexpected reply"),
    ([{"output_type": "error", "ename": "CellTimeoutError", "evalue": ""}], "time limit"),
    ([{"output_type": "error", "ename": "KeyboardInterrupt", "evalue": ""}], "kernel raised KeyboardInterrupt"),
])
def test_what_a_kernel_sends_back_is_only_data(model, outputs, message):
    err = _error(judge_grade_cell(CELL, lambda code: outputs, "t"))
    assert err is not None and message in err.evalue, err
    if message == "time limit":
        assert err.ename == "CellTimeoutError"  # what `course autograde` reports as timed out


def test_a_dead_kernel_is_a_failure_not_a_crash(model):
    def run(code):
        raise DeadKernelError("gone")

    assert "kernel died" in _error(judge_grade_cell(CELL, run, "t")).evalue


def test_in_place_changes_to_arguments_come_back(model):
    def scales(model, vector):
        vector.mul_(2)
        return vector.sum()

    fn = RemoteFunction("scales", kernel({"model": model, "scales": scales}), {"model": model})
    v = torch.ones(3)
    assert float(fn(model, v)) == 6.0 and torch.equal(v, torch.full((3,), 2.0))


def test_grade_cell_names():
    assert grade_cell_names(CELL) == ["check_find_task_vector", "find_task_vector", "model"]
