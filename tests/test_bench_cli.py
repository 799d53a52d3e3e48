"""`gazegen bench --out`: the JSON lands where asked, its folder made; a folder given as the file fails before the measurement."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import gazegen.benchmark
from gazegen.cli import app

runner = CliRunner()


def test_bench_out_makes_its_folder_and_refuses_a_folder_before_measuring(tmp_path, monkeypatch):
    measured = []

    def fake_bench(preset, *args, **kwargs):  # what the command writes, not the measurement
        measured.append(preset)
        return {"preset": str(preset), "ms_per_image": 1.5}

    monkeypatch.setattr(gazegen.benchmark, "bench_model", fake_bench)
    out = tmp_path / "new" / "deeper" / "tiny.json"
    result = runner.invoke(app, ["bench", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["ms_per_image"] == 1.5
    result = runner.invoke(app, ["bench", "--out", str(tmp_path / "new")])
    assert result.exit_code == 2 and f"error: {tmp_path / 'new'}: is a folder; --out names the JSON file to write" in result.output
    assert len(measured) == 1
