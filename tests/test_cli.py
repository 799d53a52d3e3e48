"""The command line end to end on tiny data: synth-heads -> inspect -> sheet, and clear failures."""

import subprocess
import sys

import cv2
import h5py
import numpy as np
from typer.testing import CliRunner

from gazegen.cli import app

runner = CliRunner()


def test_help_imports_neither_torch_nor_ray():
    code = "import sys, gazegen.cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_synth_heads_then_inspect_writes_a_sheet(tmp_path):
    store, sheet = tmp_path / "heads", tmp_path / "sheet.png"
    args = ["data", "synth-heads", str(store), "--subjects", "2", "--resolution", "32", "--views", "3", "--gazes", "2"]
    result = runner.invoke(app, [*args, "--set", "test_subjects=1"])
    assert result.exit_code == 0, result.output
    with h5py.File(store / "train" / "subject0000.h5") as f:
        assert f["face_patch"].shape == (6, 32, 32, 3) and f["camera"].shape == (6, 25)
        assert sorted(np.unique(f["cam_index"][:]).tolist()) == [0, 1, 2]
    assert (store / "test" / "subject0001.h5").exists()
    result = runner.invoke(app, ["data", "inspect", str(store), "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "2 subject file(s), 12 images" in result.output and "0 problem(s)" in result.output
    assert cv2.imread(str(sheet)) is not None


def test_bad_config_override_fails_with_the_key(tmp_path):
    result = runner.invoke(app, ["data", "synth-heads", str(tmp_path / "x"), "--set", "rig.viewz=3"])
    assert result.exit_code == 2
    assert "rig: unknown key(s) viewz" in result.output
    assert not (tmp_path / "x").exists()


def test_inspect_of_an_empty_folder_names_it(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code != 0
    assert str(tmp_path) in result.output
