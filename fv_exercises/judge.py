"""Autograding in which the verdict comes from a process the submission's code never ran in.

``nbgrader autograde`` (configured in ``nbgrader_config.py``) runs :class:`SecureExecute` in
place of its ``Execute`` step. For every submission it starts a kernel, in the grading sandbox
(:mod:`fv_exercises.sandbox`) unless told otherwise, and walks the notebook in order:

- **every cell except a grade cell** runs in that kernel, as nbgrader would run it: the learner's
  solution cells, exploration cells, the set-up cell;
- **a grade cell** never runs there. Its source is read from the gradebook (what
  ``generate_assignment`` stored, hidden tests included; the submission's copy is ignored) and
  executed *here*, in the grading process, with the course's own ``check_*`` functions and its
  own models. Each learner function the cell names (``find_task_vector``) is a
  :class:`RemoteFunction`: calling it sends the arguments to the kernel, which runs the learner's
  function on them (:func:`fv_exercises.remote.answer`) and sends back the result as data
  (:mod:`fv_exercises.wire`). The comparison with the reference, the message naming a mistake and
  the pass/fail that nbgrader scores all happen here; the grade cell's outputs are written from
  them.

So a submission that redefines ``check_*``, monkeypatches ``fv_exercises``, ``torch``, builtins or
IPython, prints "all good", exits, or swaps ``sys.modules`` changes what its own kernel does, not
what the judge concludes: its functions earn points only by returning what the reference returns
on the judge's inputs.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import io
import os
import pkgutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbgrader import utils
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer

from fv_exercises import remote, wire
from fv_exercises.checks.core import CheckFailure, RunsElsewhere
from fv_exercises.sandbox import SandboxedKernelManager, SandboxSpec, check_available

_MAX_MESSAGE = 4000  # characters of a failure message that come from the kernel


# --------------------------------------------------------------------------------------------
# The judge's own objects: models and check functions
# --------------------------------------------------------------------------------------------

_SHARED: dict[str, Any] = {}


def shared_global(name: str) -> Any:
    """The judge's own ``model`` / ``nn_model`` (loaded once per grading process)."""
    if name not in _SHARED:
        if name == "model":
            from fv_exercises.model import load_model

            _SHARED[name] = load_model()
        elif name == "nn_model":
            from fv_exercises.nnsight_model import load_nnsight_model

            _SHARED[name] = load_nnsight_model()
        else:
            raise KeyError(name)
    return _SHARED[name]


def check_function(name: str) -> Callable:
    """``fv_exercises.checks.<module>.<name>``: the course's own check of that name."""
    import fv_exercises.checks as checks

    for info in pkgutil.iter_modules(checks.__path__):
        module = importlib.import_module(f"fv_exercises.checks.{info.name}")
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    raise CheckFailure(f"the grade cell calls `{name}`, which is not a check of this course")


# --------------------------------------------------------------------------------------------
# Calling a learner's function in the kernel
# --------------------------------------------------------------------------------------------


class CallTimedOut(CheckFailure):
    """A learner's function ran past the per-cell time limit (nbgrader's ``Execute.timeout``)."""


class RemoteFunction(RunsElsewhere):
    """A learner's function that lives in the sandboxed kernel, callable from the judge.

    ``run(code) -> outputs`` executes one line in the kernel and returns its Jupyter outputs.
    Arguments that are the judge's ``model`` / ``nn_model`` travel by name (the kernel uses its
    own); tensors and lists the function changed in place are changed here too, so a check that
    the function leaves its inputs alone still sees it.
    """

    def __init__(self, name: str, run: Callable[[str], list], shared: dict[str, Any]):
        self.__name__ = name
        self._run, self._shared = run, shared

    def __call__(self, *args, **kwargs):
        by_id = {id(v): k for k, v in self._shared.items()}
        payload = wire.encode((list(args), kwargs), refs=lambda v: by_id.get(id(v)))
        code = (f'__import__("fv_exercises.remote").remote.answer(globals(), '
                f'{self.__name__!r}, {payload!r})')
        try:
            outputs = self._run(code)
        except CellTimeoutError:  # the call ran past the limit, and the interrupt went unanswered
            outputs = [{"output_type": "error", "ename": "CellTimeoutError"}]
        except DeadKernelError:
            raise CheckFailure(f"`{self.__name__}` could not be graded: the notebook's kernel died "
                               "(it ran out of memory, or the code ended the process).") from None
        except Exception as exc:  # e.g. a message the kernel's side garbled (bad signature)
            raise CheckFailure(f"`{self.__name__}` could not be graded: no readable reply from the "
                               f"notebook's kernel ({type(exc).__name__}).") from None
        if any(o.get("ename") == "CellTimeoutError" for o in outputs):
            raise CallTimedOut(f"`{self.__name__}` did not return within the time limit of a "
                               "cell: an endless loop, or far more work than the exercise needs.")
        reply = _reply(outputs, self.__name__, self._shared)
        if "failure" in reply:
            raise CheckFailure(str(reply["failure"])[:_MAX_MESSAGE])
        _copy_back(list(args), reply.get("args"))
        return reply.get("result")


def _reply(outputs: list, name: str, shared: dict[str, Any]) -> dict:
    """The kernel's reply among a call's outputs, or a failure that says why there is none."""
    for out in reversed(outputs):
        text = out.get("data", {}).get(remote.MIME) if out.get("output_type") == "display_data" else None
        if text is not None:
            try:
                reply = wire.decode(text, resolve=lambda ref: shared[ref] if ref in shared else None)
            except wire.WireError as exc:
                return {"failure": f"`{name}` could not be graded: {exc}."}
            if isinstance(reply, dict) and ("failure" in reply or "result" in reply):
                return reply
            return {"failure": f"`{name}` could not be graded: an unexpected reply."}
    for out in outputs:
        if out.get("output_type") == "error":
            return {"failure": f"`{name}` could not be graded: the kernel raised "
                               f"{str(out.get('ename'))[:100]} when it was called "
                               f"({str(out.get('evalue'))[:300]})."}
    return {"failure": f"`{name}` could not be graded: the kernel gave no result (timed out, or "
                       "the notebook replaced the course's grading helpers)."}


def _copy_back(args: list, after: Any) -> None:
    """Apply in-place changes the kernel's call made to tensor and list arguments."""
    import torch

    if not isinstance(after, list) or len(after) != len(args) - 1:
        return
    for before, now in zip(args[1:], after):
        if isinstance(before, torch.Tensor) and isinstance(now, torch.Tensor) \
                and now.shape == before.shape and not torch.equal(now.to(before.dtype), before):
            with torch.no_grad():
                before.copy_(now.to(before.dtype))
        elif type(before) is list and type(now) is list and now != before:
            before[:] = now


def in_process_kernel(namespace: dict[str, Any]) -> Callable[[str], list]:
    """``run(code)`` answered as the sandboxed kernel would, from ``namespace`` in this process.

    For tests: a grade cell judged with it goes through everything but the kernel itself (the
    wire both ways, :func:`fv_exercises.remote.run_call` on the learner's side).
    """
    def run(code: str) -> list:
        call = ast.parse(code).body[0].value
        name, payload = (ast.literal_eval(a) for a in call.args[1:])
        return [nbformat.v4.new_output("display_data", data={
            remote.MIME: remote.reply_text(namespace, name, payload)})]

    return run


def through_the_wire(fn: Callable, model: Any, name: str) -> RemoteFunction:
    """``fn``, as the notebook's ``name``, called the way the judge calls a learner's function
    (for tests; see above)."""
    shared = {"nn_model" if "nnsight" in type(model).__module__ else "model": model}
    return RemoteFunction(name, in_process_kernel({**shared, name: fn}), shared)


# --------------------------------------------------------------------------------------------
# Judging one grade cell
# --------------------------------------------------------------------------------------------


def grade_cell_names(source: str) -> list[str]:
    """Names a grade cell's source reads (``check_x``, ``x``, ``model``), in order, once each."""
    seen: dict[str, None] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            seen.setdefault(node.id, None)
    return list(seen)


def judge_namespace(source: str, run: Callable[[str], list]) -> dict[str, Any]:
    """Globals for executing a grade cell in the judge: checks, models, remote functions."""
    names = [n for n in grade_cell_names(source) if not hasattr(builtins, n)]
    shared = {n: shared_global(n) for n in names if n in remote.SHARED_GLOBALS}
    ns: dict[str, Any] = {"__name__": "__grade_cell__", **shared}
    for n in names:
        if n.startswith("check_"):
            ns[n] = check_function(n)
        elif n not in ns:
            ns[n] = RemoteFunction(n, run, shared)
    return ns


def judge_grade_cell(source: str, run: Callable[[str], list], label: str) -> list:
    """Execute a trusted grade cell here; its outputs as nbgrader will score them.

    Passing: the checks' printed lines (stdout). Failing: one ``error`` output (nbgrader scores
    the cell zero) whose message is the check's.
    """
    out = io.StringIO()
    error: BaseException | None = None
    try:
        ns = judge_namespace(source, run)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            exec(compile(source, f"<{label}>", "exec"), ns)
    except Exception as exc:  # CheckFailure, or anything the judge could not do
        error = exc
    outputs = []
    if out.getvalue():
        outputs.append(nbformat.v4.new_output("stream", name="stdout", text=out.getvalue()))
    if error is not None:
        # nbgrader's name for a timeout, which `course autograde` reports as "(timed out)"
        ename = "CellTimeoutError" if isinstance(error, CallTimedOut) else type(error).__name__
        message = str(error)
        lines = [f"{ename}: {message}"] if isinstance(error, CheckFailure) else \
            traceback.format_exception_only(type(error), error)
        outputs.append(nbformat.v4.new_output("error", ename=ename, evalue=message,
                                              traceback=[line.rstrip("\n") for line in lines]))
    return outputs


# --------------------------------------------------------------------------------------------
# The nbgrader preprocessor
# --------------------------------------------------------------------------------------------


def _now() -> str:
    """The current time as nbclient writes it into a cell's ``metadata.execution``."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class SecureExecute(Execute):
    """nbgrader's ``Execute``, with grade cells judged outside the kernel, and the kernel sandboxed.

    Configure as a replacement for ``Execute`` in ``Autograde.autograde_preprocessors``.
    """

    sandbox = Bool(True, help="Run each submission's kernel in the bubblewrap sandbox.").tag(config=True)
    submission_timeout = Integer(
        1800, help="Seconds one submission may take in all; later cells are not run.").tag(config=True)

    def preprocess(self, nb, resources, km=None):
        if self.sandbox:
            check_available()
        from fv_exercises.model import convert_embedded

        convert_embedded()  # the sandbox reads the model cache but cannot write it
        self._trusted = self._trusted_grade_cells(resources)
        self._deadline = time.monotonic() + self.submission_timeout
        self._dead = False
        return super().preprocess(nb, resources, km=km)

    @staticmethod
    def _trusted_grade_cells(resources) -> dict[str, str]:
        """``{grade_id: source}`` of the assignment's code grade cells, from the gradebook."""
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            try:
                notebook = gb.find_notebook(info["notebook"], info["assignment"])
            except MissingEntry:
                return {}
            return {c.name: c.source for c in notebook.source_cells
                    if c.cell_type == "code" and c.name in {g.name for g in notebook.grade_cells}}

    def create_kernel_manager(self):
        if not self.sandbox:
            return super().create_kernel_manager()
        from fv_exercises.model import cache_root

        spec = SandboxSpec(
            submission_dir=Path(self.resources.get("metadata", {}).get("path") or "."),
            cache_dir=cache_root(),
            env={"NBGRADER_EXECUTION": os.environ.get("NBGRADER_EXECUTION", "autograde")})
        manager = type("SubmissionKernelManager", (SandboxedKernelManager,), {"spec": spec})
        self.km = manager(kernel_name=self.kernel_name or "python3", config=self.config)
        return self.km

    def _run_in_kernel(self, code: str) -> list:
        """Outputs of ``code`` run in the kernel, as a cell that is not part of the notebook."""
        cell = nbformat.v4.new_code_cell(code)
        self.nb.cells.append(cell)  # nbclient stores the executed cell back at its index
        try:
            self.execute_cell(cell, len(self.nb.cells) - 1, store_history=False)
        finally:
            self.nb.cells.pop()
        return cell.outputs

    def preprocess_cell(self, cell, resources, index):
        result = self._preprocess_cell(cell, resources, index)
        if index == len(self.nb.cells) - 1 and not self._dead:
            self._keep_what_the_kernel_built()
        return result

    def _keep_what_the_kernel_built(self) -> None:
        """Build and keep, here, the function vectors the kernel built but could not keep (its
        disk cache is read-only), so that the next submission's kernel reads them.

        Without it every sandboxed kernel builds them again (notebooks 04-06 and 09 took twice
        as long to grade). The kernel only names what it built; this process builds it with its
        own code and model (:func:`fv_exercises.grader_cache.rebuild_unsaved`), so a submission cannot
        put anything into the cache that other submissions read.
        """
        if time.monotonic() > self._deadline:
            return
        try:
            outputs = self._run_in_kernel('__import__("fv_exercises.remote").remote.unsaved()')
            reply = _reply(outputs, "unsaved", {})
            if reply.get("result"):
                from fv_exercises.grader_cache import rebuild_unsaved

                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    # at most 5 minutes per submission (the 8 vectors of notebook 04 took ~4)
                    rebuild_unsaved(shared_global("model"), reply["result"],
                                    deadline=min(self._deadline, time.monotonic() + 300))
        except Exception as exc:  # never a reason to lose a grade: only the next one is slower
            self.log.warning("the function vectors this kernel built were not kept: %s", exc)

    def _preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        judged = utils.is_grade(cell) and not utils.is_solution(cell) and grade_id in self._trusted
        if time.monotonic() > self._deadline or self._dead:
            why = "the submission's time budget is spent" if not self._dead else "the kernel died"
            cell.outputs = [nbformat.v4.new_output(
                "error", ename="NotRun", evalue=why, traceback=[f"Not run: {why}."])]
            return cell, resources
        if judged:
            start = _now()
            cell.outputs = judge_grade_cell(self._trusted[grade_id], self._run_in_kernel,
                                            f"grade cell {grade_id}")
            cell.execution_count = None
            # nbclient's timing fields, which `course autograde` and the grading bench read
            cell.metadata["execution"] = {"iopub.execute_input": start,
                                          "shell.execute_reply": _now()}
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._dead = True
            cell.outputs = [nbformat.v4.new_output(
                "error", ename="DeadKernelError", evalue="the kernel died",
                traceback=["The kernel died while running this cell (out of memory, or the "
                           "code ended the process)."])]
        except CellTimeoutError:  # no reply or no output in time; nbgrader would fail the notebook
            cell.outputs.append(nbformat.v4.new_output(
                "error", ename="CellTimeoutError", evalue="no reply from the kernel in time",
                traceback=["CellTimeoutError: the kernel did not answer in time."]))
        return cell, resources
