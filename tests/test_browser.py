"""The course in a real browser: Debian's Chromium, driven by Playwright, against JupyterLab on
localhost (tests/browser_support.py starts and always stops the servers).

- a learner opens notebook 01 in JupyterLab (learner edition), runs the set-up cells, types a
  wrong ``find_task_vector`` into the exercise cell, runs the check cell and sees the check's
  message; the learner edition shows no formgrader, course list or Create Assignment;
- an instructor opens a graded notebook-09 submission on the formgrader's manual-grading page
  (instructor edition), types a score for a written answer, and it lands in the gradebook.

Screenshots go to ``$FV_ARTIFACTS`` (tests/conftest.py prints the folder at the end of the run);
docs/img/ holds one of each (docs/instructors.md shows them). Without Chromium or Playwright the
tests fail, saying how to install them (``bash scripts/install_browser.sh``): never a skip.
"""

from __future__ import annotations

import inspect
import re
import shutil
import time
import tomllib
from pathlib import Path

import nbformat
import pytest

from fv_exercises.course import ROOT

import browser_support as bs
import wrong_01

LEARNER_NOTEBOOK = ROOT / "notebooks" / "01_task_vectors" / "01_task_vectors.ipynb"
CELL_TIMEOUT_MS = 300_000  # as nbgrader's per-cell limit: a busy CI machine, a cold import
# The nbgrader menu entries of each edition (the menu shows only the entries whose plugin is on).
LEARNER_MENU = ["Assignment List"]
INSTRUCTOR_ONLY_MENU = ["Course List", "Formgrader", "Create assignment"]  # nbgrader's spelling


@pytest.fixture
def page():
    """A fresh Chromium page; the test fails (with how to install them) if the tools are missing."""
    problem = bs.missing_tools()
    if problem:
        pytest.fail(problem)
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # a busy 2-core machine renders a notebook slowly
    with bs.chromium_page() as p:
        yield p


# --------------------------------------------------------------------------------------------
# Notebook cells, by their position in the .ipynb (the DOM holds the same cells in order)
# --------------------------------------------------------------------------------------------


def cell_index(nb: nbformat.NotebookNode, grade_id: str | None = None, startswith: str = "") -> int:
    """Index of the cell with nbgrader ``grade_id``, or of the first cell whose source starts with
    ``startswith`` (after leading comment lines)."""
    for i, cell in enumerate(nb.cells):
        if grade_id is not None and cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return i
        code = "\n".join(l for l in cell.source.splitlines() if not l.startswith("#"))
        if grade_id is None and startswith and code.lstrip().startswith(startswith):
            return i
    raise LookupError(f"no cell {grade_id or startswith!r} in the notebook")


def wrong_find_task_vector() -> tuple[str, str]:
    """A learner's ``find_task_vector`` that reads the ICL prompt's FIRST position (from
    tests/wrong_01.py, self-contained) and the words the check must say about it."""
    source = inspect.getsource(wrong_01.ftv_first_position)
    source = source.replace("def ftv_first_position(", "def find_task_vector(")
    source = source.replace("_post(layer)", 'f"blocks.{layer}.hook_resid_post"')
    return source, wrong_01.FIND_TASK_VECTOR[wrong_01.ftv_first_position]


def run_cell(page, cell) -> None:
    """Click into ``cell``, run it with Shift+Enter, wait until its prompt shows a number."""
    from playwright.sync_api import expect

    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"),
                                                        timeout=CELL_TIMEOUT_MS)


def nbgrader_menu_entries(page) -> list[str]:
    """Open JupyterLab's Nbgrader menu and return its visible entries (then close it)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Nbgrader$")).click()
    menu = page.locator("#jp-mainmenu-nbgrader")
    menu.wait_for(state="visible")
    entries = [t.strip() for t in menu.locator(".lm-Menu-itemLabel").all_inner_texts() if t.strip()]
    page.keyboard.press("Escape")
    return entries


def open_lab(page, server: bs.Server, path: str = "") -> None:
    """Open JupyterLab (at ``path``) and wait until its menu bar is built."""
    page.goto(server.page_url(f"/lab/tree/{path}" if path else "/lab"))
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Nbgrader$")).wait_for()


# --------------------------------------------------------------------------------------------
# (a) the learner: a check's message in JupyterLab
# --------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.notebook
def test_learner_sees_the_checks_message_in_jupyterlab(page, tmp_path):
    from playwright.sync_api import expect

    start = time.perf_counter()
    folder = tmp_path / "01_task_vectors"
    folder.mkdir()
    shutil.copy(LEARNER_NOTEBOOK, folder)
    nb = nbformat.read(LEARNER_NOTEBOOK, as_version=4)
    setup = [cell_index(nb, startswith="import torch"), cell_index(nb, startswith="from fv_exercises import")]
    exercise, check = cell_index(nb, "find_task_vector"), cell_index(nb, "test_find_task_vector")
    code, message = wrong_find_task_vector()
    page.set_viewport_size({"width": 1400, "height": 1100})
    with bs.jupyter_lab(folder, "learner") as server:
        open_lab(page, server, LEARNER_NOTEBOOK.name)
        # the learner edition: no instructor tools in the menu, the side bars, or on the server
        assert nbgrader_menu_entries(page) == LEARNER_MENU
        expect(page.get_by_role("button", name="Validate")).to_be_visible()
        sidebars = page.locator(".jp-SideBar .lm-TabBar-tab").evaluate_all(
            "tabs => tabs.map(t => t.title + ' ' + (t.dataset.id || ''))")
        assert not [t for t in sidebars if re.search("create.?assignment|nbgrader", t, re.I)], sidebars
        assert server.status("/formgrader") == 404
        assert server.status("/formgrader/api/assignments") == 404

        cells = page.locator(".jp-Notebook .jp-Cell")
        expect(cells).to_have_count(len(nb.cells))
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
            timeout=CELL_TIMEOUT_MS)  # the kernel has started
        for i in setup:
            run_cell(page, cells.nth(i))
        expect(cells.nth(setup[-1]).locator(".jp-OutputArea")).to_contain_text("layers")

        editor = cells.nth(exercise).locator(".jp-InputArea-editor")
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(code)  # as typed (or pasted) by the learner
        expect(editor).to_contain_text("cache[f\"blocks.{layer}.hook_resid_post\"][:, 0]")
        run_cell(page, cells.nth(exercise))
        run_cell(page, cells.nth(check))

        output = cells.nth(check).locator(".jp-OutputArea")
        expect(output).to_contain_text("CheckFailure")
        expect(output).to_contain_text(message)
        assert "FIRST position of the ICL prompt" in output.inner_text()

        # the picture: the wrong function above the check's message
        page.keyboard.press("Control+b")  # hide the file browser: room for the code
        cells.nth(exercise).evaluate("cell => cell.scrollIntoView({block: 'start'})")
        shot = bs.artifacts_dir() / "browser_check_message.png"
        page.screenshot(path=str(shot))
    print(f"learner browser test: {time.perf_counter() - start:.0f} s; screenshot {shot}")


# --------------------------------------------------------------------------------------------
# (b) the instructor: a written answer graded by hand in the formgrader
# --------------------------------------------------------------------------------------------

ANSWERED = "q_middle_layers"
ANSWER = ("The middle layers: the early ones still read the words of the prompt, the late ones "
          "already write the answer; the task is worked out in between.")


def written_answers_submission(root: Path, name: str) -> nbformat.NotebookNode:
    """The cheapest graded notebook-09 submission with a written answer: the release as a learner
    got it (graded functions still stubs), one written answer filled in, and the exploration code
    cells deleted (not graded; the largest costs minutes while grading). The set-up cells stay,
    so the grade cells run as they do for anyone."""
    from fv_exercises.autograding import notebook_path

    nb = nbformat.read(notebook_path(root, "notebooks", None, name), as_version=4)
    setup = {cell_index(nb, startswith="import torch"), cell_index(nb, startswith="import matplotlib")}
    kept = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not meta and i not in setup:
            continue
        if meta.get("grade_id") == ANSWERED:
            cell.source = ANSWER
        kept.append(cell)
    nb.cells = kept
    return nb


def manual_grade(root: Path, name: str, student: str, grade_id: str):
    """``(manual_score, needs_manual_grade)`` of one cell of a submission in the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        grade = gb.find_grade(grade_id, name, name, student)
        return grade.manual_score, grade.needs_manual_grade


def wait_for_manual_score(root: Path, name: str, student: str, grade_id: str, score: float,
                          timeout_s: float = 60) -> tuple[float | None, bool]:
    """Poll the gradebook until the formgrader's save of ``score`` arrives (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = manual_grade(root, name, student, grade_id)
        if got[0] == score or time.monotonic() > deadline:
            return got
        time.sleep(0.2)  # the save is an HTTP request the page already sent


@pytest.mark.browser
@pytest.mark.notebook
def test_instructor_grades_a_written_answer_in_the_formgrader(page, tmp_path):
    from nbgrader.api import Gradebook
    from playwright.sync_api import expect

    from fv_exercises.autograding import autograde, scratch_course, submit

    start = time.perf_counter()
    name, student, root = "09_exercises", "learner1", tmp_path / "course"
    scratch_course(root, [name])
    submit(root, name, student, written_answers_submission(root, name))
    (outcome,) = autograde(root, name)
    graded = time.perf_counter() - start
    assert not outcome.problem, outcome
    assert manual_grade(root, name, student, ANSWERED) == (None, True)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        submission_id = gb.find_submission_notebook(name, name, student).id

    with bs.jupyter_lab(root, "instructor") as server:
        # the instructor edition has the tools the learner edition hides
        open_lab(page, server)
        entries = nbgrader_menu_entries(page)
        assert set(INSTRUCTOR_ONLY_MENU) <= set(entries), entries

        page.goto(server.page_url(f"/formgrader/submissions/{submission_id}/?index=0"))
        score = page.locator(f"input.score#{ANSWERED}")
        expect(score).to_be_visible()
        panel = page.locator(".nbgrader_cell", has=score)
        expect(panel).to_contain_text(ANSWER[:40])
        expect(score).to_have_class(re.compile("needs_manual_grade"))
        score.fill("1.5")
        score.press("Tab")  # the formgrader saves a score when its box loses focus
        assert wait_for_manual_score(root, name, student, ANSWERED, 1.5) == (1.5, False)
        expect(score).not_to_have_class(re.compile("needs_manual_grade"))

        panel.evaluate("cell => cell.scrollIntoView({block: 'center'})")
        shot = bs.artifacts_dir() / "formgrader_manual_grading.png"
        page.screenshot(path=str(shot))
    print(f"formgrader browser test: {time.perf_counter() - start:.0f} s (autograding {graded:.0f} s); "
          f"screenshot {shot}")


# --------------------------------------------------------------------------------------------
# How the tools get installed (fast, no browser)
# --------------------------------------------------------------------------------------------


def test_browser_tools_are_pinned_and_installed_by_the_test_script():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [d for d in extras["browser"] if d.startswith("playwright==")], extras
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "bash scripts/install_browser.sh" in test_sh
    install = (ROOT / "scripts" / "install_browser.sh").read_text()
    assert "apt-get install -y -qq chromium" in install and '"browser"' in install


def test_missing_chromium_fails_with_how_to_install(monkeypatch):
    monkeypatch.setattr(bs, "CHROMIUM", "/nonexistent/chromium")
    problem = bs.missing_tools()
    assert problem and "install_browser.sh" in problem and "apt-get install chromium" in problem
