"""Procedural gaze heads (gazegen/data/heads.py, head_model.py): labels proved against the pixels.

Every check reads the store back from h5 and recomputes with independent float64 numpy code
(pixel rays from the stored 25-number camera, closed-form ray-ellipsoid and ray-sphere hits,
back-projection through the stored depth). Two stores: a small 64 px one at the default
framing, and a zoomed 256 px one (about 100 mm across) whose pupils span enough pixels to
measure the eye axes to a small fraction of a degree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from gazegen import geometry as g
from gazegen.config import GazeRangeConfig, NormalisationConfig, RigConfig, SynthHeadsConfig
from gazegen.data.heads import held_out_subjects, rig_head_poses, subject_plan, synthesize_store

SMALL = SynthHeadsConfig(subjects=3, resolution=64, gazes=2, seed=7, rig=RigConfig(views=3))
ZOOM = SynthHeadsConfig(
    subjects=1, test_subjects=0, resolution=256, gazes=6, seed=3,
    normalisation=NormalisationConfig(focal=4800.0, distance_mm=950.0, resolution=512),
    rig=RigConfig(views=5, max_yaw_deg=30.0, max_pitch_deg=20.0),
    gaze=GazeRangeConfig(max_yaw_deg=25.0, max_pitch_deg=15.0),
)
PARALLEL = dataclasses.replace(ZOOM, gazes=4, seed=5, rig=RigConfig(views=1), gaze=dataclasses.replace(ZOOM.gaze, converge=False))
KEYS = ("face_patch", "face_gaze", "face_head_pose", "pitchyaw_head", "camera", "depth", "head_mask",
        "left_eye_mask", "right_eye_mask", "frame_index", "cam_index")


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}


def assert_same_file(a: Path, b: Path) -> None:
    """Same keys, dtypes, shapes, bytes of every dataset and the same attributes.

    (Not the file bytes: HDF5's free-space layout may differ between identical contents.)
    """
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys()), (a, b)
        for key in fa:
            assert fa[key].dtype == fb[key].dtype and fa[key][()].tobytes() == fb[key][()].tobytes(), (a.name, key)
        assert {k: str(v) for k, v in fa.attrs.items()} == {k: str(v) for k, v in fb.attrs.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return synthesize_store(tmp_path_factory.mktemp("small") / "store", SMALL, workers=1)


@pytest.fixture(scope="module")
def zoom(tmp_path_factory) -> dict[str, np.ndarray]:
    return read(synthesize_store(tmp_path_factory.mktemp("zoom") / "store", ZOOM, workers=1) / "train" / "subject0000.h5")


# --------------------------------------------------------------------------- independent geometry


def pixel_rays(camera: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored camera (25,) -> origin (3,) mm, unit directions (H, W, 3), camera forward (3,)."""
    c2w, k = camera[:16].astype(np.float64).reshape(4, 4), camera[16:].astype(np.float64).reshape(3, 3) * res
    j, i = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    local = np.stack([(j - k[0, 2]) / k[0, 0], (i - k[1, 2]) / k[1, 1], np.ones_like(j)], -1)
    d = local @ c2w[:3, :3].T
    return c2w[:3, 3] * MM, d / np.linalg.norm(d, axis=-1, keepdims=True), c2w[:3, 2]


MM = SMALL.camera.distance_mm / SMALL.camera.radius  # mm per world unit (the same for every config here)


def ray_ellipsoid(o: np.ndarray, d: np.ndarray, centre, radii, tilt: float) -> np.ndarray:
    """Entry distance (H, W) of rays into an ellipsoid tilted about x (local y -> (0, cos, sin)); nan on a miss."""
    c, s = np.cos(tilt), np.sin(tilt)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # local -> world
    ol, dl = ((o - centre) @ rot) / radii, (d @ rot) / radii
    a, b, cc = (dl * dl).sum(-1), 2 * (dl * ol).sum(-1), (ol * ol).sum() - 1
    disc = b * b - 4 * a * cc
    with np.errstate(invalid="ignore"):
        return np.where(disc > 0, (-b - np.sqrt(disc)) / (2 * a), np.nan)


def back_project(camera: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Stored camera and depth (H, W) mm -> surface points (H, W, 3), mm world."""
    o, d, forward = pixel_rays(camera, depth.shape[0])
    return o + d * (depth / (d @ forward))[..., None]


def pupil_pixels(sample: dict, eye: str) -> np.ndarray | None:
    """(M, 2) pixel centres (u, v) of a fully visible pupil (black, ringed by iris), else None."""
    black = (sample["face_patch"] == 0).all(-1) & (sample[f"{eye}_eye_mask"] == 255)
    i, j = np.nonzero(black)
    if len(i) < 5:
        return None
    ring = np.zeros_like(black)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ring[np.clip(i + di, 0, black.shape[0] - 1), np.clip(j + dj, 0, black.shape[1] - 1)] = True
    if not (sample[f"{eye}_eye_mask"][ring] == 255).all():  # touches a lid: partly hidden
        return None
    return np.stack([j + 0.5, i + 0.5], -1)


def rows(data: dict, n: int):
    for k in range(n):
        yield {key: value[k] for key, value in data.items()}


# --------------------------------------------------------------------------- layout and labels


def test_store_layout_dtypes_and_masks(small):
    split = json.loads((small / "train_test_split.json").read_text())
    assert split == {"train": ["subject0000.h5", "subject0001.h5"], "test": ["subject0002.h5"]}
    n, res = SMALL.gazes * SMALL.rig.views, SMALL.resolution
    for part, names in split.items():
        for name in names:
            data = read(small / part / name)
            assert set(KEYS) <= set(data)
            assert data["face_patch"].shape == (n, res, res, 3) and data["face_patch"].dtype == np.uint8
            assert data["depth"].shape == (n, res, res) and data["depth"].dtype == np.float32
            for key in ("head_mask", "left_eye_mask", "right_eye_mask"):
                assert data[key].dtype == np.uint8 and set(np.unique(data[key])) == {0, 255}
            assert (data["depth"][data["head_mask"] == 255] > 0).all() and (data["head_mask"][data["depth"] == 0] == 0).all()
            assert (data["head_mask"][data["left_eye_mask"] == 255] == 255).all()
            assert not ((data["left_eye_mask"] == 255) & (data["right_eye_mask"] == 255)).any()
            np.testing.assert_array_equal(data["frame_index"][:, 0], np.repeat(np.arange(SMALL.gazes), SMALL.rig.views))
            np.testing.assert_array_equal(data["cam_index"][:, 0], np.tile(np.arange(SMALL.rig.views), SMALL.gazes))
            assert 0.15 < (data["head_mask"] == 255).mean() < 0.7


def test_the_store_records_the_heads_framing_where_their_eyes_are(small):
    """The heads' camera looks at their eye midpoint: the store says so (eye_above_centre_mm = 0, whatever the config's
    normalisation), and in the frontal views the eyes lie where a crop framed by that value puts them, on the middle
    row (ETH-XGaze's framing, 23.7 mm, would put them 5 px higher at this size)."""
    from gazegen.config import CropConfig
    from gazegen.data.xgaze import open_subject

    assert SMALL.normalisation.eye_above_centre_mm == 23.7  # the config's default is ETH-XGaze's, and is not used
    with open_subject(small / "train" / "subject0000.h5") as reader:
        norm = reader.normalisation
    assert norm.eye_above_centre_mm == 0.0
    data = read(small / "train" / "subject0000.h5")
    frontal = data["cam_index"][:, 0] == 0
    eyes = (data["left_eye_mask"][frontal] == 255) | (data["right_eye_mask"][frontal] == 255)  # (n, H, W)
    row = np.nonzero(eyes)[1].mean() + 0.5  # pixel centres
    for framing, expected in ((norm, True), (dataclasses.replace(norm, eye_above_centre_mm=23.7), False)):
        line = CropConfig(resolution=SMALL.resolution, normalisation=framing).eye_line_fraction * SMALL.resolution
        assert (abs(row - line) < 1.5) == expected, (row, line)


def test_a_store_from_before_the_framing_attribute_reads_as_eth_xgaze_framed(small, tmp_path):
    from gazegen.data.xgaze import open_subject

    old = tmp_path / "subject0000.h5"
    old.write_bytes((small / "train" / "subject0000.h5").read_bytes())
    with h5py.File(old, "r+") as f:
        del f.attrs["eye_above_centre_mm"]
    with open_subject(old) as reader:
        assert reader.normalisation.eye_above_centre_mm == 23.7


def test_labels_consistent_with_geometry(small):
    data = read(small / "train" / "subject0001.h5")
    gaze_head, pose = data["pitchyaw_head"].astype(np.float64), data["face_head_pose"].astype(np.float64)
    expected = g.gaze_head_to_camera(gaze_head, g.head_pose_to_rotation(pose))
    np.testing.assert_allclose(data["face_gaze"], expected, atol=1e-5)
    np.testing.assert_allclose(data["camera"], g.head_pose_to_camera(pose, SMALL.camera), atol=1e-5)
    np.testing.assert_array_equal(pose[data["cam_index"][:, 0] == 0], 0.0)  # camera 0 is exactly frontal
    np.testing.assert_allclose(pose, np.tile(rig_head_poses(SMALL.rig), (SMALL.gazes, 1)), atol=1e-7)
    plan = subject_plan(SMALL, 1)  # gaze_head is the direction from the face centre to the target, head frame
    head_target = plan.frames.target * np.array(g.FLIP)
    np.testing.assert_allclose(g.vector_to_pitchyaw(head_target), plan.frames.gaze_head, atol=1e-12)
    np.testing.assert_allclose(gaze_head, np.repeat(plan.frames.gaze_head, SMALL.rig.views, 0), atol=1e-6)
    assert (np.abs(gaze_head) <= np.radians([SMALL.gaze.max_pitch_deg, SMALL.gaze.max_yaw_deg])).all()
    distance = np.linalg.norm(plan.frames.target, axis=-1)
    assert ((distance >= SMALL.gaze.target_mm[0]) & (distance <= SMALL.gaze.target_mm[1])).all()


def test_rig_spreads_poses_with_frontal_first():
    rig = RigConfig()
    poses = np.degrees(rig_head_poses(rig))
    assert poses.shape == (18, 2) and (poses[0] == 0).all()
    assert len({tuple(p) for p in poses.round(6)}) == 18
    assert np.abs(poses[:, 0]).max() == pytest.approx(rig.max_pitch_deg) and np.abs(poses[:, 1]).max() == pytest.approx(rig.max_yaw_deg)
    assert (poses[:, 1] > 0).any() and (poses[:, 1] < 0).any() and (poses[:, 0] > 0).any() and (poses[:, 0] < 0).any()
    assert rig_head_poses(RigConfig(views=1)).tolist() == [[0.0, 0.0]]


def test_same_seed_identical_files_and_subject_count_does_not_matter(small, tmp_path):
    other = synthesize_store(tmp_path / "again", dataclasses.replace(SMALL, subjects=2), workers=1)
    assert_same_file(other / "train" / "subject0000.h5", small / "train" / "subject0000.h5")
    a, b = read(other / "test" / "subject0001.h5"), read(small / "train" / "subject0001.h5")
    for key in KEYS:
        assert a[key].tobytes() == b[key].tobytes(), key
    reseeded_cfg = dataclasses.replace(SMALL, subjects=1, test_subjects=0, seed=8)
    reseeded = read(synthesize_store(tmp_path / "seed", reseeded_cfg, workers=1) / "train" / "subject0000.h5")
    assert np.abs(reseeded["face_patch"].astype(int) - b["face_patch"]).mean() > 5


def test_worker_processes_write_the_same_files(small, tmp_path):
    pooled = synthesize_store(tmp_path / "pooled", SMALL, workers=2)  # spawned processes, one torch thread each
    for path in sorted(small.rglob("*.h5")):
        assert_same_file(pooled / path.relative_to(small), path)
    assert (pooled / "train_test_split.json").read_text() == (small / "train_test_split.json").read_text()


def test_subjects_differ(small):
    a, b = read(small / "train" / "subject0000.h5"), read(small / "train" / "subject0001.h5")
    assert np.abs(a["face_patch"].astype(int) - b["face_patch"]).mean() > 10
    face_a, face_b = a["head_mask"] == 255, b["head_mask"] == 255
    assert (face_a & face_b).sum() / (face_a | face_b).sum() < 0.97  # different head shapes
    ia, ib = subject_plan(SMALL, 0).identity, subject_plan(SMALL, 1).identity
    assert ia.skin != ib.skin and ia.eyes.iris_colour != ib.eyes.iris_colour
    assert ia.eyes.half_spacing != ib.eyes.half_spacing and not np.allclose(ia.shape.radii, ib.shape.radii)


def test_cli_writes_a_store(tmp_path):
    from typer.testing import CliRunner

    from gazegen.cli import app

    result = CliRunner().invoke(app, ["data", "synth-heads", str(tmp_path / "cli"), "--subjects", "1", "--resolution", "32",
                                      "--views", "2", "--gazes", "1", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "train_test_split.json").read_text()) == {"train": [], "test": ["subject0000.h5"]}
    assert read(tmp_path / "cli" / "test" / "subject0000.h5")["face_patch"].shape == (2, 32, 32, 3)
    # one subject and test_subjects' default 1: a test-only store (evaluate, finetune), said, not silent
    assert "warning: all 1 subject(s) are in the test split and train/ is empty" in result.output


def synth_heads_cli(out: Path, *args: str):
    from typer.testing import CliRunner

    from gazegen.cli import app

    return CliRunner().invoke(app, ["data", "synth-heads", str(out), "--resolution", "32", "--views", "2", "--gazes", "1", *args])


def test_cli_workers_sets_the_processes_and_not_the_files(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gazegen.data.heads"):
        one = synth_heads_cli(tmp_path / "one", "--subjects", "2", "--workers", "1")
    assert one.exit_code == 0, one.output
    assert "2 subjects (1 test) x 1 gazes x 2 views at 32 px, 1 worker(s)" in caplog.text
    two = synth_heads_cli(tmp_path / "two", "--subjects", "2", "--workers", "2")
    assert two.exit_code == 0, two.output
    assert store_contents(tmp_path / "one").keys() == store_contents(tmp_path / "two").keys()
    assert synth_heads_cli(tmp_path / "none", "--workers", "0").exit_code == 2 and not (tmp_path / "none").exists()


def store_contents(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_split_counts():
    count = lambda subjects, test: held_out_subjects(dataclasses.replace(SMALL, subjects=subjects, test_subjects=test))  # noqa: E731
    assert [count(1, 0), count(1, 1), count(2, 1), count(5, 2), count(5, 4), count(5, 0)] == [0, 1, 1, 2, 4, 0]


def test_test_subjects_that_leave_no_training_subject_are_refused_in_one_line(tmp_path):
    """--subjects 3 --set test_subjects=5 once made 2 test subjects, silently."""
    for subjects, test, most in (("3", "5", 2), ("3", "3", 2), ("1", "2", 1)):
        result = synth_heads_cli(tmp_path / "out", "--subjects", subjects, "--set", f"test_subjects={test}")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert [l for l in result.output.splitlines() if l.strip()] == [
            f"error: command line: --set test_subjects={test}: {test} with subjects = {subjects} leaves no training subject; "
            f"at most {most}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["[-5,-1]", "[1,1]", "[1200,400]", "[50,900]", "[400,inf]"])
def test_a_gaze_target_nearer_than_the_eyes_converge_or_reversed_is_refused_in_one_line(tmp_path, target):
    """[-5,-1] and [1,1] once rolled the eyes back with the default range's labels; [1200,400] crashed in numpy."""
    result = synth_heads_cli(tmp_path / "out", "--subjects", "1", "--set", f"gaze.target_mm={target}")
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [l for l in result.output.splitlines() if l.strip()]
    assert line.startswith(f"error: command line: --set gaze.target_mm={target}: expected [low, high] with 100 <= low <= high")
    assert not (tmp_path / "out").exists()
    assert SynthHeadsConfig(gaze=GazeRangeConfig(target_mm=(100.0, 100.0))).gaze.target_mm == (100.0, 100.0)  # fixed, at the minimum


def test_an_existing_store_is_refused_and_replaced_only_with_overwrite(tmp_path):
    """A second synth-heads into a store once rewrote its split and left the old subject files
    beside the new ones (two datasets in one store). Now: refused, nothing touched; with
    --overwrite the old store's files go, the user's own file stays, and the new store is exactly
    a fresh one's."""
    out = tmp_path / "store"
    synthesize_store(out, dataclasses.replace(SMALL, subjects=3, test_subjects=1, resolution=32, gazes=1,
                                              rig=RigConfig(views=2)), workers=1)  # fmt: skip
    (out / "notes.txt").write_text("the user's own")
    (out / "train" / "subject0009.h5.tmp").write_bytes(b"an unfinished file")
    before = store_contents(out)
    result = synth_heads_cli(out, "--subjects", "1", "--seed", "9", "--set", "test_subjects=0")
    assert result.exit_code == 2
    assert [l for l in result.output.splitlines() if l.strip()] == [
        f"error: {out}: exists and is not empty; choose a new folder, or pass --overwrite to replace the store in it"]
    assert store_contents(out) == before

    result = synth_heads_cli(out, "--subjects", "1", "--seed", "9", "--set", "test_subjects=0", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(store_contents(out)) == ["notes.txt", "train/subject0000.h5", "train_test_split.json"]
    assert (out / "notes.txt").read_text() == "the user's own" and not (out / "test").exists()
    assert json.loads((out / "train_test_split.json").read_text()) == {"train": ["subject0000.h5"], "test": []}
    fresh = synthesize_store(tmp_path / "fresh", SynthHeadsConfig(subjects=1, test_subjects=0, resolution=32, gazes=1, seed=9,
                                                                 rig=RigConfig(views=2)), workers=1)  # fmt: skip
    assert_same_file(out / "train" / "subject0000.h5", fresh / "train" / "subject0000.h5")
    from gazegen.data.inspect import inspect_store

    assert inspect_store(out).problems == ()


def interrupt_subject(monkeypatch, n: int) -> None:
    """Ctrl-C while subject ``n`` is rendered (one worker): its split folder exists, its file does not."""
    from gazegen.data import heads

    write = heads.write_subject

    def interrupted(cfg, index, path, progress=None):
        if index == n:
            path.parent.mkdir(parents=True, exist_ok=True)  # as the subject's writer makes it
            raise KeyboardInterrupt
        return write(cfg, index, path, progress)

    monkeypatch.setattr(heads, "available_cores", lambda: 1)
    monkeypatch.setattr(heads, "write_subject", interrupted)


def test_ctrl_c_before_any_subject_file_says_so_exits_130_and_the_same_command_starts_again(tmp_path, monkeypatch):
    """An interrupted run once exited 130 silently, and its empty train/ and test/ made the rerun refuse the folder."""
    out = tmp_path / "store"
    interrupt_subject(monkeypatch, 0)
    result = synth_heads_cli(out, "--subjects", "2")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert [l for l in result.output.splitlines() if l.strip()] == [
        f"interrupted: no subject file was kept; the same command starts again in {out}"]
    assert sorted(p.name for p in out.iterdir()) == ["train"]
    monkeypatch.undo()
    assert synth_heads_cli(out, "--subjects", "2").exit_code == 0
    assert sorted(store_contents(out)) == ["test/subject0001.h5", "train/subject0000.h5", "train_test_split.json"]


def test_ctrl_c_after_a_subject_file_says_it_is_not_a_store_and_to_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "store"
    interrupt_subject(monkeypatch, 1)
    result = synth_heads_cli(out, "--subjects", "2")
    assert result.exit_code == 130
    assert [l for l in result.output.splitlines() if l.strip()] == [
        f"interrupted: {out} holds 1 unfinished store file(s) and no split file; rerun with --overwrite to start again"]
    monkeypatch.undo()
    assert synth_heads_cli(out, "--subjects", "2").exit_code == 2
    assert synth_heads_cli(out, "--subjects", "2", "--overwrite").exit_code == 0


def test_an_empty_folder_is_used_and_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert synth_heads_cli(tmp_path / "empty", "--subjects", "1").exit_code == 0
    (tmp_path / "file").write_text("not a folder")
    for out, why in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "store", f"cannot be made: {tmp_path / 'file'} is a file")):
        result = synth_heads_cli(out, "--subjects", "1", "--overwrite")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert [l for l in result.output.splitlines() if l.strip()] == [f"error: {out}: {why}, not a folder; give a store folder to create"]
    assert (tmp_path / "file").read_text() == "not a folder"


# --------------------------------------------------------------------------- pixels against closed forms


def test_depth_matches_analytic_ellipsoids_away_from_the_eyes(small):
    data = read(small / "train" / "subject0000.h5")
    identity = subject_plan(SMALL, 0).identity
    shape, centres = identity.shape, identity.eyes.centres
    checked = cranium = 0
    for sample in rows(data, len(data["camera"])):
        o, d, forward = pixel_rays(sample["camera"], SMALL.resolution)
        t = np.stack([ray_ellipsoid(o, d, c, r, a) for c, r, a in zip(shape.centres, shape.radii, shape.tilts)], -1)
        hit = ~np.isnan(t).all(-1)
        first = np.where(hit, np.nanmin(np.where(hit[..., None], t, 0.0), -1), 0.0)  # (H, W)
        near_eye = np.linalg.norm((o + d * first[..., None])[..., None, :] - centres, axis=-1).min(-1) < 30.0
        plain = hit & ~near_eye
        np.testing.assert_allclose(sample["depth"][plain], (first * (d @ forward))[plain], atol=2e-3)
        np.testing.assert_array_equal(sample["depth"][~hit], 0.0)
        nearest = np.nanargmin(np.where(hit[..., None], t, np.inf), -1)  # which ellipsoid each ray meets first
        head = plain & (nearest != shape.names.index("torso"))  # the body (clothes) has depth but no mask
        assert (sample["head_mask"][~hit] == 0).all() and (sample["head_mask"][head] == 255).all()
        assert (sample["head_mask"][plain & ~head] == 0).all()
        checked += plain.sum()
        cranium += (plain & (nearest == shape.names.index("cranium"))).sum()
    assert checked > 0.2 * data["depth"].size and cranium > 100


def test_eye_masks_are_the_visible_eyeballs(small, zoom):
    for cfg, data, least in ((SMALL, read(small / "train" / "subject0000.h5"), 5), (ZOOM, zoom, 2000)):
        plan = subject_plan(cfg, 0)
        eyes = plan.identity.eyes
        iris_cos = np.sqrt(1 - (eyes.iris_radius / eyes.radius) ** 2)
        irises = 0
        for sample in rows(data, len(data["camera"])):
            o, d, forward = pixel_rays(sample["camera"], cfg.resolution)
            points = back_project(sample["camera"], sample["depth"])
            frame = int(sample["frame_index"][0])
            for e, name in enumerate(("left", "right")):
                mask = sample[f"{name}_eye_mask"] == 255
                ball = ray_ellipsoid(o, d, eyes.centres[e], np.full(3, eyes.radius), 0.0)
                np.testing.assert_allclose(sample["depth"][mask], (ball * (d @ forward))[mask], atol=2e-3)
                on_ball = np.abs(np.linalg.norm(points - eyes.centres[e], axis=-1) - eyes.radius) < 3e-4  # float32 depth: 1e-4
                axis = plan.frames.target[frame] - eyes.centres[e]
                cos = ((points - eyes.centres[e]) @ axis) / (eyes.radius * np.linalg.norm(axis))
                iris = on_ball & (cos >= iris_cos) & (sample["head_mask"] == 255)
                assert mask[iris].all() and mask[(sample["face_patch"] == 0).all(-1) & on_ball].all()
                irises += iris.sum()
            black = (sample["face_patch"] == 0).all(-1)  # only pupils render exactly black
            assert ((sample["left_eye_mask"] == 255) | (sample["right_eye_mask"] == 255))[black].all()
            if sample["cam_index"][0] == 0 and (sample["left_eye_mask"] == 255).any():  # the subject's left eye is at image right
                assert np.nonzero(sample["left_eye_mask"])[1].mean() > cfg.resolution / 2 > np.nonzero(sample["right_eye_mask"])[1].mean()
        assert irises > least


def test_projected_pupil_centre_lands_on_the_rendered_pupil(zoom):
    plan = subject_plan(ZOOM, 0)
    eyes = plan.identity.eyes
    errors, looks = [], []
    for sample in rows(zoom, len(zoom["camera"])):
        frame = int(sample["frame_index"][0])
        axes = plan.frames.target[frame] - eyes.centres
        apex = eyes.centres + eyes.radius * axes / np.linalg.norm(axes, axis=-1, keepdims=True)  # (2, 3) mm
        uv = g.project(np.concatenate([apex, eyes.centres]) / MM, sample["camera"].astype(np.float64), ZOOM.resolution)
        for e, name in enumerate(("left", "right")):
            pixels = pupil_pixels(sample, name)
            if pixels is None:
                continue
            errors.append(np.linalg.norm(pixels.mean(0) - uv[e]))
            if sample["cam_index"][0] == 0:  # frontal: positive yaw looks to image left, positive pitch up
                looks.append((plan.frames.gaze_head[frame], pixels.mean(0) - uv[2 + e]))
    assert len(errors) >= 0.5 * 2 * len(zoom["camera"])
    assert max(errors) < 1.0, errors
    for (pitch, yaw), (du, dv) in looks:
        assert np.sign(du) == -np.sign(yaw) and np.sign(dv) == -np.sign(pitch)


def eye_axis_from_pixels(sample: dict, pixels: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Unit optical axis from the visible pupil's pixels: area-weighted centroid of the cap, back-projected."""
    i, j = (pixels[:, 1] - 0.5).astype(int), (pixels[:, 0] - 0.5).astype(int)
    points = back_project(sample["camera"], sample["depth"])[i, j]  # (M, 3) mm on the sphere
    o, d, forward = pixel_rays(sample["camera"], sample["depth"].shape[0])
    d = d[i, j]
    normal = (points - centre) / radius
    area = sample["depth"][i, j] ** 2 * (d @ forward) / np.abs((normal * d).sum(-1))  # pixel footprint on the sphere
    axis = (area[:, None] * points).sum(0) / area.sum() - centre
    return axis / np.linalg.norm(axis)


def test_gaze_recomputed_from_rendered_pupils_matches_labels(zoom):
    eyes = subject_plan(ZOOM, 0).identity.eyes
    errors = []
    for sample in rows(zoom, len(zoom["camera"])):
        pixels = [pupil_pixels(sample, name) for name in ("left", "right")]
        if any(p is None for p in pixels):
            continue
        axes = [eye_axis_from_pixels(sample, p, c, eyes.radius) for p, c in zip(pixels, eyes.centres)]
        # the target: the point nearest both optical axes
        (c0, c1), (a0, a1) = eyes.centres, axes
        lhs = np.array([[a0 @ a0, -a0 @ a1], [a0 @ a1, -a1 @ a1]])
        s, u = np.linalg.solve(lhs, [(c1 - c0) @ a0, (c1 - c0) @ a1])
        target = (c0 + s * a0 + c1 + u * a1) / 2  # mm world; the face centre is the origin
        head = target * np.array(g.FLIP)
        c2w = sample["camera"][:16].astype(np.float64).reshape(4, 4)
        errors.append(g.angular_error(head, sample["pitchyaw_head"].astype(np.float64)))
        errors.append(g.angular_error(c2w[:3, :3].T @ target, sample["face_gaze"].astype(np.float64)))
    assert len(errors) >= 2 * 0.5 * len(zoom["camera"])
    assert max(errors) < 0.5, errors


def test_parallel_eyes_each_point_along_the_label(tmp_path):
    data = read(synthesize_store(tmp_path / "parallel", PARALLEL, workers=1) / "train" / "subject0000.h5")
    eyes = subject_plan(PARALLEL, 0).identity.eyes
    errors = []
    for sample in rows(data, len(data["camera"])):
        for e, name in enumerate(("left", "right")):
            pixels = pupil_pixels(sample, name)
            if pixels is not None:
                axis = eye_axis_from_pixels(sample, pixels, eyes.centres[e], eyes.radius)
                errors.append(g.angular_error(axis * np.array(g.FLIP), sample["pitchyaw_head"].astype(np.float64)))
    assert len(errors) >= 4 and max(errors) < 0.5, errors


def test_two_gazes_from_one_camera_differ_only_at_the_eyes_and_eyelids(zoom):
    """Lighting and background belong to the subject: another gaze changes the eyeballs and the lids over them only.

    The lids follow the gaze (head_model.lid_circles), so the allowed region is every pixel within
    EYELID_MM (lid thickness plus its travel) of a visible eyeball in either image.
    """
    import cv2

    EYELID_MM = 6.0
    norm = ZOOM.camera
    px_per_mm = norm.focal / norm.distance_mm  # at the face centre's depth
    images, cams, frames = zoom["face_patch"], zoom["cam_index"][:, 0], zoom["frame_index"][:, 0]
    eyes = (zoom["left_eye_mask"] > 0) | (zoom["right_eye_mask"] > 0)
    for cam in np.unique(cams):
        rows = np.flatnonzero(cams == cam)
        for a, b in zip(rows[:-1], rows[1:]):
            assert frames[a] != frames[b]
            changed = (images[a] != images[b]).any(-1)  # (H, W)
            assert changed.any(), f"camera {cam}: another gaze left the image unchanged"
            not_eye = (~(eyes[a] | eyes[b])).astype(np.uint8)
            distance_mm = cv2.distanceTransform(not_eye, cv2.DIST_L2, 5) / px_per_mm  # to the nearest eyeball pixel
            far = changed & (distance_mm > EYELID_MM)
            assert not far.any(), f"camera {cam}: {far.sum()} pixels changed more than {EYELID_MM} mm from the eyes"
            assert (~changed).mean() > 0.95  # the rest of the image (face, hair, background) is untouched


def test_many_gazes_per_subject_and_configurable_view_ranges(tmp_path):
    cfg = SynthHeadsConfig(subjects=1, test_subjects=0, resolution=16, gazes=64, seed=1,
                           rig=RigConfig(views=3, max_yaw_deg=20.0, max_pitch_deg=10.0))
    data = read(synthesize_store(tmp_path / "s", cfg, workers=1) / "train" / "subject0000.h5")
    assert len(np.unique(data["pitchyaw_head"], axis=0)) == 64
    pose = np.degrees(data["face_head_pose"])
    assert np.abs(pose[:, 0]).max() <= 10.0 + 1e-4 and np.abs(pose[:, 1]).max() <= 20.0 + 1e-4
    assert np.abs(pose[:, 1]).max() > 19.0  # the rig reaches the configured yaw
