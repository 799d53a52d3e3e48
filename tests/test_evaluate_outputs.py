"""`gazegen evaluate`'s --out and what it tells: NaN scores, Ctrl-C, an earlier evaluation, the help and closing
line, the camera hint, the report's wording, and a run folder given for a checkpoint (evaluate and finetune)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from gazegen.checkpoint import CheckpointError, save_pretrained
from gazegen.cli import app
from gazegen.config import EvaluateConfig, ModelConfig, NormalisationConfig, RigConfig, SynthHeadsConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.data.xgaze import DataError
from gazegen.evaluation import evaluate as evaluate_module
from gazegen.evaluation import report as report_module
from gazegen.evaluation.evaluate import CopySource, GroundTruthTarget, Redirected, check_model_camera, evaluate, run_evaluation
from gazegen.evaluation.preflight import held_report_files, interrupted_note
from gazegen.evaluation.probes import Following, ProbeReport, SwapResult, SweepResult
from gazegen.evaluation.pupils import PupilFollowing
from gazegen.evaluation.report import (
    EvaluationReport, MethodResult, json_safe, probes_markdown, report_files, verdict, write_report,
)
from gazegen.metrics.estimator import GazeEstimate
from gazegen.models.livegaze import LiveGaze
from gazegen.paths import OutputPathError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
HEADS = SynthHeadsConfig(subjects=2, test_subjects=1, resolution=32, gazes=2, seed=3, rig=RigConfig(views=2))
QUICK = EvaluateConfig(lpips=False, fid=False, baselines=False, warmup=0)


@pytest.fixture(scope="module")
def tiny_model() -> LiveGaze:
    torch.manual_seed(0)
    return LiveGaze(load_config(ModelConfig, ROOT / "configs" / "model" / "tiny.toml")).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One test subject of 4 procedural images (2 gazes x 2 views): 2 pairs."""
    return synthesize_store(tmp_path_factory.mktemp("heads") / "store", HEADS, workers=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    return save_pretrained(tmp_path_factory.mktemp("model") / "model", tiny_model)


def lines(text: str) -> list[str]:
    """A command's output lines, less tqdm's progress bars."""
    return [l for l in (line.rpartition("\r")[2] for line in text.split("\n")) if l.strip() and not l.startswith("evaluate:")]


def cli_evaluate(checkpoint: Path, data: Path, out: Path, *args: str):
    return runner.invoke(app, ["evaluate", str(checkpoint), str(data), "--out", str(out), *args])


def mean_reader(image: torch.Tensor) -> GazeEstimate:
    """A fake estimator: reads (pitch, yaw) from the image's mean; NaN for a NaN image."""
    level = image.double().mean((1, 2, 3))
    gaze = torch.stack([0.3 * level, -0.2 * level], 1)
    return GazeEstimate(gaze, gaze)


class NaNModel:
    """A "model" with NaN weights: every output pixel is NaN."""

    name, three_d = "NaN model", True

    def prepare(self, pairs) -> None:
        pass

    def __call__(self, batch) -> Redirected:
        return Redirected(torch.full_like(batch.target, float("nan")))


# --------------------------------------------------------------------------- 1: NaN scores


def test_json_safe_writes_what_is_not_a_number_as_null():
    value = {"a": [1.5, float("nan"), np.float32("inf")], "b": {"c": -float("inf"), "d": "text", "e": 3, "f": None}}
    assert json_safe(value) == {"a": [1.5, None, None], "b": {"c": None, "d": "text", "e": 3, "f": None}}


def test_a_model_scoring_nan_gets_its_report_nan_as_null_and_as_nan(tmp_path, store):
    """A NaN model's SSIM, PSNR and gaze error are NaN: report.json holds null, report.md "nan", the verdict says why."""
    report = run_evaluation(store, [NaNModel(), GroundTruthTarget()], QUICK, estimator=mean_reader)
    nan_row = report.method(NaNModel.name).mean
    assert all(math.isnan(nan_row[k]) for k in ("ssim", "psnr", "gaze_error"))
    write_report(report, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    mean = {m["name"]: m["mean"] for m in data["methods"]}
    assert mean[NaNModel.name]["ssim"] is None and mean[NaNModel.name]["gaze_error"] is None
    assert mean[GroundTruthTarget.name]["ssim"] == pytest.approx(1.0, abs=1e-9)  # the other rows as they are
    assert data["verdict"].startswith("NO GAZE: NaN model has a gaze error of nan")
    md = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| NaN model \| measured: .* \| ✓ \| nan \| nan \| n/a \| n/a \| nan \| nan \|", md)


def test_the_verdict_on_a_nan_gaze_error_is_no_gaze():
    model = MethodResult("m", True, mean={"gaze_error": float("nan"), "pitch_corr": None, "yaw_corr": None})
    constant = MethodResult(evaluate_module.CONSTANT, False, mean={"gaze_error": 40.0})
    report = EvaluationReport([model, constant], EvaluateConfig(), "data", "cpu")
    assert verdict(report).startswith("NO GAZE: m has a gaze error of nan")


# --------------------------------------------------------------------------- 2: Ctrl-C


def small_report(store: Path) -> EvaluationReport:
    return run_evaluation(store, [CopySource()], QUICK)  # no probes: sheet.png, report.json, report.md


def test_ctrl_c_while_drawing_leaves_no_report(tmp_path, store, monkeypatch):
    report = small_report(store)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_sheet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # nothing, not even a staged file
    assert interrupted_note(tmp_path / "out") == f"no report written to {tmp_path / 'out'}; rerun the command to evaluate again"


def test_ctrl_c_between_renames_leaves_pictures_but_no_report_md(tmp_path, store, monkeypatch):
    """report.md, which names the other files, is put in place last: an interrupted run never looks complete."""
    report, out, rename = small_report(store), tmp_path / "out", Path.replace

    def replace(self: Path, target):
        if Path(target).name == "report.json":
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["sheet.png"] == held_report_files(out)
    assert interrupted_note(out) == f"{out} holds sheet.png but no report.md; rerun the command with --overwrite to evaluate again"


@pytest.mark.parametrize("left", [[], ["sheet.png"]])
def test_ctrl_c_in_the_command_is_one_line_exit_130(tmp_path, monkeypatch, left):
    out = tmp_path / "out"

    def interrupted(checkpoint, data, out, *args, **kwargs):
        Path(out).mkdir()
        for name in left:
            (Path(out) / name).write_bytes(b"png")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate", interrupted)
    result = cli_evaluate(tmp_path / "model", tmp_path / "store", out)
    assert result.exit_code == 130 and lines(result.output) == [f"interrupted: {interrupted_note(out)}"]


# --------------------------------------------------------------------------- 3: an earlier evaluation in --out


def test_an_earlier_evaluation_is_refused_before_any_work(tmp_path, store):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("earlier\n")
    (out / "sweep.png").write_bytes(b"png")
    with pytest.raises(OutputPathError, match=r"out: holds an earlier evaluation \(sweep\.png, report\.md\); give another "
                                              r"--out, or pass --overwrite"):
        evaluate(tmp_path / "no-such-model", store, out, QUICK)  # refused before the checkpoint is read
    result = cli_evaluate(tmp_path / "no-such-model", store, out)
    assert result.exit_code == 2 and len(lines(result.output)) == 1 and "holds an earlier evaluation" in result.output
    assert (out / "report.md").read_text() == "earlier\n"
    with pytest.raises(OutputPathError, match="not a folder"):
        evaluate(tmp_path / "no-such-model", store, out / "report.md", QUICK)


def test_overwrite_deletes_only_evaluates_files(tmp_path, store, model_dir):
    """Another checkpoint's sweep.png does not stay beside a report without a sweep; the user's own files do."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.json", "report.md", "sheet.png", "sweep.png", "sheet.tmp.png"):
        (out / name).write_text("earlier")
    (out / "notes.txt").write_text("mine")
    report = evaluate(model_dir, store, out, QUICK, overwrite=True)  # no estimator: no probes, no sweep.png
    assert report.probes is None and report_files(report) == ["sheet.png", "report.json", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.json", "report.md", "sheet.png"]
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "report.json").read_text())["data"] == str(store)


# --------------------------------------------------------------------------- 4: the help and the closing line


def test_out_help_names_every_file_and_the_closing_line_every_file_written(tmp_path, monkeypatch):
    params = {p.name: p for p in get_command(app).commands["evaluate"].params}
    assert all(name in params["out"].help for name in ("report.json", "report.md", "sheet.png", "sweep.png"))
    assert "overwrite" in params
    out = tmp_path / "out"
    for probes, names in ((object(), "report.md, report.json, sweep.png, sheet.png"), (None, "report.md, report.json, sheet.png")):
        faked = EvaluationReport([], EvaluateConfig(), "data", "cpu", probes=probes)  # report_files reads only whether probes ran
        monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: faked)
        result = cli_evaluate(tmp_path / "model", tmp_path / "store", out)
        assert result.exit_code == 0, result.output
        assert lines(result.output)[-1] == "wrote " + ", ".join(f"{out}/{n}" for n in names.split(", "))


# --------------------------------------------------------------------------- 5: another camera


def test_a_synth_heads_store_of_another_camera_is_told_the_settings_that_make_the_checkpoints(tmp_path, store):
    """The hint's --set values, given to synth-heads, make a store of the checkpoint's camera (at any --resolution)."""
    trained = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224, eye_above_centre_mm=0.0)
    with pytest.raises(DataError, match="make the store again at that camera") as error:
        check_model_camera(store, "test", trained, "ckpt")
    sets = re.findall(r"--set ([^\s`]+)", str(error.value))
    assert sets == ["normalisation.focal=960", "normalisation.resolution=224", "normalisation.distance_mm=600"]
    again = synthesize_store(tmp_path / "again", load_config(SynthHeadsConfig, None, [
        *sets, "subjects=1", "test_subjects=1", "resolution=32", "gazes=1", "rig.views=1"]), workers=1)
    check_model_camera(again, "test", trained, "ckpt")  # the same camera now


def test_a_prepared_store_of_another_camera_is_not_told_to_prepare_it_again(tmp_path, store):
    """`data prepare` keeps its source's focal and distance: the hint says so, and names no prepare option."""
    import shutil

    prepared = shutil.copytree(store, tmp_path / "prepared")
    (prepared / "prepare.json").write_text("{}")
    trained = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224, eye_above_centre_mm=0.0)
    with pytest.raises(DataError, match=r"this store's camera is its source's \(`gazegen data prepare` keeps a source's "
                                        r"focal and distance; --resolution only resizes\)") as error:
        check_model_camera(prepared, "test", trained, "ckpt")
    assert "synth-heads OUT" not in str(error.value)


# --------------------------------------------------------------------------- 6: the report's words


def probes_report(change: float, model_yaw: float | None) -> ProbeReport:
    pupils = PupilFollowing(model_yaw, None, -1.0, -0.87)
    sweep = SweepResult(Following(None, None, 25.0, 25), change, 0.925 * change, pupils, 25, 1)
    swap = SwapResult(0.0412, 1.5e-6, 0.0, 3.2e-7, 3.55e-5, 6)
    return ProbeReport(sweep, swap, np.zeros((1, 4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), (1, 1), ("0, 0",))


def test_small_changes_keep_three_significant_digits():
    text = "\n".join(probes_markdown(probes_report(2.28e-8, None)))
    assert "eyes 2.28e-08, rest of the face 2.11e-08: rest / eyes = 0.925" in text
    assert "eyes 0.0412, rest 1.5e-06; when the gaze is swapped: eyes 0, rest 3.2e-07" in text
    assert "differ by 3.55e-05 outside the eyes" in text


@pytest.mark.parametrize("model_yaw, sentence", [
    (None, "The direction in which the model moves the pupils in yaw could not be read (an r above is n/a)."),
    (-0.5, "The model moves the pupils in the data's direction in yaw."),
    (0.5, "The model moves the pupils OPPOSITE to the data's direction in yaw."),
])
def test_the_pupils_direction_is_said_only_when_read(model_yaw, sentence):
    text = "\n".join(probes_markdown(probes_report(0.01, model_yaw)))
    assert sentence in text and "unknown" not in text


# --------------------------------------------------------------------------- 7: a run folder for a checkpoint


@pytest.fixture
def run(tmp_path, tiny_model) -> Path:
    """A training run folder: two checkpoints and an unfinished step folder (no config.json)."""
    for step in (10, 20):
        save_pretrained(tmp_path / "RUN" / "checkpoints" / f"step_{step:07d}", tiny_model)
    (tmp_path / "RUN" / "checkpoints" / "step_0000030").mkdir()
    return tmp_path / "RUN"


def test_a_run_folder_given_to_evaluate_names_its_newest_checkpoint(tmp_path, store, run):
    newest = run / "checkpoints" / "step_0000020"
    message = f"{run}/config.json: missing: {run} is a training run folder, not a checkpoint; give one of its checkpoints, " \
              f"e.g. the newest, {newest}"
    with pytest.raises(CheckpointError) as error:
        evaluate(run, store, tmp_path / "out", QUICK)
    assert str(error.value) == message and not (tmp_path / "out").exists()
    result = cli_evaluate(run, store, tmp_path / "out")
    assert result.exit_code == 2 and lines(result.output) == [f"error: {message}"]


def test_a_run_folder_given_to_finetune_names_its_newest_checkpoint(tmp_path, store, run):
    result = runner.invoke(app, ["finetune", str(run), str(store), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2 and len(lines(result.output)) == 1
    assert result.output.strip().endswith(f"e.g. the newest, {run / 'checkpoints' / 'step_0000020'}")
    assert not (tmp_path / "ft").exists()


def test_a_run_with_no_checkpoint_yet_says_so(tmp_path, store):
    (tmp_path / "RUN" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"RUN is a training run folder, not a checkpoint; .*checkpoints holds no "
                                              r"checkpoint yet"):
        evaluate(tmp_path / "RUN", store, tmp_path / "out", QUICK)
