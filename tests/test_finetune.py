"""Personalised fine-tuning, GazeNeRF's protocol (train/finetune.py); the normalisation checkpoints
carry from training and fine-tuning into synthesis (a store at GazeNeRF's 680 mm, not the default 950)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gazegen.checkpoint import CheckpointError, checkpoint_normalisation, load_checkpoint, load_train_state, save_pretrained
from gazegen.config import FinetuneConfig, NormalisationConfig, RigConfig, SynthHeadsConfig, TrainConfig, load_config, load_synth_config
from gazegen.data.heads import synthesize_store
from gazegen.data.schema import decode_depth_png
from gazegen.data.xgaze import DataError, open_subject
from gazegen.pipelines.inputs import decode_sources
from gazegen.pipelines.graph import local_records
from gazegen.pipelines.plan import plan_run, stage_settings
from gazegen.train.depth_prior import DepthPriorError
from gazegen.train.finetune import finetune_config, finetune_model, groups, run_finetune
from gazegen.train.trainer import run_training

NORM_680 = NormalisationConfig(distance_mm=680.0)  # GazeNeRF's 512 px camera: another distance than the default 950 mm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store (2 train subjects, subject0002 held out) and a tiny checkpoint trained 1 step on it."""
    root = tmp_path_factory.mktemp("finetune")
    store = synthesize_store(root / "heads", SynthHeadsConfig(subjects=3, resolution=64, gazes=3, test_subjects=1,
                                                               rig=RigConfig(views=4), normalisation=NORM_680), workers=1)
    cfg = load_config(TrainConfig, None, ["model=model/tiny.toml", "loss.perceptual=false", "data.workers=0",
                                          "data.val_samples=2", "max_steps=1", "val_every=0", "tensorboard=false",
                                          "optim.lr_encoder=1e-3", "optim.lr_renderer=1e-3", "optim.lr_gaze=1e-3"])
    return store, run_training(cfg, store, root / "run").checkpoint


def test_groups_follow_file_order():
    inputs, targets = groups(200, 100)
    assert inputs.tolist() == list(range(100)) and targets.tolist() == list(range(100, 200))  # GazeNeRF: 100 + 100
    inputs, targets = groups(12, 100)
    assert inputs.tolist() == list(range(6)) and targets.tolist() == list(range(6, 12))  # fewer: half each
    with pytest.raises(DataError):
        groups(1, 100)


def test_a_subject_without_depth_is_named_before_any_is_fine_tuned(trained, tmp_path):
    """The run's dataset depth prior reads each subject's 'depth': one without it stops the run before the first."""
    store, checkpoint = trained
    bare = shutil.copytree(store, tmp_path / "heads")
    lacking = bare / "train" / "subject0001.h5"
    with h5py.File(lacking, "a") as f:
        del f["depth"]
    with pytest.raises(DepthPriorError, match=rf"{lacking}: no 'depth' key"):
        run_finetune(checkpoint, bare, tmp_path / "ft", ["subject0002", "subject0001"], FinetuneConfig(epochs=1, group_size=6))
    assert not (tmp_path / "ft").exists()


def test_finetune_writes_one_checkpoint_per_subject_from_the_input_group(trained, tmp_path):
    store, checkpoint = trained
    [result] = run_finetune(checkpoint, store, tmp_path / "ft", ["subject0002"], FinetuneConfig(epochs=2, group_size=6))
    assert result.subject == "subject0002"
    assert result.checkpoint == tmp_path / "ft" / "subject0002" / "checkpoints" / "step_0000002"  # 6 inputs, batch 4: 1 step x 2 epochs
    assert load_train_state(result.checkpoint)["step"] == 2
    header = json.loads((result.checkpoint / "config.json").read_text())
    assert header["metadata"]["subject"] == "subject0002" and header["metadata"]["train_config"]["epochs"] == 2
    heads_camera = dataclasses.replace(NORM_680.at_resolution(64), eye_above_centre_mm=0.0)  # looking at the eye midpoint
    assert checkpoint_normalisation(result.checkpoint) == heads_camera  # the subject's camera
    base, tuned = load_checkpoint(checkpoint).state_dict(), load_checkpoint(result.checkpoint).state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    for scores in (result.before, result.after):
        assert np.isfinite(scores["psnr_eyes"]) and np.isfinite(scores["depth_l1_mm"])
    records = [json.loads(line) for line in (tmp_path / "ft" / "subject0002" / "log.jsonl").read_text().splitlines()]
    assert "6 training images" in records[0]["message"]  # the input group only
    # the training run's settings, with the protocol's epochs
    cfg = finetune_config(checkpoint, FinetuneConfig(epochs=10), None)
    assert (cfg.epochs, cfg.model, cfg.loss.perceptual, cfg.optim.lr_gaze) == (10, "model/tiny.toml", False, 1e-3)


def test_finetune_model_on_samples_in_memory(trained):
    store, checkpoint = trained
    model = load_checkpoint(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with open_subject(store / "test" / "subject0002.h5") as reader:
        samples = reader.read(0, 6)
    tuned = finetune_model(model, samples, epochs=1, train_cfg=finetune_config(checkpoint, FinetuneConfig(), None))
    assert tuned is model and not tuned.training
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())


def test_the_trained_normalisation_frames_the_inputs_and_scales_the_depth_of_synthesis(trained, tmp_path):
    store, checkpoint = trained
    norm = dataclasses.replace(NORM_680.at_resolution(64), eye_above_centre_mm=0.0)  # the heads' framing: eye midpoint
    assert checkpoint_normalisation(checkpoint) == norm  # written by the trainer, from the store's files
    subject = store / "test" / "subject0002.h5"
    cfg = load_synth_config(None, ["depth_min_alpha=0.0", "cpu_threads=1"], grid="view", view_yaw="-10:10:2", crop="never")
    run = plan_run(checkpoint, subject, cfg)
    decode, _ = stage_settings(run)
    assert run.normalisation == norm and decode.normalisation == norm  # photos are cropped to this framing too
    with open_subject(subject) as reader:
        patch = reader[0].image
    [decoded] = decode_sources(run.records[:1], decode)
    np.testing.assert_array_equal(decoded.image, patch)  # the store's own camera: no re-zoom (at 950 mm it shrinks 0.72x)
    records = next(local_records(run, run.shards[:1]))
    model = load_checkpoint(checkpoint)
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 127.5 - 1
    for i in range(2):
        with torch.no_grad():
            out = model(x, torch.tensor(records["gaze_head"][i : i + 1]), torch.tensor(records["camera"][i : i + 1]))
        depth = F.interpolate(out.depth, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].double().numpy()
        expected = depth * 680.0 / norm.radius  # millimetres of the 680 mm camera (950 mm would read 1.40x deeper)
        np.testing.assert_allclose(decode_depth_png(records["depth"][i]), expected, atol=0.06)
    bare = save_pretrained(tmp_path / "bare", model)  # no normalisation recorded
    with pytest.raises(CheckpointError, match="records no normalisation.*--set normalisation.distance_mm"):
        plan_run(bare, subject, cfg)
    given = ["normalisation.distance_mm=680.0", "normalisation.resolution=512", "normalisation.eye_above_centre_mm=0"]
    again = plan_run(bare, subject, load_synth_config(None, given))
    assert again.normalisation == norm  # or set on the command line


# --------------------------------------------------------------------------- the command line


def finetune_cli(checkpoint, data, out, *args):
    from typer.testing import CliRunner

    from gazegen.cli import app

    return CliRunner().invoke(app, ["finetune", str(checkpoint), str(data), "--out", str(out), "--set", "group_size=6", *args])


def lines(text: str) -> list[str]:
    """The lines of a command's stdout or stderr, less tqdm's progress bars (stderr)."""
    return [l for l in (line.rpartition("\r")[2] for line in text.split("\n")) if l.strip() and not l.startswith("train:")]


def interrupt_at_call(monkeypatch, n: int, *, again: bool = False) -> None:
    """Ctrl-C during the ``n``-th training step of the command, counted across subjects (``again``: a second Ctrl-C,
    which raises KeyboardInterrupt at once)."""
    import signal

    from gazegen.train import trainer

    step, calls = trainer._Loop.step, []

    def interrupted(self, batch):
        terms = step(self, batch)
        calls.append(1)
        if len(calls) == n:
            if again:
                raise KeyboardInterrupt
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the handler the trainer installed
        return terms

    monkeypatch.setattr(trainer._Loop, "step", interrupted)


def test_ctrl_c_stops_the_whole_command_says_what_was_kept_and_exits_130(trained, tmp_path, monkeypatch, recwarn):
    """Ctrl-C once printed a NaN PSNR line, then fine-tuned the next subject in full and exited 0."""
    store, checkpoint = trained
    out = tmp_path / "ft"
    interrupt_at_call(monkeypatch, 5)  # 1 step per epoch, 3 epochs: step 2 of the second subject
    subjects = ["--subject", "subject0002", "--subject", "subject0001", "--subject", "subject0000"]
    result = finetune_cli(checkpoint, store, out, "--epochs", "3", *subjects)
    assert result.exit_code == 130, result.output
    assert lines(result.stdout)[0].startswith("subject0002: PSNR eyes ")
    assert lines(result.stderr)[-1] == (f"interrupted: finished: subject0002 (scores in {out / 'finetune.json'}); subject0001 stopped at "
                                 f"step 2: {out / 'subject0001' / 'checkpoints' / 'step_0000002'} is part-way; redo a subject "
                                 "with --subject NAME --overwrite")
    assert "nan" not in result.output.lower() and "{" not in result.output
    assert not (out / "subject0000").exists()  # no later subject started
    report = json.loads((out / "finetune.json").read_text())["subjects"]
    assert (report["subject0002"]["status"], report["subject0001"]["status"]) == ("finished", "interrupted")
    assert not [w for w in recwarn if "No artists" in str(w.message)]  # no empty legend for a run stopped early
    monkeypatch.undo()
    refused = finetune_cli(checkpoint, store, out, "--epochs", "3", "--subject", "subject0001")
    assert lines(refused.output) == [f"error: {out / 'subject0001'}: already holds a fine-tuning stopped part-way ("
                                     f"{out / 'subject0001' / 'checkpoints' / 'step_0000002'}); pass --overwrite to redo it, "
                                     "or choose another --out"]
    result = finetune_cli(checkpoint, store, out, "--epochs", "3", "--subject", "subject0001", "--overwrite")  # the advice given
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune.json").read_text())["subjects"]["subject0001"]["step"] == 3


def test_a_second_ctrl_c_exits_130_naming_the_finished_subjects(trained, tmp_path, monkeypatch):
    store, checkpoint = trained
    interrupt_at_call(monkeypatch, 2, again=True)  # inside the second subject
    result = finetune_cli(checkpoint, store, tmp_path / "ft", "--epochs", "1", "--subject", "subject0002", "--subject", "subject0001")
    assert result.exit_code == 130, result.output
    assert lines(result.stderr)[-1] == (f"interrupted: finished: subject0002 (scores in {tmp_path / 'ft' / 'finetune.json'}); redo a "
                                 "subject with --subject NAME --overwrite")


def test_a_rerun_into_the_same_out_is_refused_naming_overwrite_which_redoes_it(trained, tmp_path):
    """The refusal once said `pass --resume`, an option finetune does not have."""
    store, checkpoint = trained
    out = tmp_path / "ft"
    assert finetune_cli(checkpoint, store, out, "--epochs", "1").exit_code == 0
    (out / "subject0002" / "stale.txt").write_text("from the first run")
    result = finetune_cli(checkpoint, store, out, "--epochs", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert lines(result.output) == [f"error: {out / 'subject0002'}: already holds a fine-tuning ({out / 'subject0002' / 'checkpoints' / 'step_0000001'}); "
                             "pass --overwrite to redo it, or choose another --out"]
    result = finetune_cli(checkpoint, store, out, "--epochs", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "subject0002" / "checkpoints").iterdir()] == ["step_0000002"]
    assert not (out / "subject0002" / "stale.txt").exists()


def test_an_out_that_is_a_file_is_refused_in_one_line_before_any_work(trained, tmp_path):
    store, checkpoint = trained
    (tmp_path / "afile").write_text("hi")
    result = finetune_cli(checkpoint, store, tmp_path / "afile", "--epochs", "1")
    assert result.exit_code == 2 and lines(result.output) == [f"error: {tmp_path / 'afile'}: not a folder"]
    assert (tmp_path / "afile").read_text() == "hi"


def test_one_h5_file_is_fine_tuned_with_a_readable_line_and_a_json_report(trained, tmp_path):
    """A lone h5 file was once called `not a training store`; the scores were raw dicts with 16-digit floats."""
    store, checkpoint = trained
    out = tmp_path / "ft"
    result = finetune_cli(checkpoint, store / "test" / "subject0002.h5", out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    [line, scores] = lines(result.stdout)
    pattern = r"subject0002: PSNR eyes \d+\.\d\d -> \d+\.\d\d dB, face \d+\.\d\d -> \d+\.\d\d dB, depth L1 \d+\.\d\d -> \d+\.\d\d mm: "
    assert re.fullmatch(pattern + re.escape(str(out / "subject0002" / "checkpoints" / "step_0000001")), line), line
    assert scores == f"scores: {out / 'finetune.json'}"
    report = json.loads((out / "finetune.json").read_text())
    assert report["checkpoint"] == str(checkpoint)
    entry = report["subjects"]["subject0002"]
    assert entry["status"] == "finished" and entry["checkpoint"] == str(out / "subject0002" / "checkpoints" / "step_0000001")
    assert f"{entry['before']['psnr_eyes']:.2f}" in line and f"{entry['after']['depth_l1_mm']:.2f}" in line
