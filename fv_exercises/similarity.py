"""The instructor's similarity report: how alike submissions' graded functions are, and which
graded functions call the course's own implementation instead of computing the result.

``python -m fv_exercises.course similarity ASSIGNMENT`` compares the solution cells of every
``submitted/<student>/<assignment>/<assignment>.ipynb`` with each other and with the reference
(``solutions/<assignment>/<assignment>.ipynb``), prints ranked tables and writes an HTML page with
the top pairs' code side by side. The scores are for the instructor to read, never a grade.

How alike: each code solution cell is normalised (docstrings and comments dropped, layout redone
by ``ast.unparse``), then fingerprinted by ``copydetect`` (MOSS's winnowing of k-grams of the
pygments token stream, every identifier replaced by one placeholder). copydetect 0.5.0 is a small
pure-Python wheel whose dependencies (numpy, matplotlib, jinja2, pygments, tqdm) the course
installs already. What the release gives (signature, stub) is boilerplate that counts for nobody.
A cell's score is the larger of the two shares of its code found in the other (padding a copy
does not hide it); overall pools the functions both answered. Written answers (markdown solution
cells) get ``difflib``'s word-sequence ratio, apart. Unreadable or missing notebooks and deleted
solution cells are listed, not compared.

Calls to the course's own implementation: ``ast`` resolves, in each graded cell, the names bound
by imports above it and in it (``import x as y``, ``from x import y``, ``__import__("x")``,
``importlib.import_module("x")``, ``getattr(m, "y")``, ``from m import *``), and lists uses of
``fv_exercises.reference`` or ``fv_exercises.checks``, of that function's library equivalents
(:data:`EQUIVALENTS`), any ``fv_exercises`` import in the cell, ``exec``/``eval`` and imports by a
computed name.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import html
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from copydetect import CodeFingerprint, compare_files, defaults

from fv_exercises.autograding import course_dir, notebook_path, submitted_students

REFERENCE = "(reference)"
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
STUB = "raise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"  # nbgrader's ClearSolutions.text_stub
K, WINDOW = defaults.NOISE_THRESHOLD, defaults.GUARANTEE_THRESHOLD - defaults.NOISE_THRESHOLD + 1
COURSE_OWN = ("fv_exercises.reference", "fv_exercises.checks")  # the graders' own results

_STATES = ("evaluation.last_position_states evaluation.last_position_resid_post "
           "evaluation.mean_resid_post task_vectors.* recipe.residual_task_vector "
           "sycophancy.last_states sycophancy.mean_difference")
#: Per graded function: the course's library functions (``fv_exercises.`` left out; ``.*``: all of
#: a module) that compute its result or its core. Keep in step with fv_exercises/*.py.
EQUIVALENTS: dict[str, tuple[str, ...]] = {fn: tuple(f"fv_exercises.{n}" for n in names.split())
                                           for fn, names in {
    "find_task_vector": "evaluation.last_position_logits evaluation.add_at_positions_hook "
                        "evaluation.last_position_states evaluation.last_position_resid_post",
    "mean_task_vector": _STATES,
    "find_task_layer": "evaluation.layer_sweep recipe.steered_top1 recipe.steered_scores",
    "find_task_heads": "heads.head_effects heads.head_effects_naive heads.attribution_head_effects "
                       "heads.universal_head_effects heads.task_scan",
    "average_function_vector": "heads.function_vector heads.head_outputs_from_z heads.mean_head_z "
                               "heads.last_position_z heads.function_vector_details "
                               "heads.function_vector_for_task arithmetic.head_output_sums",
    "decode_vector": "",
    "ablate_function_vector": "ablation.project_out ablation.ablated_correct sycophancy.ablation "
                              "nnsight_model.tl_project_out nnsight_model.tl_last_logits_projected",
    "generate_with_function_vector": "generation.generate generation.generate_tokens "
                                     "generation.generate_conditions generation.at_last_position "
                                     "nnsight_model.tl_generate_with_vector",
    "nnsight_task_vector_logits": "nnsight_model.nnsight_last_logits nnsight_model.nnsight_hidden_states "
                                  "evaluation.last_position_logits",
    "nnsight_generate_with_vector": "nnsight_model.nnsight_generate nnsight_model.tl_generate_with_vector "
                                    "generation.generate generation.generate_tokens",
    "sycophancy_vector": _STATES,
    "steered_agreement": "sycophancy.run_prompts sycophancy.steer_hook sycophancy.steering "
                         "sycophancy.evaluate sycophancy.sweep_strengths",
    "extract_function_vector": _STATES,
    "test_function_vector": "evaluation.top1_accuracy evaluation.top1_correct recipe.steered_top1 "
                            "evaluation.last_position_logits evaluation.add_at_positions_hook "
                            "recipe.steered_scores",
    "find_minimal_heads": "exercises.projections heads.top_heads",
}.items()}


@dataclass
class Flag:
    """A graded cell that uses the course's own implementation (or imports the course)."""

    student: str
    function: str
    kind: str  # "reference", "equivalent", "import", "dynamic", "unparsed"
    detail: str


@dataclass
class Submission:
    """One notebook's graded cells: ``{grade_id: source}`` of code and of written answers."""

    student: str
    code: dict[str, str] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)


@dataclass
class Pair:
    """Similarity of two submissions: overall (code), per graded function, per written answer."""

    a: str
    b: str
    overall: float | None
    functions: dict[str, float | None]
    answers: dict[str, float | None]


@dataclass
class Report:
    """Everything the tables and the HTML page show."""

    assignment: str
    reference: Submission | None
    students: list[Submission]
    pairs: list[Pair]  # ranked, best first
    scorer: Scorer

    @property
    def functions(self) -> list[str]:
        """The graded functions (code solution cells) compared."""
        return sorted({f for p in self.pairs for f in p.functions})


# --- Reading notebooks (untrusted: plain JSON, every field checked) ---


def read_cells(path: Path) -> tuple[list[dict], str]:
    """The cells of the notebook at ``path`` and ``""``, or ``[]`` and why it cannot be read."""
    if not path.is_file():
        return [], f"no {path.name} in the submission"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return [], f"{path.name} is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return [], f"{path.name} is not valid JSON (line {exc.lineno})"
    except (OSError, RecursionError) as exc:
        return [], f"{path.name} cannot be read: {type(exc).__name__}"
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        return [], f"{path.name} is not a notebook (no list of cells)"
    return [c for c in cells if isinstance(c, dict)], ""


def _source(cell: dict) -> str:
    """A cell's text (a string or, as on disk, a list of lines)."""
    src = cell.get("source", "")
    return "".join(s for s in src if isinstance(s, str)) if isinstance(src, list) else str(src)


def _grading(cell: dict) -> tuple[str, bool]:
    """``(grade_id, is a solution cell)`` from the cell's nbgrader metadata."""
    meta = cell.get("metadata")
    meta = meta.get("nbgrader") if isinstance(meta, dict) else None
    if not isinstance(meta, dict):
        return "", False
    return str(meta.get("grade_id", "")), meta.get("solution") is True


def without_markers(source: str) -> str:
    """``source`` without its ``### BEGIN/END SOLUTION`` lines (the reference as learners see it)."""
    return "\n".join(l for l in source.splitlines() if l.strip() not in MARKERS)


def template(source: str) -> str:
    """What the release gives for a code solution cell: the solution region replaced by the stub
    (the whole cell when it has no markers, as nbgrader's ``ClearSolutions`` does)."""
    if MARKERS[0] not in source:
        return "# YOUR CODE HERE\n" + STUB
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == MARKERS[0]:
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif line.strip() == MARKERS[1]:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def load(student: str, cells: list[dict], problem: str = "", expected: list[str] = ()) -> Submission:
    """The graded cells of one notebook (``problem``: why it could not be read), with the flags
    of its code cells; ``expected``: the grade ids of the reference's solution cells."""
    sub = Submission(student, problems=[problem] if problem else [])
    bindings: dict[str, str] = {}
    for cell in cells:
        grade_id, solution = _grading(cell)
        source = without_markers(_source(cell)) if student == REFERENCE else _source(cell)
        if cell.get("cell_type") != "code":
            if solution:
                sub.text.setdefault(grade_id, source)
            continue
        tree = parse(source)
        if solution and grade_id not in sub.code:
            sub.code[grade_id] = source
            sub.flags += flags(student, grade_id, source, tree, bindings)
        if tree is not None:
            bindings = {**bindings, **imports(tree)}
            for node in tree.body:  # a later top-level definition hides an imported name
                for name in _defined(node):
                    bindings.pop(name, None)
    missing = [g for g in expected if g not in sub.code and g not in sub.text]
    if cells and missing:
        sub.problems.append("solution cell(s) deleted: " + ", ".join(missing))
    return sub


def _defined(node: ast.stmt) -> list[str]:
    """Names a top-level statement binds other than by an import."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign) and _dynamic_import(node.value, {}) is None:
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


# --- Calls to the course's own implementation ---


def parse(source: str) -> ast.Module | None:
    """``source`` parsed, IPython magics (``%time``, ``!pip``) commented out; ``None`` if invalid."""
    try:
        return ast.parse(re.sub(r"^(\s*)([%!])", r"\1#\2", source, flags=re.M))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _dynamic_import(node: ast.AST, bindings: dict[str, str]) -> str | None:
    """The module ``__import__("m")`` or ``importlib.import_module("m")`` returns; ``"?"`` when
    the name is computed; ``None`` when ``node`` is not such a call."""
    if not isinstance(node, ast.Call):
        return None
    func = _chain(node.func, {**bindings, "__import__": "__import__", "importlib": "importlib"})
    if func not in ("__import__", "builtins.__import__", "importlib.import_module"):
        return None
    arg = node.args[0] if node.args else None
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return "?"
    fromlist = len(node.args) > 3 or any(k.arg == "fromlist" for k in node.keywords)
    return arg.value if func.endswith("import_module") or fromlist else arg.value.split(".")[0]


def _chain(node: ast.AST, bindings: dict[str, str]) -> str | None:
    """The qualified name of ``a.b.c``, ``getattr(a, "b")`` or ``__import__("m").b``, if known."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            parts.append(node.args[1].value)
            node = node.args[0]
        else:
            break
    base = bindings.get(node.id) if isinstance(node, ast.Name) else _dynamic_import(node, bindings)
    return ".".join([base, *reversed(parts)]) if base and base != "?" else None


def imports(tree: ast.AST) -> dict[str, str]:
    """Names bound by imports anywhere in ``tree``: ``{local name: qualified name}``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.update({a.asname or a.name: f"{node.module}.{a.name}" if a.name != "*"
                        else node.module for a in node.names})  # ``*``: only the last is kept
        elif isinstance(node, (ast.Assign, ast.NamedExpr)):
            module = _dynamic_import(node.value, out)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if module and module != "?":
                out.update({t.id: module for t in targets if isinstance(t, ast.Name)})
    return out


def classify(name: str, function: str) -> str:
    """``"reference"``, ``"equivalent"`` (for ``function``) or ``""`` for a qualified name."""
    if any(name == p or name.startswith(p + ".") for p in COURSE_OWN):
        return "reference"
    for e in EQUIVALENTS.get(function, ()):
        if e.endswith(".*") and name.startswith(e[:-1]):
            return "equivalent"
        # the last part alone also matches: a re-export (``task_vectors.mean_resid_post``)
        if name == e or name.startswith(e + ".") or name.rsplit(".", 1)[-1] == e.rsplit(".", 1)[-1]:
            return "equivalent"
    return ""


def flags(student: str, grade_id: str, source: str, tree: ast.Module | None,
          bindings: dict[str, str]) -> list[Flag]:
    """What the graded cell ``grade_id`` uses of the course's own implementation."""
    if tree is None:
        return [Flag(student, grade_id, "unparsed", "the cell does not parse; it mentions "
                     "fv_exercises")] if "fv_exercises" in source else []
    local = imports(tree)
    assigned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    assigned |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                 for a in [*n.posonlyargs, *n.args, *n.kwonlyargs, n.vararg, n.kwarg] if a}
    assigned |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    scope = {**{k: v for k, v in bindings.items() if k not in assigned}, **local}
    used, in_cell, out = set(), set(local.values()), []
    star = scope.get("*", "")  # ``from m import *``: the graded functions' names, or equivalents
    for node in ast.walk(tree):
        if _dynamic_import(node, scope) == "?" or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("exec", "eval") and node.func.id not in assigned):
            out.append(Flag(student, grade_id, "dynamic", "exec, eval, or an import by a computed name"))
        if star and isinstance(node, ast.Name) and node.id not in scope and node.id not in assigned \
                and (node.id in EQUIVALENTS or classify(f"{star}.{node.id}", grade_id) == "equivalent"):
            used.add(f"{star}.{node.id}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("fv_exercises"):
            in_cell.add(node.value)
        if isinstance(node, ast.Import | ast.ImportFrom):
            in_cell |= {f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name
                        for a in node.names}
        used.add(_chain(node, scope) or "")
    names = {n for n in used | in_cell if n.startswith("fv_exercises")}
    names = {n for n in names if not any(m.startswith(n + ".") for m in names)}  # longest only
    for name in sorted(names):
        kind = classify(name, grade_id) or ("import" if name in in_cell or any(
            name.startswith(i + ".") for i in in_cell) else "")
        if kind:
            out.append(Flag(student, grade_id, kind, name))
    return out


# --- Similarity ---


def normalise(source: str) -> str:
    """``source`` without docstrings or comments, in ``ast.unparse``'s layout (as is if invalid:
    the tokenizer still drops comments and whitespace)."""
    tree = parse(source)
    if tree is None:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    try:
        return ast.unparse(tree)
    except (RecursionError, ValueError):
        return source


def fingerprint(code: str, boilerplate: list | None = None) -> CodeFingerprint:
    """copydetect's fingerprint of already normalised Python ``code``."""
    return CodeFingerprint("cell.py", K, WINDOW, boilerplate=boilerplate, fp=io.StringIO(code),
                           language="python")


def _words(text: str) -> list[str]:
    """The words of a written answer, lower case."""
    return re.findall(r"\w+", text.lower())


class Scorer:
    """Fingerprints every graded cell once; compares any two submissions."""

    def __init__(self, subs: list[Submission], templates: dict[str, str]):
        """``templates``: ``{grade_id: what the release gives}`` of the code solution cells."""
        self.templates = {g: normalise(t) for g, t in templates.items()}
        self.boilerplate = {g: list(fingerprint(t).hashes) for g, t in self.templates.items()}
        self.prints = {(s.student, g): self.fingerprint(g, n) for s in subs
                       for g, src in s.code.items() if (n := normalise(src)) != self.templates.get(g)}
        self.words = {(s.student, g): _words(t) for s in subs for g, t in s.text.items()
                      if _words(t) != _words(TEXT_STUB)}

    def fingerprint(self, grade_id: str, code: str) -> CodeFingerprint:
        """The fingerprint of normalised ``code`` of cell ``grade_id``, its given code left out."""
        return fingerprint(code, self.boilerplate.get(grade_id))

    def compare(self, a: Submission, b: Submission) -> Pair:
        """Scores of ``a`` and ``b``: per graded function, pooled, and per written answer."""
        functions, pooled = {}, [0.0, 0.0, 0.0, 0.0]  # overlap and coverage of a, of b
        for g in sorted(set(a.code) | set(b.code)):
            fa, fb = self.prints.get((a.student, g)), self.prints.get((b.student, g))
            functions[g] = None
            if fa is None or fb is None:
                continue  # missing or unanswered
            _, (sa, sb), _ = compare_files(fa, fb)
            functions[g] = min(1.0, float(max(sa, sb)))
            for i, v in enumerate((sa * fa.token_coverage, fa.token_coverage,
                                   sb * fb.token_coverage, fb.token_coverage)):
                pooled[i] += float(v)
        overall = (min(1.0, max(pooled[0] / pooled[1], pooled[2] / pooled[3]))
                   if pooled[1] and pooled[3] else None)
        answers = {}
        for g in sorted(set(a.text) | set(b.text)):
            wa, wb = self.words.get((a.student, g)), self.words.get((b.student, g))
            answers[g] = (difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()
                          if wa and wb else None)
        return Pair(a.student, b.student, overall, functions, answers)


def build_report(root: Path, name: str) -> Report:
    """Read the reference and every submission of ``name`` in course ``root``; rank all pairs."""
    source_cells, problem = read_cells(root / "solutions" / name / f"{name}.ipynb")
    reference = load(REFERENCE, source_cells) if not problem else None
    expected = [*reference.code, *reference.text] if reference else []
    templates = {_grading(c)[0]: template(_source(c)) for c in source_cells
                 if _grading(c)[1] and c.get("cell_type") == "code"}
    students = [load(s, *read_cells(notebook_path(root, "submitted", s, name)), expected=expected)
                if s != REFERENCE else Submission(s, problems=["a folder named like the reference"])
                for s in submitted_students(root, name)]
    readable = [s for s in students if s.code or s.text]
    scorer = Scorer([*([reference] if reference else []), *readable], templates)
    pairs = [scorer.compare(a, b) for a, b in
             itertools.combinations([*([reference] if reference else []), *readable], 2)]
    pairs.sort(key=lambda p: (p.overall is None, -(p.overall or 0.0), p.a, p.b))
    return Report(name, reference, students, pairs, scorer)


# --- Output ---


def _fmt(x: float | None) -> str:
    """A score with two decimals, ``-`` for none."""
    return "-" if x is None else f"{x:.2f}"


def tables(report: Report, top: int) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of the report's tables, as text cells (not escaped)."""
    fns = report.functions
    answers = sorted({g for p in report.pairs for g in p.answers})
    extra = ["answers"] if answers else []

    def row(p: Pair, *who: str) -> list[str]:
        written = [v for v in p.answers.values() if v is not None]
        return [*who, _fmt(p.overall), *(_fmt(p.functions.get(f)) for f in fns),
                *([_fmt(sum(written) / len(written) if written else None)] if answers else [])]

    ref = [p for p in report.pairs if p.a == REFERENCE][:top]
    peers = [p for p in report.pairs if p.a != REFERENCE][:top]
    flags = [[f.student, f.function, f.kind, f.detail] for s in report.students for f in s.flags]
    problems = [[s.student, p] for s in report.students for p in s.problems]
    if report.reference is None:
        problems.insert(0, [REFERENCE, f"solutions/{report.assignment} cannot be read"])
    return [
        (f"Against the reference (top {top})", ["student", "overall", *fns, *extra],
         [row(p, p.b) for p in ref]),
        (f"Pairs of submissions (top {top})", ["a", "b", "overall", *fns, *extra],
         [row(p, p.a, p.b) for p in peers]),
        ("Graded cells that use the course's own implementation",
         ["student", "function", "kind", "uses"], flags),
        ("Not compared, or compared in part", ["student", "problem"], problems),
    ]


def summary(report: Report) -> str:
    """What the numbers mean, in one paragraph."""
    return (f"Similarity of {report.assignment}: {len(report.students)} submission(s). Scores 0-1: "
            "share of the normalised code (names, comments, docstrings, layout ignored) found in "
            "the other; '-' = not answered or missing. For reading, not for grading.")


def format_text(report: Report, top: int) -> str:
    """The terminal version of the report."""
    lines = [summary(report)]
    for title, header, rows in tables(report, top):
        lines += ["", title + ("" if rows else ": none")]
        rows = [["".join(c if c.isprintable() else "?" for c in cell) for cell in r] for r in rows]
        if rows:
            widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
            lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                      for r in [header, *rows]]
    return "\n".join(lines)


def _marked(code: str, slices) -> str:
    """``code`` escaped, the ``slices`` (copydetect's array ``[starts, ends]``) in ``<mark>``."""
    out, at = [], 0
    for start, end in sorted(zip(*slices.astype(int).tolist())) if slices.size else []:
        start = max(start, at)
        out += [html.escape(code[at:start]), "<mark>", html.escape(code[start:end]), "</mark>"]
        at = max(at, end)
    return "".join(out) + html.escape(code[at:])


def _side_by_side(scorer: Scorer, a: Submission, b: Submission, pair: Pair) -> str:
    """Each graded function of ``a`` and ``b``: normalised code, shared parts marked, and as sent."""
    parts = [f"<h3>{html.escape(pair.a)} &harr; {html.escape(pair.b)}: {_fmt(pair.overall)}</h3>"]
    for g in sorted(set(a.code) | set(b.code)):
        na, nb = normalise(a.code.get(g, "")), normalise(b.code.get(g, ""))
        _, _, (sa, sb) = compare_files(scorer.fingerprint(g, na), scorer.fingerprint(g, nb))
        parts.append(f"<h4>{html.escape(g)}: {_fmt(pair.functions.get(g))}</h4><table class=sbs><tr>")
        for code, raw, sl in ((na, a.code.get(g), sa), (nb, b.code.get(g), sb)):
            raw_html = html.escape(raw) if raw is not None else "(no such cell)"
            parts.append(f"<td><pre>{_marked(code, sl)}</pre><details><summary>as submitted"
                         f"</summary><pre>{raw_html}</pre></details></td>")
        parts.append("</tr></table>")
    return "\n".join(parts)


def format_html(report: Report, top: int) -> str:
    """A self-contained HTML page: the tables, then the top pairs' code side by side."""
    e = html.escape
    body = [f"<h1>Similarity of {e(report.assignment)}</h1><p>{e(summary(report))} Highlighted "
            "below: normalised code found in the other submission.</p>"]
    for title, header, rows in tables(report, top):
        body.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                                         for r in rows) + "</table>")
    subs = {s.student: s for s in report.students}
    if report.reference:
        subs[REFERENCE] = report.reference
    shown = [p for p in report.pairs if p.a == REFERENCE][:top] + \
            [p for p in report.pairs if p.a != REFERENCE][:top]
    body.append("<h2>Code of the top pairs</h2>")
    body += [_side_by_side(report.scorer, subs[p.a], subs[p.b], p) for p in shown
             if p.overall is not None]
    style = ("body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;vertical-align:top}table.sbs td{width:50%}pre{white-space:pre-wrap;"
             "font-size:12px}mark{background:#fd8}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Similarity of "
            f"{e(report.assignment)}</title><style>{style}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    """The command: tables on stdout, the HTML page written; 1 when there is no submission."""
    parser = argparse.ArgumentParser(
        prog="python -m fv_exercises.course similarity",
        description="Rank pairs of submissions, and each submission against the reference, by how "
        "alike their graded functions are; list graded functions that call the course's own "
        "implementation. For the instructor to read, never a grade.")
    parser.add_argument("assignment")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="rows per table (default 20)")
    parser.add_argument("--html", type=Path, metavar="PATH",
                        help="HTML page (default: reports/similarity_ASSIGNMENT.html in the course)")
    args = parser.parse_args(argv)
    if Path(args.assignment).name != args.assignment or args.assignment in ("", ".", ".."):
        parser.error(f"not an assignment name: {args.assignment!r}")
    root = course_dir()
    if not submitted_students(root, args.assignment):
        print(f"no submissions of {args.assignment} in {root / 'submitted'}")
        return 1
    report = build_report(root, args.assignment)
    print(format_text(report, args.top))
    path = args.html or root / "reports" / f"similarity_{args.assignment}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_html(report, args.top), encoding="utf-8")
    print(f"\nHTML report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
