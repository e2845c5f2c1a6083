"""The kernel's half of a graded call: run one learner function on the judge's inputs.

While a class is graded, the judge (:mod:`fv_exercises.judge`, in the grading process) sends the
sandboxed kernel one line of code per call of a learner's function::

    __import__("fv_exercises.remote").remote.answer(globals(), "find_task_vector", "<payload>")

:func:`answer` decodes the arguments (:mod:`fv_exercises.wire`; ``model`` and ``nn_model`` are
the kernel's own objects), calls the function the way a check cell does
(:func:`fv_exercises.checks.core.call_learner`: hooks left registered and weights edited in place
are repaired and reported), and displays the result, and what the call left in its tensor and
list arguments, as one ``application/x-fv-answer`` output. The judge compares that with the
reference; nothing this module (or a learner who replaced it) displays can do more than supply
numbers that are then checked.
"""

from __future__ import annotations

from typing import Any

MIME = "application/x-fv-answer"
#: Globals of the notebook that travel by name (the judge has its own objects of these names).
SHARED_GLOBALS = ("model", "nn_model")


def _caller(first_arg: Any):
    """``call_nnsight_learner`` for an nnsight model, else ``call_learner``."""
    if "nnsight" in type(first_arg).__module__:
        from fv_exercises.checks.nnsight import call_nnsight_learner

        return call_nnsight_learner
    from fv_exercises.checks.core import call_learner

    return call_learner


def run_call(namespace: dict, name: str, payload: str) -> dict:
    """Call ``namespace[name]`` with the decoded arguments; the reply as a plain dict.

    The reply is ``{"failure": message}`` when the call went wrong in a way a check names
    (not implemented, raised, left a hook, edited weights), else ``{"result": value, "args":
    [argument after the call, ...]}``.
    """
    from fv_exercises.checks.core import CheckFailure
    from fv_exercises.wire import decode

    def resolve(ref: str) -> Any:
        if ref not in SHARED_GLOBALS or ref not in namespace:
            raise LookupError(f"`{ref}` is not defined in the notebook: did its set-up cell run?")
        return namespace[ref]

    try:
        args, kwargs = decode(payload, resolve)
    except LookupError as exc:
        return {"failure": str(exc)}
    fn = namespace.get(name)
    if fn is None:
        return {"failure": f"`{name}` is not defined when its grade cell runs: did its cell raise "
                           "an error, or was it deleted or moved below the grade cell?"}
    try:
        result = _caller(args[0])(fn, name, *args, **kwargs)
    except CheckFailure as exc:
        return {"failure": str(exc)}
    # Arguments go back too: a check asserts that the function left its inputs unchanged.
    return {"result": result, "args": list(args[1:])}


def reply_text(namespace: dict, name: str, payload: str) -> str:
    """:func:`run_call`'s reply, encoded for the wire (the kernel's objects travel by name)."""
    from fv_exercises.wire import encode

    reply = run_call(namespace, name, payload)
    shared = {id(namespace[g]): g for g in SHARED_GLOBALS if g in namespace}
    try:
        return encode(reply, refs=lambda v: shared.get(id(v)))
    except Exception as exc:  # a result the wire cannot carry, e.g. larger than its limit
        return encode({"failure": f"`{name}` returned a value that cannot be graded "
                                  f"({type(exc).__name__}: {str(exc)[:200]})."})


def answer(namespace: dict, name: str, payload: str) -> None:
    """Run the call and display the reply for the judge (one ``application/x-fv-answer``)."""
    from IPython.display import display

    display({MIME: reply_text(namespace, name, payload)}, raw=True)


def unsaved() -> None:
    """Display what this kernel built but could not keep in its read-only disk cache
    (:data:`fv_exercises.disk_cache.UNSAVED`), for the grader to build and keep with its own code."""
    import sys

    from IPython.display import display

    from fv_exercises.wire import encode

    cache = sys.modules.get("fv_exercises.disk_cache")  # not imported: nothing was built
    requests = list(getattr(cache, "UNSAVED", []))[:32]
    display({MIME: encode({"result": requests})}, raw=True)
