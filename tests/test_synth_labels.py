"""End to end: the labels of synthesized rows against an independent oracle, bad rows among good
ones, and the command's exit status.

The oracle is ETH-XGaze's normalisation recipe (Zhang et al. 2020, data_normalization.py) written
here with numpy, without gazegen.geometry: the camera sits at the normalisation distance on its
orbit around the face centre; the normalised camera looks at the face centre (z), its y axis is
z x (the head's x axis) (kept upright), its x axis y x z; the head pose is asin / atan2 of the rotated head z
axis, the gaze is the head-frame gaze vector rotated into that camera.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gazegen.checkpoint import save_pretrained
from gazegen.config import CONFIG_DIR, PUBLISHED_NORMALISATIONS, ModelConfig, NormalisationConfig, load_config, load_synth_config
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.models.livegaze import LiveGaze
from gazegen.pipelines.manifest import ERRORS_NAME
from gazegen.pipelines.synthesis import run_synthesis

ROOT = Path(__file__).resolve().parents[1]
NORM = PUBLISHED_NORMALISATIONS["livegaze512"]
SETTINGS = ["cpu_threads=1"]
GRID = {"grid": "pitch,yaw,view", "pitch": "-25:15:2", "yaw": "-30:35:2", "view_pitch": "-12:8:2", "view_yaw": "-20:25:2",
        "sample": 3, "seed": 7}  # fmt: skip
H5_POSES = np.radians([[12.0, -25.0], [-8.0, 170.0], [np.nan, 0.0], [20.0, 5.0]])  # row 1 wraps past 180; row 2 is bad
H5_GAZES = np.radians([[5.0, 10.0], [-3.0, 2.0], [0.0, 0.0], [0.0, -20.0]])
PARQUET_POSES = [[-0.1, 0.25], [0.1, 0.2, 0.3], [0.3, -0.4]]  # row 1: a wrong shape


# --------------------------------------------------------------------------- the oracle (numpy only)


def gaze_vector(pitch: float, yaw: float) -> np.ndarray:
    return np.array([-np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)])


def eth_xgaze_oracle(head_pose: np.ndarray, gaze_head: np.ndarray, norm: NormalisationConfig) -> dict[str, np.ndarray]:
    """The labels of a face with head pose (pitch, yaw) = source pose + view offset, seen by a
    normalised camera, built the ETH-XGaze way in the head's frame (OpenCV axes, face at the origin)."""
    p, y = head_pose
    camera_position = np.array([np.sin(y), np.sin(p) * np.cos(y), -np.cos(p) * np.cos(y)])  # unit; the orbit
    forward = -camera_position  # the camera looks at the face centre
    down = np.cross(forward, [1.0, 0.0, 0.0])  # ETH-XGaze: down = forward x (head x axis)
    down *= np.sign(down[1]) / np.linalg.norm(down)  # upright, no roll: on the side of the head's down (y) axis, also
    # from behind the head (|yaw| > 90 deg), where ETH-XGaze's recipe (made for faces seen from the front) turns it over
    right = np.cross(down, forward)
    rotation = np.stack([right, down, forward])  # head frame -> normalised camera (rows: the camera's axes)
    head_z = rotation[:, 2]
    gaze = rotation @ gaze_vector(*gaze_head)
    c2w = np.eye(4)
    flip = np.diag([1.0, -1.0, -1.0])  # head frame (OpenCV axes) -> the renderer's world (EG3D axes)
    c2w[:3, :3] = flip @ rotation.T
    c2w[:3, 3] = flip @ camera_position * norm.radius
    f = norm.focal / norm.resolution
    k = np.array([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])
    return {
        "head_pose": np.array([np.arcsin(head_z[1]), np.arctan2(head_z[0], head_z[2])]),
        "gaze": np.array([np.arcsin(-gaze[1]), np.arctan2(-gaze[0], -gaze[2])]),
        "camera": np.concatenate([c2w.ravel(), k.ravel()]),
    }


def test_the_oracle_reads_back_what_it_was_given():
    """A sanity check of the test's own construction: its camera shows the pose it was built for."""
    for pose in np.radians([[0.0, 0.0], [30.0, -50.0], [-60.0, 170.0]]):
        labels = eth_xgaze_oracle(pose, np.zeros(2), NORM)
        np.testing.assert_allclose(labels["head_pose"], pose, atol=1e-12)
        np.testing.assert_allclose(labels["gaze"], pose, atol=1e-12)  # a gaze straight ahead follows the head
    np.testing.assert_allclose(eth_xgaze_oracle(np.zeros(2), np.zeros(2), NORM)["camera"][:16].reshape(4, 4)[:3, 3], [0, 0, 2.7])


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labelled")
    source = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=48)  # another camera than the model's
    rng = np.random.default_rng(3)
    with SubjectWriter(folder / "subject0007.h5", source, "subject0007") as writer:
        writer.write(
            Sample(image=rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), gaze=np.zeros(2, np.float32),
                   head_pose=p.astype(np.float32), gaze_head=g.astype(np.float32), camera=np.zeros(25, np.float32),
                   normalisation=source, subject="subject0007", frame_index=i)
            for i, (p, g) in enumerate(zip(H5_POSES, H5_GAZES))
        )  # fmt: skip
    crop = {"bytes": cv2.imencode(".png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes(), "path": None}
    pq.write_table(pa.table({"image": [crop] * 3, "head_pose": PARQUET_POSES, "gaze_head": [[0.05, -0.1], [0.0, 0.0], None]}),
                   folder / "crops.parquet")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"))
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny", model, normalisation=NORM)


@pytest.fixture(scope="module")
def two_runs(ray_session, checkpoint, inputs, tmp_path_factory):
    outs = [tmp_path_factory.mktemp("labels") / name for name in ("a", "b")]
    results = [run_synthesis(checkpoint, inputs, str(o), load_synth_config(None, SETTINGS, **GRID), progress=False) for o in outs]
    return outs, results


def read_rows(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("shard-*.parquet"))).sort_by("row_id")


@pytest.mark.ray
def test_every_row_matches_the_eth_xgaze_oracle(two_runs):
    (out, _), (result, _) = two_runs
    assert (result.sources, result.rows, result.errors) == (7, 15, 2)
    known = {f"subject0007.h5#{i:06d}": (H5_POSES[i], H5_GAZES[i]) for i in (0, 1, 3)}
    known |= {"crops.parquet#000000": (np.array(PARQUET_POSES[0]), np.array([0.05, -0.1])),
              "crops.parquet#000002": (np.array(PARQUET_POSES[2]), None)}  # fmt: skip
    rows = read_rows(out).drop_columns(["image", "depth", "alpha"]).to_pylist()
    assert sorted({r["source_id"] for r in rows}) == sorted(known) and len(rows) == 5 * 3
    norm = NORM.at_resolution(64)
    wrapped = 0
    for row in rows:
        source_pose, _ = known[row["source_id"]]
        offset, gaze_head = np.array(row["view_offset"]), np.array(row["gaze_head"])
        lo, hi = np.radians([[-12.0, -20.0], [8.0, 25.0]])
        assert (offset >= lo - 1e-6).all() and (offset <= hi + 1e-6).all()  # --sample draws inside the ranges
        assert np.radians(-25) - 1e-6 <= gaze_head[0] <= np.radians(15) + 1e-6
        assert np.radians(-30) - 1e-6 <= gaze_head[1] <= np.radians(35) + 1e-6
        expected = eth_xgaze_oracle(source_pose + offset, gaze_head, norm)
        np.testing.assert_allclose(row["head_pose"], expected["head_pose"], atol=2e-6, err_msg=row["row_id"])
        np.testing.assert_allclose(row["gaze"], expected["gaze"], atol=2e-6, err_msg=row["row_id"])
        np.testing.assert_allclose(row["camera"], expected["camera"], atol=2e-6, err_msg=row["row_id"])
        wrapped += abs(source_pose[1] + offset[1]) > np.pi
    assert wrapped >= 1  # at least one rendered yaw passed 180 deg and was stored wrapped


@pytest.mark.ray
def test_bad_rows_are_error_rows_and_a_rerun_gives_the_same_rows_and_errors(two_runs):
    (a, b), _ = two_runs
    errors = pq.read_table(a / ERRORS_NAME).to_pylist()
    assert {(e["source_id"], e["stage"]) for e in errors} == {("subject0007.h5#000002", "decode"), ("crops.parquet#000001", "decode")}
    reasons = {e["source_id"]: e["reason"] for e in errors}
    assert "head_pose holds non-finite values" in reasons["subject0007.h5#000002"]
    assert "head_pose has shape (3,)" in reasons["crops.parquet#000001"]
    assert read_rows(a).equals(read_rows(b))
    assert pq.read_table(a / ERRORS_NAME).equals(pq.read_table(b / ERRORS_NAME))


def cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from gazegen.cli import app; sys.argv[0] = 'gazegen'; app()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=3600)  # fmt: skip  (a hang guard)


@pytest.mark.ray
def test_the_command_exits_0_when_it_succeeds_and_non_zero_with_one_line_when_not(ray_session, checkpoint, inputs, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    grid = [f"--{k.replace('_', '-')}={v}" for k, v in GRID.items()]
    joined = cli("synthesize", str(checkpoint), str(inputs), str(tmp_path / "joined"), "--address", address, *grid, "--set", "cpu_threads=1")
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert joined.stdout.strip().splitlines()[-1].startswith(f"{tmp_path / 'joined'}: 7 sources, 15 rows, 2 errors")
    own = cli("synthesize", str(checkpoint), str(inputs), str(tmp_path / "own"), *grid, "--set", "cpu_threads=1")  # its own local Ray
    assert own.returncode == 0, own.stderr[-3000:]
    assert read_rows(tmp_path / "own").equals(read_rows(tmp_path / "joined"))
    bare = save_pretrained(tmp_path / "bare", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")))
    refused = cli("synthesize", str(bare), str(inputs), str(tmp_path / "refused"), "--address", address)
    assert refused.returncode == 2 and refused.stdout == ""
    [line] = [x for x in refused.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and "records no normalisation" in line and "--set normalisation." in line
