"""The instructor's similarity report (fv_exercises.similarity): scores, flags, bad input, HTML.

Fast: a scratch course in tmp_path with hand-written submissions of 01_task_vectors; no model,
no nbgrader run.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from fv_exercises import similarity as sim
from fv_exercises.course import ROOT

NAME = "01_task_vectors"
STUB = "    # YOUR CODE HERE\n    raise NotImplementedError()"

# (a) the reference with names changed, comments and layout rewritten
RENAMED = {
    "find_task_vector": '''
    site = f"blocks.{layer}.hook_resid_post"
    # grab the few-shot run's last state
    _, stored = model.run_with_cache(
        icl_prompt,
        names_filter=lambda n: n == site,
    )
    vec = stored[site][:, -1]
    def patch(x: Tensor, hook) -> Tensor:
        x[:, -1] += vec
        return x
    return model.run_with_hooks(zero_shot_prompt,
                                fwd_hooks=[(site, patch)])''',
    "mean_task_vector": '''
    site = f"blocks.{layer}.hook_resid_post"
    def avg(ps: list[str]) -> Tensor:
        """Mean of the final states."""
        acc = []
        for p in ps:
            _, c = model.run_with_cache(p, names_filter=lambda n: n == site)
            acc.append(c[site][0, -1])
        return torch.stack(acc).mean(0)
    return avg(icl_prompts) - avg(zero_shot_prompts)''',
}

# (b) written independently: hooks added by hand, batched with the attention mask
INDEPENDENT = {
    "find_task_vector": '''
    point = "blocks.%d.hook_resid_post" % layer
    saved = {}
    def grab(act, hook):
        saved["h"] = act[0, act.shape[1] - 1].clone()
    model.add_hook(point, grab)
    try:
        model(icl_prompt)
    finally:
        model.reset_hooks()
    def inject(act, hook):
        out = act.clone()
        out[0, out.shape[1] - 1] = out[0, out.shape[1] - 1] + saved["h"]
        return out
    with model.hooks(fwd_hooks=[(point, inject)]):
        logits = model(zero_shot_prompt)
    return logits''',
    "mean_task_vector": '''
    point = "blocks." + str(layer) + ".hook_resid_post"
    means = []
    for group in (icl_prompts, zero_shot_prompts):
        enc = model.tokenizer(group, return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        final = mask.sum(dim=1) - 1
        grabbed = {}
        def keep(act, hook):
            grabbed["x"] = act.detach()
        model.run_with_hooks(enc["input_ids"], fwd_hooks=[(point, keep)])
        means.append(grabbed["x"][torch.arange(mask.shape[0]), final].mean(dim=0))
    return means[0] - means[1]''',
}

# (c) the course's reference, through an alias in a cell of its own and through importlib
CALLS_REFERENCE = {
    "find_task_vector": "    return answers.find_task_vector(model, icl_prompt, zero_shot_prompt,"
                        " layer)",
    "mean_task_vector": '''
    import importlib
    mod = importlib.import_module("fv_exercises.reference.task_vectors")
    return mod.mean_task_vector(model, icl_prompts, zero_shot_prompts, layer)''',
}

# (d) library equivalents: a name from the set-up cell, and `import ... as ...` in the cell
CALLS_LIBRARY = {
    "find_task_vector": '''
    h = model.run_with_cache(icl_prompt)[1][f"blocks.{layer}.hook_resid_post"][0, -1]
    return last_position_logits(model, [zero_shot_prompt], add={layer: h})[None]''',
    "mean_task_vector": '''
    import fv_exercises.evaluation as ev
    return (ev.last_position_states(model, icl_prompts, layer).mean(0)
            - ev.last_position_states(model, zero_shot_prompts, layer).mean(0))''',
}


def release() -> dict:
    return json.loads((ROOT / "notebooks" / NAME / f"{NAME}.ipynb").read_text())


def filled(bodies: dict[str, str], drop: tuple[str, ...] = (), before: str = "") -> dict:
    """The release notebook with each solution cell's stub replaced by ``bodies[grade_id]``."""
    nb = release()
    cells = []
    for cell in nb["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in drop:
            continue
        if grade_id in bodies:
            source = "".join(cell["source"])
            assert STUB in source
            if before:  # a cell the learner added above the first graded one
                cells.append({"cell_type": "code", "metadata": {}, "source": before,
                              "outputs": [], "execution_count": None})
                before = ""
            cell = {**cell, "source": source.replace(STUB, bodies[grade_id].lstrip("\n"))}
        cells.append(cell)
    return {**nb, "cells": cells}


def submit(course: Path, student: str, content: dict | bytes | str | None) -> None:
    path = course / "submitted" / student / NAME / f"{NAME}.ipynb"
    path.parent.mkdir(parents=True)
    if isinstance(content, dict):
        path.write_text(json.dumps(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(ROOT / "solutions" / NAME, root / "solutions" / NAME)
    submit(root, "alice", filled(RENAMED))
    submit(root, "bob", filled(INDEPENDENT))
    submit(root, "carol", filled(CALLS_REFERENCE,
                                 before="import fv_exercises.reference.task_vectors as answers"))
    submit(root, "dave", filled(CALLS_LIBRARY))
    submit(root, "eve", '{"cells": [ not json')
    submit(root, "frank", b'{"cells": [], "note": "\xff\xfe"}')
    submit(root, "grace", None)  # the folder, no notebook
    script = {"find_task_vector": RENAMED["find_task_vector"] + '\n    "<script>alert(1)</script>"'}
    submit(root, "<mallory>", filled(script, drop=("mean_task_vector",)))
    return root


@pytest.fixture(scope="module")
def report(course) -> sim.Report:
    return sim.build_report(course, NAME)


def score(report: sim.Report, a: str, b: str) -> float | None:
    return next(p.overall for p in report.pairs if {p.a, p.b} == {a, b})


def test_renamed_copy_scores_high_and_independent_work_low(report):
    copied, independent = score(report, "alice", sim.REFERENCE), score(report, "bob", sim.REFERENCE)
    assert copied >= 0.9
    assert independent <= copied - 0.4, (copied, independent)
    against = [p.b for p in report.pairs if p.a == sim.REFERENCE]  # ranked, best first
    assert against.index("alice") < against.index("bob") < against.index("carol")
    assert set(against[:2]) == {"alice", "<mallory>"}  # mallory's one cell is alice's
    peers = [(p.a, p.b) for p in report.pairs if p.a != sim.REFERENCE]
    assert peers[0] == ("<mallory>", "alice")


def test_per_function_scores_and_a_deleted_cell(report):
    pair = next(p for p in report.pairs if {p.a, p.b} == {"alice", "<mallory>"})
    assert pair.functions["find_task_vector"] >= 0.9
    assert pair.functions["mean_task_vector"] is None  # mallory deleted it
    mallory = next(s for s in report.students if s.student == "<mallory>")
    assert mallory.problems == ["solution cell(s) deleted: mean_task_vector"]


def test_calls_to_the_course_implementation_are_flagged(report):
    REF = "fv_exercises.reference.task_vectors"
    found = {(f.student, f.function, f.kind, f.detail) for s in report.students for f in s.flags}
    assert found == {
        ("carol", "find_task_vector", "reference", f"{REF}.find_task_vector"),
        ("carol", "mean_task_vector", "reference", f"{REF}.mean_task_vector"),
        ("dave", "find_task_vector", "equivalent", "fv_exercises.evaluation.last_position_logits"),
        ("dave", "mean_task_vector", "equivalent", "fv_exercises.evaluation.last_position_states"),
    }


def test_bad_notebooks_are_listed(report):
    problems = {s.student: s.problems for s in report.students if s.problems}
    assert "not valid JSON" in problems["eve"][0]
    assert "not UTF-8" in problems["frank"][0]
    assert problems["grace"] == [f"no {NAME}.ipynb in the submission"]
    compared = {p.a for p in report.pairs} | {p.b for p in report.pairs}
    assert not compared & {"eve", "frank", "grace"}


def test_command_prints_tables_and_writes_escaped_html(course, monkeypatch, capsys):
    monkeypatch.chdir(course)  # course_dir(): the folder with nbgrader_config.py
    assert sim.main([NAME, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Against the reference (top 3)" in out and "not valid JSON" in out
    lines = out.splitlines()
    top = [l.split() for l in lines[lines.index("Against the reference (top 3)") + 2:][:3]]
    assert ["alice", "1.00", "1.00", "1.00"] in top and top[2][0] == "bob"
    page = (course / "reports" / f"similarity_{NAME}.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;mallory&gt;" in page
    assert "<script" not in page and "<mallory>" not in page
    other = course / "elsewhere.html"
    assert sim.main([NAME, "--html", str(other)]) == 0 and other.is_file()


@pytest.mark.parametrize("source, kind, name", [
    ("from fv_exercises.reference.task_vectors import find_task_vector as f\nf()",
     "reference", "fv_exercises.reference.task_vectors.find_task_vector"),
    ("import fv_exercises\nfv_exercises.reference.task_vectors.mean_task_vector()",
     "reference", "fv_exercises.reference.task_vectors.mean_task_vector"),
    ("__import__('fv_exercises').reference.task_vectors.find_task_vector()", "reference",
     "fv_exercises.reference.task_vectors.find_task_vector"),
    ("m = __import__('fv_exercises.checks.task_vectors', fromlist=['x'])\nm.add_state_variant()",
     "reference", "fv_exercises.checks.task_vectors.add_state_variant"),
    ("from importlib import import_module\nimport_module('fv_exercises.evaluation').mean_resid_post()",
     "equivalent", "fv_exercises.evaluation.mean_resid_post"),
    ("from fv_exercises import task_vectors\ngetattr(task_vectors, 'task_vectors_all_layers')()",
     "equivalent", "fv_exercises.task_vectors.task_vectors_all_layers"),
    ("from fv_exercises.tasks import format_prompt", "import", "fv_exercises.tasks.format_prompt"),
    ("import importlib\nimportlib.import_module('fv_' + 'exercises')", "dynamic",
     "exec, eval, or an import by a computed name"),
    ("exec('from fv_exercises.reference.task_vectors import mean_task_vector')", "dynamic",
     "exec, eval, or an import by a computed name"),
])
def test_import_forms(source, kind, name):
    code = "def mean_task_vector(model):\n" + "\n".join("    " + l for l in source.splitlines())
    flags = sim.flags("x", "mean_task_vector", code, sim.parse(code), {})
    assert [(f.kind, f.detail) for f in flags] == [(kind, name)]


def test_star_imports_and_exec():
    code = "def mean_task_vector(model):\n    return find_task_vector(model)"
    star = {"*": "fv_exercises.reference.task_vectors"}
    assert [(f.kind, f.detail) for f in sim.flags("x", "mean_task_vector", code, sim.parse(code), star)
            ] == [("reference", "fv_exercises.reference.task_vectors.find_task_vector")]
    code = "def f():\n    exec('x = 1')"
    assert [f.kind for f in sim.flags("x", "f", code, sim.parse(code), {})] == ["dynamic"]


def test_a_local_name_hides_an_imported_one():
    code = "def mean_task_vector(model, mean_resid_post):\n    return mean_resid_post(model)"
    bindings = {"mean_resid_post": "fv_exercises.evaluation.mean_resid_post"}
    assert sim.flags("x", "mean_task_vector", code, sim.parse(code), bindings) == []


def test_references_of_every_assignment_are_not_flagged():
    """The table of equivalents does not flag the reference solutions themselves."""
    for source in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        cells, problem = sim.read_cells(source)
        reference = sim.load(sim.REFERENCE, cells)
        assert not problem and reference.code and reference.flags == [], source.name


def test_equivalents_name_real_functions():
    defined: dict[str, set[str]] = {}
    for path in (ROOT / "fv_exercises").glob("*.py"):
        tree = ast.parse(path.read_text())
        defined[f"fv_exercises.{path.stem}"] = {n.name for n in tree.body if isinstance(
            n, (ast.FunctionDef, ast.ClassDef))}
    for function, names in sim.EQUIVALENTS.items():
        for name in names:
            module, attr = name.rsplit(".", 1)
            assert attr == "*" and module in defined or attr in defined.get(module, ()), name


def test_normalising_ignores_names_comments_docstrings_and_layout():
    a = 'def f(x):\n    """Doc."""\n    y = x + 1  # note\n    return [y,\n            y * 2]\n'
    b = "def g(value):\n    out = value + 1\n    return [out, out * 2]\n"
    _, (sa, sb), _ = sim.compare_files(sim.fingerprint(sim.normalise(a)),
                                       sim.fingerprint(sim.normalise(b)))
    assert sa == sb == 1.0
