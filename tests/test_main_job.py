"""The main job (README quick start 1) runs end to end and writes its figures."""

from __future__ import annotations

import pytest

from fv_exercises.__main__ import main

pytestmark = pytest.mark.notebook


def test_main_job_prints_table_and_writes_figures(tmp_path, capsys):
    # The sections of notebooks 01-03 on the embedded model (the README's rows and figures).
    # All eight sections run end to end on four tiny model families (tests/test_families.py);
    # the whole job on the embedded model (about 20 min on 2 cores) is not part of CI.
    assert main(["run", "--quiet", "--notebooks", "01,03", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("few-shot ICL", "zero-shot + mean task vector", "top heads",
                "zero-shot + function vector", "shuffled-label ICL + function vector"):
        assert row in out
    assert "-- ablation" not in out, "--notebooks 01,03 ran other sections"
    for name in ("antonym_layer_sweep.png", "antonym_head_effects.png"):
        assert (tmp_path / name).stat().st_size > 10_000
