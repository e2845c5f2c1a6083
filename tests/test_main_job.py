"""The main job (README quick start 1) runs end to end and writes its figures."""

from __future__ import annotations

import pytest

from fv_exercises.__main__ import main

pytestmark = pytest.mark.notebook


def test_main_job_prints_table_and_writes_figures(tmp_path, capsys):
    assert main(["run", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("few-shot ICL", "zero-shot + mean task vector", "top heads",
                "zero-shot + function vector", "shuffled-label ICL + function vector"):
        assert row in out
    for name in ("antonym_layer_sweep.png", "antonym_head_effects.png"):
        assert (tmp_path / name).stat().st_size > 10_000
