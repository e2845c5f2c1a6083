"""The judge without a kernel: grade cells executed in this process, the learner's functions
answered by :func:`fv_exercises.remote.reply_text` on a namespace that stands in for the kernel's.
(tests/grading_attacks.py grades real submissions in real sandboxed kernels.)"""

from __future__ import annotations

import pytest
import torch
from nbclient.exceptions import DeadKernelError

from fv_exercises import disk_cache, judge, remote, wire
from fv_exercises.judge import RemoteFunction, grade_cell_names, judge_grade_cell
from fv_exercises.reference.task_vectors import find_task_vector

CELL = "check_find_task_vector(find_task_vector, model)\ncheck_find_task_vector(find_task_vector, model, hidden=True)\n"


@pytest.fixture(autouse=True)
def _judge_uses_the_session_model(monkeypatch, model):
    """The judge's own model is the session's (a second copy would only cost time here; the
    graded batches in tests/grading_attacks.py use separate processes)."""
    monkeypatch.setitem(judge._SHARED, "model", model)


kernel = judge.in_process_kernel


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


def test_what_a_sandboxed_kernel_could_not_keep_the_grader_builds_and_keeps(model, monkeypatch, tmp_path):
    """A kernel's read-only cache: the build is noted in UNSAVED; the grader's rebuild_unsaved
    builds it with its own code into its cache, and ignores requests it should not serve."""
    from fv_exercises import heads
    from fv_exercises.grader_cache import rebuild_unsaved
    from fv_exercises.heads import FunctionVectorRecipe

    tiny = FunctionVectorRecipe(ks=(5,), layer_fractions=(0.6,), scales=(2.0,), n_prompts=2,
                                n_scan=1, n_select=2)
    monkeypatch.setattr(disk_cache, "UNSAVED", [])
    monkeypatch.setenv("FV_CACHE_DIR", "/dev/null/read-only")  # no folder can be made there
    heads.function_vector_details(model, "antonym", 3, tiny)
    assert disk_cache.UNSAVED == [("task_scan", "antonym", 3, tiny), ("function_vector", "antonym", 3, tiny)]
    # what crosses the wire from the kernel is what the grader reads
    requests = wire.decode(wire.encode(disk_cache.UNSAVED))
    assert requests == disk_cache.UNSAVED

    # the grader's process has built neither (its in-memory caches forget this tiny recipe)
    heads._FV_CACHE[model].pop(("antonym", 3, tiny))
    heads._SCANS[model].pop(("antonym", 3, tiny.n_prompts, tiny.n_scan, tiny.scan_from))
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    huge = FunctionVectorRecipe(n_prompts=10_000)
    ignored = [("function_vector", "no_such_task", 3, tiny), ("function_vector", "antonym", -1, tiny),
               ("function_vector", "antonym", 3, huge), ("os.system", "antonym", 3, tiny), "junk"]
    assert rebuild_unsaved(model, ignored) == 0
    assert rebuild_unsaved(model, requests, deadline=0.0) == 0  # the grader's time is spent
    assert not (tmp_path / "function_vectors").exists()
    assert rebuild_unsaved(model, requests) == 2
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "function_vectors").glob("*.pt"))
    assert kept == ["function_vector", "task_scan"]


def test_notebook_09s_few_shot_accuracies_are_kept_by_the_grader(model, monkeypatch, tmp_path):
    """Notebook 09's few-shot accuracies are noted when the kernel cannot keep them and rebuilt
    by the grader (every sandboxed kernel computed them again: 140-180 s per submission on a busy
    machine); a request with an unknown or repeated task is ignored."""
    from fv_exercises.grader_cache import rebuild_unsaved
    from fv_exercises.recipe import few_shot_accuracies

    monkeypatch.setattr(disk_cache, "UNSAVED", [])
    monkeypatch.setenv("FV_CACHE_DIR", "/dev/null/read-only")
    in_kernel = few_shot_accuracies(model, ["antonym"])
    assert disk_cache.UNSAVED == [("few_shot", ("antonym",))]
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    ignored = [("few_shot", ("antonym", "antonym")), ("few_shot", ("no_such_task",)),
               ("few_shot", ()), ("few_shot", "antonym")]
    assert rebuild_unsaved(model, ignored) == 0
    assert rebuild_unsaved(model, wire.decode(wire.encode(disk_cache.UNSAVED))) == 1
    kept = [p.name.split("-")[0] for p in (tmp_path / "function_vectors").glob("*.pt")]
    assert kept == ["few_shot"]
    assert few_shot_accuracies(model, ["antonym"]) == in_kernel  # read back from the file
