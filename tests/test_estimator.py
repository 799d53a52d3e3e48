"""The reference gaze estimator: it learns (against an exact constant baseline), from a store and from
Parquet shards, and its checkpoint round-trips."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gazegen.checkpoint import CheckpointError, load_pretrained, save_pretrained
from gazegen.config import (PUBLISHED_NORMALISATIONS, EstimatorConfig, EstimatorNetConfig, EyePatchConfig, RigConfig,
                            SynthHeadsConfig, load_config)
from gazegen.data.heads import synthesize_store
from gazegen.data.xgaze import DataError, open_subject
from gazegen.geometry import angular_error, pitchyaw_to_vector
from gazegen.data import schema
from gazegen.metrics.estimator import GazeEstimator
from gazegen.pipelines.shards import ShardWriter, plan_shards
from gazegen.evaluation.estimator import StoreGazeDataset, evaluate_estimator, flip_batch, store_files, train_estimator

HEADS = SynthHeadsConfig(subjects=3, test_subjects=1, resolution=32, gazes=4, seed=11, rig=RigConfig(views=6))
NET = EstimatorNetConfig(resolution=32, width=16, blocks=(1, 1, 1))
NET_EYES = EstimatorNetConfig(resolution=32, width=16, blocks=(1, 1, 1), eyes=EyePatchConfig(width=8, pixels=(12, 8)))
# 1200 steps: with lighting drawn per subject (not per frame) the gaze must be read from the eyes, not from a
# frame's lighting; at 150 steps the train-set gaze error was 33 deg (500: 18 deg) against a 51 deg constant.
# Seeds 0-5 on an AMD EPYC (no AMX): 800 steps 11.2-14.0 deg, across the 12.8 bar (seed 0, the test's, passed
# on the Intel machines of earlier sessions and gave 14.0 here); 1200 steps 10.7-11.5; 1600 steps 10.7-10.8.
TRAIN = EstimatorConfig(net=NET, steps=1200, batch_size=16, lr=5e-3, warmup_steps=5, flip=False, shuffle_buffer=64,
                        log_every=1000, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthesize_store(tmp_path_factory.mktemp("heads") / "store", HEADS, workers=1)


@pytest.fixture(scope="module")
def shards(store, tmp_path_factory) -> Path:
    """The store's training images as two Parquet shards (one source per subject file)."""
    out = tmp_path_factory.mktemp("shards")
    files = store_files(store, "train")
    for spec in plan_shards([str(f) for f in files], 1):
        with open_subject(spec.inputs[0]) as reader, ShardWriter(str(out), spec, row_group_size=8) as writer:
            samples = list(reader)
            n = len(samples)
            writer.write({
                "image": [schema.encode_png(s.image) for s in samples],
                "depth": [schema.encode_depth_png(np.full(s.image.shape[:2], 900.0)) for s in samples],
                "alpha": [schema.encode_alpha_png(np.ones(s.image.shape[:2], bool)) for s in samples],
                "gaze": np.stack([s.gaze for s in samples]), "head_pose": np.stack([s.head_pose for s in samples]),
                "gaze_head": np.stack([s.gaze_head for s in samples]), "view_offset": np.zeros((n, 2)),
                "source_head_pose": np.stack([s.head_pose for s in samples]), "face_mat_norm": np.tile(np.eye(3).ravel(), (n, 1)),
                "camera": np.stack([s.camera for s in samples]), "source_id": [reader.subject] * n,
                "source_path": [spec.inputs[0]] * n, "gaze_index": [s.frame_index for s in samples],
                "view_index": [s.cam_index for s in samples], "checkpoint_hash": ["0" * 64] * n, "seed": [0] * n,
            })  # fmt: skip
    return out


def train_labels(store: Path) -> tuple[np.ndarray, np.ndarray]:
    gaze, head = [], []
    for f in store_files(store, "train"):
        with open_subject(f) as reader:
            gaze.append(reader.labels.gaze)
            head.append(reader.labels.head_pose)
    return np.concatenate(gaze).astype(np.float64), np.concatenate(head).astype(np.float64)


def best_constant_error(labels: np.ndarray) -> float:
    """Mean angular error (deg) of the better of two constants: the mean (pitch, yaw), the mean direction."""
    mean_angles = labels.mean(0)
    v = pitchyaw_to_vector(labels).mean(0)
    mean_direction = np.array([np.arcsin(-v[1] / np.linalg.norm(v)), np.arctan2(-v[0], -v[2])])
    return min(float(angular_error(np.tile(c, (len(labels), 1)), labels).mean()) for c in (mean_angles, mean_direction))


@pytest.mark.parametrize(("source", "net"), [("store", NET), ("parquet", NET), ("store", NET_EYES)],
                         ids=["store", "parquet", "store-eyes"])
def test_learns_well_below_the_constant_baseline(source, net, store, shards, tmp_path):
    gaze, head = train_labels(store)
    data = store if source == "store" else shards
    result = train_estimator(data, tmp_path / "est", dataclasses.replace(TRAIN, net=net))
    ev = result.train_eval
    assert ev.images == len(gaze) == 48
    # the report's constant baseline is exactly the mean-label prediction
    assert ev.constant_gaze_error == pytest.approx(float(angular_error(np.tile(gaze.mean(0), (len(gaze), 1)), gaze).mean()), rel=1e-4)
    gaze_floor, head_floor = best_constant_error(gaze), best_constant_error(head)
    assert gaze_floor > 20 and head_floor > 20  # the labels vary: a constant cannot do well
    assert ev.gaze_error < 0.25 * gaze_floor, ev.summary()
    assert ev.head_error < 0.25 * head_floor, ev.summary()
    if source == "store":  # held-out subject of the store's test split, evaluated after training
        assert result.test_eval is not None and result.test_eval.images == 24
    report = json.loads((tmp_path / "est" / "estimator_report.json").read_text())
    assert report["train_eval"]["gaze_error"] == pytest.approx(ev.gaze_error)


def test_checkpoint_round_trip(store, tmp_path):
    torch.manual_seed(0)
    model = GazeEstimator(NET_EYES)
    for p in model.parameters():  # non-trivial weights (the head starts at zero)
        p.data.normal_(0, 0.1)
    model.eval()
    save_pretrained(tmp_path / "ckpt", model, metadata={"note": "test"})
    loaded = load_pretrained(tmp_path / "ckpt", GazeEstimator)
    assert loaded.cfg == NET_EYES and not loaded.training
    x = torch.rand(3, 3, 48, 48) * 2 - 1  # resized to 32 inside
    a, b = model(x), loaded(x)
    assert torch.equal(a.gaze, b.gaze) and torch.equal(a.head_pose, b.head_pose)
    assert a.gaze.shape == (3, 2) and a.gaze.abs().sum() > 0
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert header["class"] == "GazeEstimator" and header["metadata"] == {"note": "test"}
    # estimator eval of the saved checkpoint = the numbers of a direct prediction
    ev = evaluate_estimator(tmp_path / "ckpt", store, split="test")
    assert ev.images == 24 and np.isfinite(ev.gaze_error)
    header["class"] = "LiveGaze"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="GazeEstimator"):
        load_pretrained(tmp_path / "ckpt", GazeEstimator)


def test_eye_patches_are_placed_by_a_detached_head_pose():
    """The crop positions are not trained through: a gaze loss gives the head-pose layer no gradient,
    while the eye branch and the face trunk (through the gaze layer) get one."""
    torch.manual_seed(0)
    model = GazeEstimator(NET_EYES)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    model(torch.rand(2, 3, 32, 32) * 2 - 1).gaze.square().sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.head_pose.parameters())
    assert all(p.grad is not None and p.grad.any() for p in (model.eyes.stem[0].weight, model.face.stem[0].weight))


def test_eye_branch_refuses_a_store_of_another_camera(store, tmp_path):
    """Eye patches are placed for one normalised camera: a store taken with another is an error naming its file."""
    eyes = dataclasses.replace(NET_EYES.eyes, normalisation=PUBLISHED_NORMALISATIONS["xgaze224"])
    cfg = dataclasses.replace(TRAIN, net=dataclasses.replace(NET_EYES, eyes=eyes))
    with pytest.raises(DataError, match=r"subject0000\.h5: normalised camera"):
        train_estimator(store, tmp_path / "est", cfg)


def test_store_dataset_yields_every_row_once(store):
    files = store_files(store, "train")
    ds = StoreGazeDataset(files, shuffle_buffer=7, seed=3, chunk=5)
    rows = [(r["subject"], tuple(r["gaze"].tolist())) for r in ds]
    assert len(rows) == len(set(rows)) == len(ds) == 48
    ds.set_epoch(1)
    assert [(r["subject"], tuple(r["gaze"].tolist())) for r in ds] != rows  # reshuffled, same set
    assert sorted((r["subject"], tuple(r["gaze"].tolist())) for r in ds) == sorted(rows)


def test_flip_negates_yaw_only():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    gaze, head = torch.tensor([[0.1, 0.2], [0.3, -0.4]]), torch.tensor([[0.5, 0.6], [-0.7, 0.8]])
    which = torch.tensor([True, False])
    fi, fg, fh = flip_batch(image, gaze, head, which)
    assert torch.equal(fi[0], image[0].flip(-1)) and torch.equal(fi[1], image[1])
    assert torch.equal(fg, torch.tensor([[0.1, -0.2], [0.3, -0.4]])) and torch.equal(fh, torch.tensor([[0.5, -0.6], [-0.7, 0.8]]))


def test_default_preset_loads():
    cfg = load_config(EstimatorConfig, Path(__file__).resolve().parents[1] / "configs" / "estimator" / "default.toml")
    assert cfg == EstimatorConfig()
    demo = load_config(EstimatorConfig, Path(__file__).resolve().parents[1] / "configs" / "estimator" / "demo.toml")
    assert demo.steps < cfg.steps and demo.net.eyes.width > 0 and cfg.net.eyes.width == 0
    # the demo judge's eye patches are placed for the camera of the procedural heads it judges
    assert demo.net.eyes.normalisation == SynthHeadsConfig().normalisation


# --------------------------------------------------------------------------- `gazegen estimator train`: refusals before training

TINY = ["--set", "steps=2", "--set", "batch_size=4", "--set", "shuffle_buffer=0", "--set", "net.resolution=32",
        "--set", "net.width=8", "--set", "eval_images=8"]


def estimator_train(*args: str):
    from typer.testing import CliRunner

    from gazegen.cli import app

    return CliRunner().invoke(app, ["estimator", "train", *map(str, args)], env={"COLUMNS": "400"})


@pytest.fixture
def no_training(monkeypatch):
    """A refusal must come before the first step: training fails the test."""
    import gazegen.evaluation.estimator as estimator

    def train(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(estimator, "_train_steps", train)


def refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {message}"], result.output


def foreign_folder(path: Path, kind: str) -> Path:
    path.mkdir()
    if kind == "notes":
        (path / "notes.txt").write_text("mine\n")
    else:  # a copied LiveGaze checkpoint
        (path / "config.json").write_text(json.dumps({"class": "LiveGaze", "format_version": 1}))
        (path / "model.safetensors").write_bytes(b"weights")
    return path


@pytest.mark.parametrize("kind,held", [("notes", "holds notes.txt"), ("livegaze", "no GazeEstimator config.json")])
def test_train_refuses_a_folder_that_is_not_an_estimator_checkpoint(store, tmp_path, no_training, kind, held):
    out = foreign_folder(tmp_path / "out", kind)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--overwrite"]):  # --overwrite replaces an earlier estimator only
        result = estimator_train(store, "--out", out, *TINY, *extra)
        refused(result, f"{out}: not empty and not an estimator checkpoint ({held}); give a new or empty folder")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing set aside


def test_train_refuses_its_own_store_as_out(store, no_training):
    files = sorted(store.rglob("*"))
    result = estimator_train(store, "--out", store, *TINY, "--overwrite")
    refused(result, f"{store}: not empty and not an estimator checkpoint (holds test, train, train_test_split.json); "
                    "give a new or empty folder")
    assert sorted(store.rglob("*")) == files


def test_train_replaces_an_earlier_estimator_only_with_overwrite(store, tmp_path):
    out = tmp_path / "est"
    assert estimator_train(store, "--out", out, *TINY).exit_code == 0
    first = (out / "model.safetensors").read_bytes()
    refused(estimator_train(store, "--out", out, *TINY), f"{out}: holds an earlier estimator checkpoint; --overwrite replaces it")
    assert (out / "model.safetensors").read_bytes() == first
    result = estimator_train(store, "--out", out, *TINY, "--set", "seed=1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "estimator_report.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est"]


def test_train_refuses_a_file_as_out(store, tmp_path, no_training):
    afile = tmp_path / "afile"
    afile.write_text("hi\n")
    refused(estimator_train(store, "--out", afile, *TINY), f"{afile}: not a folder")
    assert afile.read_text() == "hi\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_train_refuses_the_working_folder_as_out(store, tmp_path, monkeypatch, no_training):
    monkeypatch.chdir(tmp_path)
    refused(estimator_train(store, "--out", ".", *TINY), ".: the working folder, or one holding it; give a folder in it, "
                                                         "e.g. --out estimator")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--eval", "nosuch"], "nosuch: no such file or folder"),
    (["--set", "eval_split=nosuch"], "{store}/train_test_split.json: no split 'nosuch'"),
    (["--set", "split=nosuch"], "{store}/train_test_split.json: no split 'nosuch'"),
])  # fmt: skip
def test_train_checks_the_evaluation_data_before_training(store, tmp_path, no_training, args, message):
    refused(estimator_train(store, "--out", tmp_path / "est", *TINY, *args), message.format(store=store))
    assert not (tmp_path / "est").exists()


def test_train_reads_a_glob_of_h5_files(store, tmp_path):
    result = estimator_train(f"{store}/train/*.h5", "--out", tmp_path / "est", *TINY)
    assert result.exit_code == 0, result.output
    assert f"train: 8 images of {store}/train/*.h5" in result.output


def test_train_names_unreadable_shards_in_one_line(store, tmp_path, no_training):
    first = sorted((store / "train").glob("*.h5"))[0]
    result = estimator_train(f"{store}/train/*", "--out", tmp_path / "est", *TINY)  # not .h5: read as Parquet
    assert result.exit_code == 2 and result.output.startswith(f"error: {first}: cannot be read as Parquet (") and \
        len(result.output.strip().splitlines()) == 1, result.output
    result = estimator_train(f"file://{tmp_path}/nosuch", "--out", tmp_path / "est", *TINY)
    assert result.exit_code == 2 and result.output.startswith(f"error: file://{tmp_path}/nosuch: cannot read: ") and \
        len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "est").exists()


def test_train_interrupted_says_nothing_was_saved(store, tmp_path, monkeypatch):
    import gazegen.evaluation.estimator as estimator

    def ctrl_c_in_step_2(step, cfg):  # the schedule's factor for the step after the one just taken
        if step == 2:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(estimator, "_lr_factor", ctrl_c_in_step_2)
    result = estimator_train(store, "--out", tmp_path / "est", *TINY, "--set", "steps=5")
    assert result.exit_code == 130, result.output
    assert "interrupted at step 2 of 5: nothing saved" in result.output
    assert not (tmp_path / "est").exists()


def test_train_help_names_the_default_preset_and_how_to_cap_steps():
    from typer.testing import CliRunner

    from gazegen.cli import app

    result = CliRunner().invoke(app, ["estimator", "train", "--help"], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert f"configs/estimator/default.toml ({EstimatorConfig().steps} steps" in text
    assert "configs/estimator/demo.toml" in text and "--set steps=N" in text and "--overwrite" in text


def test_eye_branch_refuses_a_store_framed_about_another_face_centre(store, tmp_path):
    """Eye patches are placed above_centre_mm above the face centre: a store whose camera looks 23.7 mm below the eyes
    (ETH-XGaze's framing) is an error naming its file for patches placed for the heads' eye midpoint (0)."""
    other = shutil.copytree(store, tmp_path / "eth")
    for path in (other / "train").glob("*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs["eye_above_centre_mm"] = 23.7
    assert NET_EYES.eyes.above_centre_mm == 0.0
    with pytest.raises(DataError, match=r"\.h5: its camera looks at a face centre 23\.7 mm below the eyes; the estimator's "
                                        r"eye patches are placed 0 mm above its face centre"):
        train_estimator(other, tmp_path / "est", dataclasses.replace(TRAIN, net=NET_EYES))
