"""The command line end to end on tiny data: synth-heads -> inspect -> sheet, and clear failures."""

import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from gazegen.checkpoint import CheckpointError
from gazegen.cli import _reported, app
from gazegen.config import ConfigError
from gazegen.data.export import ExportError
from gazegen.data.faces import ImageReadError
from gazegen.data.normalise import NormalisationError
from gazegen.data.xgaze import DataError
from gazegen.errors import GazegenError
from gazegen.paths import OutputPathError
from gazegen.pipelines.guards import InputError
from gazegen.pipelines.manifest import IncompleteRunError, RunMismatchError
from gazegen.pipelines.sources import ImageColumnError
from gazegen.pipelines.synthesis import IncompleteShardsError
from gazegen.train.depth_prior import DepthPriorError
from gazegen.train.errors import TrainingError
from gazegen.weights import MissingWeightsError, WeightsChecksumError

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
    assert "error: command line: --set rig.viewz=3: unknown key 'rig.viewz'; known in rig: views" in result.output
    assert not (tmp_path / "x").exists()


def test_inspect_of_an_empty_folder_names_it(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code != 0
    assert str(tmp_path) in result.output


# Every error the commands report as one line, with the builtin base existing callers catch it by.
USER_ERRORS = {
    ConfigError: ValueError, DataError: ValueError, ExportError: ValueError, CheckpointError: ValueError,
    ImageReadError: ValueError, NormalisationError: ValueError, InputError: ValueError, DepthPriorError: ValueError,
    WeightsChecksumError: ValueError, MissingWeightsError: FileNotFoundError, TrainingError: RuntimeError,
    RunMismatchError: RuntimeError, IncompleteRunError: RuntimeError, IncompleteShardsError: RuntimeError,
    OutputPathError: ValueError, ImageColumnError: ValueError,
}


@pytest.mark.parametrize("error,builtin", USER_ERRORS.items(), ids=lambda c: c.__name__)
def test_every_reported_error_is_a_gazegen_error(error, builtin):
    assert issubclass(error, GazegenError) and issubclass(error, builtin)


def test_a_bug_is_not_reported_as_a_user_error():
    with pytest.raises(typer.Exit) as exit_info:
        with _reported():
            raise CheckpointError("ckpt/config.json: missing")
    assert exit_info.value.exit_code == 2
    with pytest.raises(RuntimeError, match="a bug"):  # e.g. from torch: its traceback is kept
        with _reported():
            raise RuntimeError("a bug")


def test_a_bad_checkpoint_file_fails_with_the_file_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"format_version": 2,')
    result = runner.invoke(app, ["estimator", "eval", str(tmp_path / "ckpt"), str(tmp_path / "data")])
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'ckpt' / 'config.json'}: not valid JSON" in result.output


def test_synthesize_faces_option_is_checked_before_any_work(tmp_path):
    result = runner.invoke(app, ["synthesize", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "out"),
                                 "--faces", "some"])
    assert result.exit_code == 2 and "faces" in result.output and "largest" in result.output
    assert not (tmp_path / "out").exists()
    from gazegen.config import load_synth_config

    assert load_synth_config(None, (), faces="all").faces == "all"  # the flag reaches the config as --set would


@pytest.mark.parametrize(("args", "message"), [
    (["--grid", "pitch,yaw,foo"], "command line: --grid: 'pitch,yaw,foo': axes must be a comma list of pitch, yaw, view"),
    (["--pitch", "-10:10:1"], "command line: --pitch: -10:10:1: count must be >= 1"),
    (["--crop", "sometimes"], "command line: crop 'sometimes': expected 'auto', 'always' or 'never'"),
    (["--faces", "some"], "command line: faces 'some': expected 'largest' or 'all'"),
    (["--set", "sampel=3"], "command line: --set sampel=3: unknown key 'sampel'; known: grid, "),
    (["--set", "nosuch.key=1"], "command line: --set nosuch.key=1: unknown key 'nosuch'; known: grid, "),
    (["--set", "pitch=10:0:2"], "command line: --set pitch=10:0:2: start must not exceed stop"),  # --set as typed
    (["--sample", "-1"], "command line: --sample: must be >= 0, got -1"),
    (["--batch-size", "0"], "command line: --batch-size: must be in [1, 4096], got 0"),
    (["--grid", "view,view"], "command line: --grid: 'view,view': view named more than once"),
    (["--pitch", "0:0:2"], "command line: --pitch: 0:0:2: its 2 values repeat"),
    (["--grid", "yaw", "--pitch", "-10:10:3", "--yaw", "-10:10:2", "--view-yaw", "-20:20:3"],
     "command line: --pitch -10:10:3, --view-yaw -20:20:3: --grid yaw does not sweep pitch or view"),
])  # fmt: skip
def test_synthesize_option_errors_blame_the_command_line_not_defaults(tmp_path, args, message):
    """A value typed on the command line is reported as the command line's (by its option's name when typed as one),
    before any work; never as "defaults"."""
    result = runner.invoke(app, ["synthesize", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.output and "defaults" not in result.output
    assert not (tmp_path / "out").exists()


def test_config_errors_name_the_file_or_the_command_line(tmp_path):
    preset = tmp_path / "synth.toml"
    preset.write_text('crop = "sometimes"\n')
    result = runner.invoke(app, ["synthesize", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "out"), "--config", str(preset)])
    assert result.exit_code == 2 and f"error: {preset}: crop 'sometimes'" in result.output  # the file's own value
    preset.write_text('crop = "never"\n')  # a file that is fine alone, made wrong by an option
    result = runner.invoke(app, ["synthesize", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "out"), "--config", str(preset),
                                 "--faces", "all"])  # fmt: skip
    assert result.exit_code == 2 and "error: command line: faces 'all' detects faces; crop 'never'" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "run"), str(tmp_path / "dest"), "--format", "hdf"])
    assert result.exit_code == 2 and "error: command line: " in result.output and "defaults" not in result.output


def test_synthesize_interrupted_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt out of the run): exit 130 and the resume hint, not a traceback."""
    import gazegen.pipelines.synthesis

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gazegen.pipelines.synthesis, "run_synthesis", interrupted)
    result = runner.invoke(app, ["synthesize", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 130
    assert f"interrupted: the complete shards in {tmp_path / 'out'} are kept; the same command renders the rest" in result.output


def test_synth_heads_help_shows_the_config_defaults():
    from gazegen.config import SynthHeadsConfig

    result = runner.invoke(app, ["data", "synth-heads", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.strip().startswith("│ --")}
    cfg = SynthHeadsConfig()
    for option, value in (("--subjects", cfg.subjects), ("--resolution", cfg.resolution), ("--views", cfg.rig.views),
                          ("--gazes", cfg.gazes), ("--seed", cfg.seed)):
        assert f"[default: ({value})]" in lines[option], lines[option]


def test_synthesize_help_shows_the_config_defaults_and_how_sample_draws():
    """The grid options default to None (not given: the preset's or SynthConfig's value); --help shows SynthConfig's."""
    from gazegen.config import SynthConfig

    result = runner.invoke(app, ["synthesize", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.strip().startswith("│ --")}
    defaults = SynthConfig()
    for option, key in (("--grid", "grid"), ("--pitch", "pitch"), ("--yaw", "yaw"), ("--view-pitch", "view_pitch"),
                        ("--view-yaw", "view_yaw"), ("--sample", "sample"), ("--seed", "seed"), ("--batch-size", "batch_size")):
        assert f"[default: ({getattr(defaults, key)})]" in lines[option], lines[option]
    assert "drawn uniformly within its swept axis's start:stop range (the count is ignored)" in lines["--sample"]
