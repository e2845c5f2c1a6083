"""The main job (README quick start 1) runs end to end, writes its figures, and prints each
section as soon as it is computed."""

from __future__ import annotations

import pytest
import torch

import fv_exercises
from fv_exercises import results
from fv_exercises.__main__ import main
from fv_exercises.report import Row


@pytest.mark.notebook
def test_main_job_prints_table_and_writes_figures(tmp_path, capsys):
    # The sections of notebooks 01-03 on the embedded model (the README's rows and figures).
    # All eight sections run end to end on four tiny model families (tests/test_families.py);
    # the whole job on the embedded model (about 7 min on 2 cores) is not part of CI.
    assert main(["run", "--quiet", "--notebooks", "01,03", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("few-shot ICL", "zero-shot + mean task vector", "top heads",
                "zero-shot + function vector", "shuffled-label ICL + function vector"):
        assert row in out
    assert "-- ablation" not in out, "--notebooks 01,03 ran other sections"
    for name in ("antonym_layer_sweep.png", "antonym_head_effects.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # each section's header row carries its time; the total comes last
    headers = [line for line in out.splitlines() if line.startswith("-- ")]
    assert len(headers) == 2 and all(line.rstrip().endswith(" s") and "took" in line
                                     for line in headers)
    assert out.rstrip().splitlines()[-1].startswith("total ")


# ---- when rows are printed (cheap fake sections, no model) ----------------------------------


def _fake_sections(capsys, seen: list[str]):
    """Two sections: the second records what had been printed when it started computing."""

    def first(ctx) -> list[Row]:
        return [Row("alpha accuracy", "50%", "[40%, 60%]", "note a", 0.5 + 0.1 * ctx.seed)]

    def second(ctx) -> list[Row]:
        seen.append(capsys.readouterr().out)
        return [Row("beta accuracy", "70%", "[60%, 80%]", "", 0.7)]

    return [("first fake (notebook 01)", first), ("second fake (notebook 02)", second)]


@pytest.fixture
def fake_job(monkeypatch, capsys):
    seen: list[str] = []
    monkeypatch.setattr(results, "_sections", lambda: _fake_sections(capsys, seen))
    monkeypatch.setattr(fv_exercises, "load_model", lambda name=None: object())
    return seen


def test_a_section_is_printed_before_the_next_one_computes(fake_job, capsys, tmp_path):
    assert main(["run", "--quiet", "--out", str(tmp_path)]) == 0
    before_second = fake_job[0]
    out = before_second + capsys.readouterr().out
    assert "-- first fake (notebook 01)" in before_second and "alpha accuracy" in before_second
    assert "-- second fake" not in before_second and "total" not in before_second
    lines = out.splitlines()
    header = next(l for l in lines if l.startswith("-- first fake"))
    assert header.rstrip().endswith("took 0 s")
    assert lines[-1].startswith("total ")
    # the rows are formatted as the one table printed at the end used to be (same widths)
    widths = (results.NAME_WIDTH, results.INTERVAL_WIDTH)
    assert results.format_row(Row("alpha accuracy", "50%", "[40%, 60%]", "note a"), widths) in lines
    alpha = next(l for l in lines if l.startswith("alpha"))
    beta = next(l for l in lines if l.startswith("beta"))
    assert alpha.index("50%") == beta.index("70%") == results.NAME_WIDTH + 5


def test_with_seeds_each_section_prints_its_mean_before_the_next(fake_job, capsys, tmp_path):
    assert main(["run", "--quiet", "--seeds", "2", "--out", str(tmp_path)]) == 0
    before_second = fake_job[0]
    assert len(fake_job) == 2, "the second section runs once per seed"
    assert "mean over 2 train draws" in before_second
    alpha = next(l for l in before_second.splitlines() if l.startswith("alpha"))
    assert "55%" in alpha and "over 2 seeds" in alpha  # mean of 50% and 60%


def test_each_seed_keeps_its_own_random_state_across_sections():
    # Sections run seed by seed within a section; each seed's numbers must be those of a run of
    # that seed alone (torch.manual_seed(seed), then the sections in order).
    def draw(ctx) -> list[Row]:
        x = torch.rand(()).item()
        return [Row("draw", f"{x:.4f}", number=x)]

    sections = [("a (notebook 01)", draw), ("b (notebook 02)", draw)]

    def numbers(seeds):
        return [[r.number for r in runs.rows[1:]]
                for runs in results.run_sections(None, seeds=seeds, sections=sections,
                                                 progress=False)]

    alone = {s: [n for section in numbers((s,)) for n in section] for s in (0, 1)}
    both = results.run_sections(None, seeds=(0, 1), sections=sections, progress=False)
    merged = [r.rows[1].number for r in both]
    assert alone[0] != alone[1] and alone[0][0] != alone[0][1]
    assert merged == pytest.approx([(alone[0][i] + alone[1][i]) / 2 for i in range(2)])


def test_unknown_notebook_fails_before_the_model_loads(monkeypatch):
    def no_model(name=None):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(fv_exercises, "load_model", no_model)
    with pytest.raises(SystemExit, match="no section for notebook"):
        main(["run", "--notebooks", "42"])
