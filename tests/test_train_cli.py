"""`gazegen train` end to end on a tiny store: a resume keeps the run's own settings, Ctrl-C exits 130 with the way
on, and a store the settings cannot train on is refused at setup, in one line, before the run folder exists."""

from __future__ import annotations

import json
import logging
import shutil
import signal

import h5py
import pytest
from typer.testing import CliRunner

from gazegen.checkpoint import load_checkpoint
from gazegen.cli import app
from gazegen.config import CONFIG_DIR, RigConfig, SynthHeadsConfig, TrainConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.train import trainer
from gazegen.train.errors import TrainingError
from gazegen.train.subjects import mask_warning, read_subject
from gazegen.train.trainer import checkpoint_dirs

runner = CliRunner()

# configs/train/*.toml's keys at the tiny preset's sizes: a schedule of 4 steps, validation and a checkpoint at the end
TINY = """
model = "model/tiny.toml"
max_steps = 4
device = "cpu"
threads = 1
log_every = 1
val_every = 0
checkpoint_every = 0
tensorboard = false
[loss]
perceptual = false
[optim]
lr_encoder = 2e-3
lr_renderer = 2e-3
lr_gaze = 2e-3
[data]
workers = 0
val_samples = 4
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 procedural subjects (train, validation, test) x 3 gazes x 4 cameras at 64 px: 3 steps per epoch."""
    cfg = SynthHeadsConfig(subjects=3, resolution=64, gazes=3, test_subjects=1, rig=RigConfig(views=4))
    return synthesize_store(tmp_path_factory.mktemp("train-cli") / "heads", cfg, workers=1)


@pytest.fixture(scope="module")
def bare_store(store, tmp_path_factory):
    """The same store as the official 224 px ETH-XGaze h5 files come: no depth, no face or eye masks."""
    bare = shutil.copytree(store, tmp_path_factory.mktemp("train-cli-bare") / "heads")
    for path in bare.glob("*/*.h5"):
        with h5py.File(path, "a") as f:
            for key in ("depth", "head_mask", "left_eye_mask", "right_eye_mask"):
                del f[key]
    return bare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("train-cli-config") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def stopped_run(store, tiny, tmp_path_factory):
    """A run started as weights/demo-prior's stage A was (a model override on the command line), stopped at step 2 of 4."""
    run = tmp_path_factory.mktemp("train-cli-run") / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(store), "--out", str(run),
                                 "--set", 'model_overrides=["gaze_tokens=2"]', "--max-steps", "2"])
    assert result.exit_code == 0 and "stopped at step 2" in result.output, result.output
    return run


def snapshot(run):
    """What a refused command must leave as it was: the record, the checkpoints and the log."""
    return (run / "train_config.json").read_bytes(), [p.name for p in checkpoint_dirs(run)], (run / "log.jsonl").read_bytes()


def test_resume_continues_with_the_runs_own_settings(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    # the run's model preset has changed since it started (as configs/model/demo.toml did under weights/demo-prior)
    preset = tmp_path / "model.toml"
    preset.write_text((CONFIG_DIR / "model" / "tiny.toml").read_text().replace("high_hidden = 8", "high_hidden = 12"))
    record = json.loads((run / "train_config.json").read_text())
    record["train"]["model"] = str(preset)
    (run / "train_config.json").write_text(json.dumps(record))
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--set", "log_every=2", "--set", "data.workers=1"])
    assert result.exit_code == 0, result.output
    assert "finished at step 4" in result.output  # the run's schedule (max_steps 4), from the run's store
    model = load_checkpoint(run / "checkpoints" / "step_0000004").cfg
    assert (model.gaze_tokens, model.high_hidden) == (2, 8)  # the run's model: its override, its preset as it was
    record = json.loads((run / "train_config.json").read_text())
    assert record["train"]["model_overrides"] == ["gaze_tokens=2"] and record["train"]["max_steps"] == 4
    assert (record["train"]["log_every"], record["train"]["data"]["workers"]) == (2, 1)  # run-time keys: given, used


def test_resume_refuses_other_settings_naming_each_key(stopped_run, store, tiny, tmp_path):
    before = snapshot(stopped_run)
    other = tmp_path / "other-store"
    result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(other), "--out", str(stopped_run), "--resume",
                                 "--set", "max_steps=6", "--set", "optim.decay=cosine", "--set", "threads=2"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert f"{stopped_run}: --resume continues the run with its own settings" in line
    for key in ('max_steps: 4 -> 6', 'model_overrides: ["gaze_tokens=2"] -> []', 'optim.decay: "constant" -> "cosine"',
                f'data: "{store.resolve()}" -> "{other}"', f"Resume with `gazegen train --out {stopped_run} --resume`"):
        assert key in line, key
    assert "threads: " not in line  # a run-time key may differ
    assert snapshot(stopped_run) == before


def test_a_data_parallel_resume_is_refused_before_ray_starts(stopped_run, store, tiny):
    from gazegen.train.distributed import run_distributed

    before = snapshot(stopped_run)
    cfg = load_config(TrainConfig, tiny, ["max_steps=8"])
    with pytest.raises(TrainingError, match=r'max_steps: 4 -> 8; model_overrides: \["gaze_tokens=2"\] -> \[\]'):
        run_distributed(cfg, store, stopped_run, resume=True, workers=2)
    assert not (stopped_run / "ray").exists() and snapshot(stopped_run) == before


def test_a_checkpoint_of_another_architecture_names_the_values(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    record = json.loads((run / "train_config.json").read_text())
    record["model"]["gaze_tokens"] = 4  # a record that is not the checkpoint's
    (run / "train_config.json").write_text(json.dumps(record))
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    assert "its architecture differs from the run's model (checkpoint -> run): gaze_tokens: 2 -> 4." in result.output


def test_ctrl_c_checkpoints_exits_130_and_says_how_to_go_on(store, tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    step = trainer._Loop.step

    def interrupted_at_2(self, batch):  # Ctrl-C during step 2: Python calls the handler the trainer installed
        terms = step(self, batch)
        if self.st.step == 2:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return terms

    monkeypatch.setattr(trainer._Loop, "step", interrupted_at_2)
    result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(store), "--out", str(run)])
    assert result.exit_code == 130, result.output
    assert "interrupted at step 2" in result.output
    assert f"continue it with `gazegen train --out {run} --resume`" in result.output
    assert [p.name for p in checkpoint_dirs(run)] == ["step_0000002"]
    monkeypatch.undo()
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])  # the command it gave
    assert result.exit_code == 0 and "finished at step 4" in result.output, result.output


def test_a_store_without_depth_is_refused_before_the_run_folder(bare_store, tiny, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(bare_store), "--out", str(run),
                                 "--max-steps", "2", "--set", "data.workers=1"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"error: {bare_store / 'train'}/subject") and "\n" not in line
    assert "no 'depth' key (nor have 1 other subject file(s))" in line
    assert "depth_prior.kind = 'teacher' or 'files', or loss.depth_weight = 0" in line
    assert not run.exists()


def test_a_procedural_store_has_every_mask_and_gets_no_warning(store):
    assert mask_warning(store, [read_subject(p) for p in sorted(store.glob("*/*.h5"))]) is None


def test_a_store_without_masks_is_trained_with_one_warning(bare_store, tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gazegen.train"):
        result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(bare_store), "--out", str(tmp_path / "run"),
                                     "--max-steps", "1", "--set", "loss.depth_weight=0"])
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{bare_store}: 2 of 2 subject file(s)")
    for part in ("no eye masks (left_eye_mask, right_eye_mask)", "loss/eyes is 0", "psnr_eyes is nan",
                 "no face mask (head_mask)", "psnr_face cover the whole image"):
        assert part in warnings[0], part


def test_one_subject_file_as_data_asks_for_the_store_folder(store, tiny, tmp_path):
    file = store / "train" / "subject0000.h5"
    result = runner.invoke(app, ["train", "--config", str(tiny), "--data", str(file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert (f"error: --data {file}: a file; --data wants the training store's folder, the one holding "
            f"train_test_split.json or train/*.h5 (here perhaps {store})") in result.output
    assert not (tmp_path / "run").exists()


def test_a_new_run_needs_its_store(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "error: --data: the training store folder is required (with --resume the run's own store is used)" in result.output
    assert not (tmp_path / "run").exists()


def ctrl_c_twice_at(monkeypatch, at: int) -> None:
    """Ctrl-C twice during step ``at`` (after its update): Python calls the handler the trainer installed, twice."""
    step = trainer._Loop.step

    def interrupted(self, batch):
        terms = step(self, batch)
        if self.st.step == at:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the first: a checkpoint after this step
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the second: abort at once, without one
        return terms

    monkeypatch.setattr(trainer._Loop, "step", interrupted)


def aborted_line(output: str) -> str:
    found = [line for line in output.splitlines() if line.startswith("aborted: ")]
    assert len(found) == 1, output
    return found[0]


def test_a_second_ctrl_c_names_the_checkpoint_kept_and_how_to_resume(stopped_run, tmp_path, monkeypatch):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    ctrl_c_twice_at(monkeypatch, 3)
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 130, result.output
    assert aborted_line(result.output) == (f"aborted: the newest checkpoint kept is {run / 'checkpoints' / 'step_0000002'}; "
                                           f"continue from it with `gazegen train --out {run} --resume`")
    assert [p.name for p in checkpoint_dirs(run)] == ["step_0000002"]  # step 3 was not saved
    monkeypatch.undo()
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])  # the command it gave
    assert result.exit_code == 0 and "finished at step 4" in result.output, result.output


def test_a_second_ctrl_c_before_any_checkpoint_says_none_was_kept(store, tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    command = ["train", "--config", str(tiny), "--data", str(store), "--out", str(run)]
    ctrl_c_twice_at(monkeypatch, 1)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert aborted_line(result.output) == f"aborted: no checkpoint was kept ({run} has none); the same command starts the run again"
    assert checkpoint_dirs(run) == []
    monkeypatch.undo()
    result = runner.invoke(app, command)  # as it says
    assert result.exit_code == 0 and "finished at step 4" in result.output, result.output


def test_a_run_whose_store_moved_resumes_on_its_new_path(stopped_run, store, tmp_path, caplog):
    """The recorded store gone: --resume alone says to give --data; --resume --data NEW continues the run with a warning
    (its other settings still its own), and records the new path."""
    run = shutil.copytree(stopped_run, tmp_path / "run")
    moved, gone = shutil.copytree(store, tmp_path / "moved"), tmp_path / "gone"
    record = json.loads((run / "train_config.json").read_text())
    record["data"] = str(gone)  # where the store was when the run started
    (run / "train_config.json").write_text(json.dumps(record))
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {run}: the run's store {gone} is gone (moved or deleted); pass --data with its "
                                     f"new path: `gazegen train --out {run} --resume --data STORE`")
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--data", str(moved), "--set", "max_steps=6"])
    assert result.exit_code == 2, result.output
    assert "max_steps: 4 -> 6" in result.output and "data: " not in result.output  # the store may move, the settings not
    assert snapshot(run) == before
    with caplog.at_level(logging.WARNING, logger="gazegen.train"):
        result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--data", str(moved)])
    assert result.exit_code == 0 and "finished at step 4" in result.output, result.output
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"--data {moved}: the run's store {gone} no longer exists; resuming on {moved} as the run's store (its other "
        "settings stay its own)"]
    assert json.loads((run / "train_config.json").read_text())["data"] == str(moved.resolve())


def test_a_resume_names_the_step_folders_it_passes_over_and_the_way_past_a_damaged_checkpoint(stopped_run, tmp_path, caplog):
    """A step folder without train_state.pt (a checkpoint written part-way) is passed over with a warning naming it; a
    newest checkpoint whose weights file is damaged is refused naming the file and the checkpoint before it."""
    run = shutil.copytree(stopped_run, tmp_path / "run")
    assert runner.invoke(app, ["train", "--out", str(run), "--resume", "--max-steps", "3"]).exit_code == 0  # steps 2, 3
    before, newest = checkpoint_dirs(run)[-2:]
    (run / "checkpoints" / "step_0000004").mkdir()  # a checkpoint cut short before its train_state.pt
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:100])  # truncated
    with caplog.at_level("WARNING", logger="gazegen.train"):
        result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert f"step_0000004: no train_state.pt (written part-way): resuming from {newest}" in caplog.text
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert str(newest / "model.safetensors") in result.output
    assert result.output.rstrip().endswith(f"; delete {newest} to resume from {before}")
    shutil.rmtree(newest)  # the advice given
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 0 and "finished at step 4" in result.output, result.output
