"""Output paths checked before any work (gazegen/paths.py): a file to write (`bench --out`) and a run folder
(`train --out`) that is a file or lies under one are refused in one line, with nothing measured, read or made."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import gazegen.benchmark
from gazegen.cli import app
from gazegen.paths import OutputPathError, check_out_file
from gazegen.train import trainer

runner = CliRunner()


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "somefile.txt"
    path.write_text("not a folder\n")
    return path


def test_a_file_to_write_is_not_a_folder_and_has_a_folder_to_go_in(tmp_path, a_file):
    assert check_out_file(tmp_path / "new" / "deeper" / "b.json") == tmp_path / "new" / "deeper" / "b.json"
    assert check_out_file(a_file) == a_file  # an existing file is replaced
    assert not (tmp_path / "new").exists()  # checked, not made
    with pytest.raises(OutputPathError) as err:
        check_out_file(tmp_path, "the JSON file")
    assert str(err.value) == f"{tmp_path}: a folder; give the JSON file"
    with pytest.raises(OutputPathError) as err:
        check_out_file(a_file / "b.json")
    assert str(err.value) == f"{a_file / 'b.json'}: cannot be written: {a_file}: not a folder"


def test_bench_out_under_a_file_is_refused_before_measuring(a_file, monkeypatch):
    measured = []
    monkeypatch.setattr(gazegen.benchmark, "bench_model", lambda *args, **kwargs: measured.append(args) or {})
    result = runner.invoke(app, ["bench", "--out", str(a_file / "b.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {a_file / 'b.json'}: cannot be written: {a_file}: not a folder"
    assert measured == []


@pytest.mark.parametrize("under", ["", "run"])
def test_train_out_that_is_a_file_or_under_one_is_refused_before_the_store_is_read(a_file, under, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("run_training was called")

    monkeypatch.setattr(trainer, "run_training", no_training)
    out = a_file / under if under else a_file
    result = runner.invoke(app, ["train", "--data", str(a_file.parent / "no-store"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    why = f"{out}: not a folder" if not under else f"{out}: cannot be made: {a_file} is not a folder"
    assert result.output.strip() == f"error: {why}"
    assert a_file.read_text() == "not a folder\n"
