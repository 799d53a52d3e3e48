"""Readers of published gaze h5 files: tiny files with the published key layouts, real numbers.

The oracle for the label conventions is a re-derivation of ETH-XGaze's normalisation (its
``normalization_example.py``) and of GazeNeRF's head-frame gaze (``convert_to_head_coordinate_system``)
in plain numpy: an original head rotation with roll, a face centre and a gaze target in the
original camera give ``face_gaze``, ``face_head_pose`` and GazeNeRF's ``pitchyaw_head``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from gazegen import geometry
from gazegen.config import PUBLISHED_NORMALISATIONS
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.data.xgaze import (
    GAZENERF_EXTRAS, DataError, GazeNeRFReader, StoreReader, XGazeReader, detect_format, iter_samples, open_subject,
)

NORM32 = PUBLISHED_NORMALISATIONS["xgaze224"].at_resolution(32)
NORM_GN32 = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(32)


def eth_xgaze_labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Labels as ETH-XGaze and GazeNeRF compute them, from random raw head poses and gaze targets."""
    out = {k: [] for k in ("face_gaze", "face_head_pose", "face_mat_norm", "pitchyaw_head_gazenerf", "gaze_head")}
    for _ in range(n):
        pitch, yaw, roll = rng.uniform(-0.5, 0.5), rng.uniform(-0.9, 0.9), rng.uniform(-0.3, 0.3)
        h_rot = geometry.rotation_z(np.array(roll)) @ geometry.rotation_y(np.array(yaw)) @ geometry.rotation_x(np.array(pitch))
        centre = np.array([rng.uniform(-150, 150), rng.uniform(-150, 150), rng.uniform(600, 1100)])
        target = np.array([rng.uniform(-800, 800), rng.uniform(-600, 400), rng.uniform(-100, 100)])
        forward = centre / np.linalg.norm(centre)
        down = np.cross(forward, h_rot[:, 0])
        down /= np.linalg.norm(down)
        right = np.cross(down, forward)
        right /= np.linalg.norm(right)
        r_norm = np.stack([right, down, forward])  # rows: the normalised camera's axes
        g = r_norm @ (target - centre)
        g /= np.linalg.norm(g)
        z = (r_norm @ h_rot)[:, 2]
        v = h_rot.T @ (target - centre)
        v /= np.linalg.norm(v)
        out["face_gaze"].append([np.arcsin(-g[1]), np.arctan2(-g[0], -g[2])])
        out["face_head_pose"].append([np.arcsin(z[1]), np.arctan2(z[0], z[2])])
        out["face_mat_norm"].append(r_norm)
        out["pitchyaw_head_gazenerf"].append([np.arcsin(v[1]), np.arctan2(-v[0], -v[2])])
        out["gaze_head"].append([np.arcsin(-v[1]), np.arctan2(-v[0], -v[2])])
    return {k: np.array(v) for k, v in out.items()}


def bgr_patches(n: int, res: int) -> np.ndarray:
    """Image i is B = 10 + i, G = 100, R = 200 everywhere."""
    patch = np.zeros((n, res, res, 3), np.uint8)
    patch[..., 0] = (10 + np.arange(n))[:, None, None]
    patch[..., 1], patch[..., 2] = 100, 200
    return patch


def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return path


def make_official(path: Path, n: int = 6, res: int = 32, seed: int = 0, cam_base: int = 0, **override) -> dict:
    """An ETH-XGaze file (published keys, float64 labels, (N, 1) indices); returns the truth."""
    truth = eth_xgaze_labels(np.random.default_rng(seed), n)
    keys = dict(
        face_patch=bgr_patches(n, res), face_gaze=truth["face_gaze"], face_head_pose=truth["face_head_pose"],
        face_mat_norm=truth["face_mat_norm"], facial_landmarks=np.random.default_rng(seed).uniform(0, res, (n, 68, 2)),
        frame_index=(np.arange(n) // 3)[:, None], cam_index=(np.arange(n) % 3 * 8 + cam_base)[:, None],
    )
    keys.update(override)
    write_h5(path, **{k: v for k, v in keys.items() if v is not None})
    return {**truth, **keys}


def make_gazenerf(path: Path, n: int = 6, res: int = 32, seed: int = 1, **override) -> dict:
    """A GazeNeRF file (0/255 masks, uint8 indices, 3DMM fit, a screen-point `pitchyaw`)."""
    rng = np.random.default_rng(seed)
    truth = eth_xgaze_labels(rng, n)
    masks = {k: (rng.random((n, res, res)) > 0.5).astype(np.uint8) * 255
             for k in ("head_mask", "left_eye_mask", "right_eye_mask")}
    fit = {k: rng.normal(size=(n, 306) if k == "latent_codes" else (n, 3) if "Tvec" in k else (n, 3, 3)) for k in GAZENERF_EXTRAS}
    keys = dict(
        face_patch=bgr_patches(n, res), pitchyaw_head=truth["pitchyaw_head_gazenerf"], face_head_pose=truth["face_head_pose"],
        pitchyaw=np.tile([960.0, 540.0], (n, 1)), pitchyaw_3d=rng.normal(size=(n, 3)),
        facial_landmarks=rng.uniform(0, res, (n, 68, 2)), frame_index=np.arange(n, dtype=np.uint8)[:, None],
        cam_index=(np.arange(n) % 18).astype(np.uint8)[:, None], **masks, **fit,
    )
    keys.update(override)
    write_h5(path, **{k: v for k, v in keys.items() if v is not None})
    return {**truth, **keys}


def test_official_reader_converts_colour_labels_and_camera(tmp_path):
    truth = make_official(tmp_path / "subject0007.h5")
    with XGazeReader(tmp_path / "subject0007.h5", NORM32) as reader:
        samples = list(reader)
        assert reader.subject == "subject0007" and len(reader) == 6
    for i, s in enumerate(samples):
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert (s.image[..., 0] == 200).all() and (s.image[..., 1] == 100).all() and (s.image[..., 2] == 10 + i).all()
        np.testing.assert_allclose(s.gaze, truth["face_gaze"][i], atol=1e-6)
        np.testing.assert_allclose(s.head_pose, truth["face_head_pose"][i], atol=1e-6)
        np.testing.assert_allclose(s.camera, geometry.head_pose_to_camera(truth["face_head_pose"][i], NORM32), atol=1e-6)
        np.testing.assert_allclose(s.face_mat_norm, truth["face_mat_norm"][i], atol=1e-6)
        np.testing.assert_allclose(s.landmarks, truth["facial_landmarks"][i], atol=1e-4)
        assert s.face_mask is None and s.depth is None and s.normalisation == NORM32
        assert (s.frame_index, s.cam_index) == (i // 3, i % 3 * 8)
    # The gaze in the head frame, with the roll-free R_head of the published head pose, is exactly
    # the gaze in ETH-XGaze's face-model frame, although the raw head rotations had roll.
    got = np.stack([s.gaze_head for s in samples])
    assert geometry.angular_error(got.astype(np.float64), truth["gaze_head"]).max() < 1e-3


def test_published_resolutions_pick_the_published_normalisation(tmp_path):
    for res in (224, 448):
        make_official(tmp_path / f"s{res}.h5", n=2, res=res)
        with open_subject(tmp_path / f"s{res}.h5") as reader:
            assert reader.normalisation == PUBLISHED_NORMALISATIONS[f"xgaze{res}"]
    with pytest.raises(DataError, match=r"s32\.h5.*'face_patch'.*32 px.*224 or 448"):
        make_official(tmp_path / "s32.h5", n=2)
        open_subject(tmp_path / "s32.h5")


def test_cam_index_base_is_inferred_or_given(tmp_path):
    make_official(tmp_path / "one.h5", n=6, cam_base=1, cam_index=np.array([[1], [9], [18], [1], [9], [18]]))
    with open_subject(tmp_path / "one.h5", NORM32) as reader:
        assert reader.labels.cam_index.tolist() == [0, 8, 17, 0, 8, 17]
    make_official(tmp_path / "zero.h5", n=6)
    with open_subject(tmp_path / "zero.h5", NORM32) as reader:
        assert reader.labels.cam_index.tolist() == [0, 8, 16, 0, 8, 16]
    with open_subject(tmp_path / "zero.h5", NORM32, cam_index_base=0) as reader:
        assert reader[2].cam_index == 16
    make_official(tmp_path / "both.h5", n=2, cam_index=np.array([[0], [18]]))
    with pytest.raises(DataError, match=r"both\.h5.*'cam_index'"):
        open_subject(tmp_path / "both.h5", NORM32)


def test_gazenerf_reader_masks_sign_extras_and_indices(tmp_path):
    path = tmp_path / "xgaze_subject0003.h5"
    truth = make_gazenerf(path, n=6, frame_index=np.array([[254], [254], [255], [0], [0], [1]], np.uint8))
    assert detect_format(path) == "gazenerf"
    with GazeNeRFReader(path, NORM_GN32) as reader:
        samples = list(reader)
        assert reader.subject == "subject0003"
        assert reader.labels.frame_index.tolist() == [254, 254, 255, 256, 256, 257]  # uint8 unwrapped
    for i, s in enumerate(samples):
        assert (s.image[..., 0] == 200).all() and (s.image[..., 2] == 10 + i).all()
        for ours, theirs in (("face_mask", "head_mask"), ("left_eye_mask",) * 2, ("right_eye_mask",) * 2):
            mask = getattr(s, ours)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            np.testing.assert_array_equal(mask * 255, truth[theirs][i])
        # pitch sign flipped, yaw kept; the camera-frame gaze then matches ETH-XGaze's face_gaze
        np.testing.assert_allclose(s.gaze_head, truth["pitchyaw_head_gazenerf"][i] * [-1, 1], atol=1e-6)
        assert geometry.angular_error(s.gaze.astype(np.float64), truth["face_gaze"][i]) < 1e-3
        np.testing.assert_allclose(s.camera, geometry.head_pose_to_camera(truth["face_head_pose"][i], NORM_GN32), atol=1e-6)
        assert set(s.extras) == set(GAZENERF_EXTRAS)
        np.testing.assert_allclose(s.extras["latent_codes"], truth["latent_codes"][i])
        np.testing.assert_allclose(s.extras["w2c_Tvec"], truth["w2c_Tvec"][i])
        assert s.cam_index == i % 18


def test_store_round_trip_reads_back_what_the_writer_wrote(tmp_path):
    rng = np.random.default_rng(3)
    norm = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(16)
    head = rng.uniform(-0.5, 0.5, (5, 2))
    gaze_head = rng.uniform(-0.6, 0.6, (5, 2))
    samples = [Sample(
        image=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        gaze=geometry.gaze_head_to_camera(gaze_head[i], geometry.head_pose_to_rotation(head[i])).astype(np.float32),
        head_pose=head[i].astype(np.float32), gaze_head=gaze_head[i].astype(np.float32),
        camera=geometry.head_pose_to_camera(head[i], norm).astype(np.float32), normalisation=norm, subject="subject0042",
        frame_index=i // 2, cam_index=i % 2, face_mask=(rng.random((16, 16)) > 0.5).astype(np.uint8),
        left_eye_mask=(rng.random((16, 16)) > 0.5).astype(np.uint8), right_eye_mask=(rng.random((16, 16)) > 0.5).astype(np.uint8),
        depth=rng.uniform(0, 900, (16, 16)).astype(np.float32), landmarks=rng.uniform(0, 16, (68, 2)).astype(np.float32),
    ) for i in range(5)]
    with SubjectWriter(tmp_path / "train" / "subject0042.h5", norm, "subject0042", chunk=2) as writer:
        writer.write(samples[:3])
        writer.write(samples[3:])
    assert detect_format(tmp_path / "train" / "subject0042.h5") == "gazegen-store"
    back = list(iter_samples(tmp_path / "train" / "subject0042.h5"))
    assert len(back) == 5
    for a, b in zip(samples, back):
        assert b.subject == a.subject and b.normalisation == norm
        assert (b.frame_index, b.cam_index) == (a.frame_index, a.cam_index)
        for key in ("image", "gaze", "head_pose", "gaze_head", "camera", "face_mask", "left_eye_mask", "right_eye_mask",
                    "depth", "landmarks"):
            np.testing.assert_array_equal(getattr(b, key), getattr(a, key), err_msg=key)
    with StoreReader(tmp_path / "train" / "subject0042.h5") as reader:
        np.testing.assert_array_equal(reader[-1].image, samples[-1].image)
        assert [s.frame_index for s in reader.read(1, 4)] == [0, 1, 1]
    # a later batch that drops a field the file already has must not leave a short dataset behind
    with pytest.raises(ValueError, match="depth known for earlier samples"):
        with SubjectWriter(tmp_path / "short.h5", norm, "subject0042") as writer:
            writer.write(samples[:2])
            writer.write([dataclasses.replace(s, depth=None) for s in samples[2:]])
    assert not (tmp_path / "short.h5").exists() and not (tmp_path / "short.h5.tmp").exists()


def test_random_access_matches_iteration_and_reads_in_chunks(tmp_path):
    make_official(tmp_path / "s.h5", n=7)
    with XGazeReader(tmp_path / "s.h5", NORM32, chunk=3) as reader:
        batches = list(reader.batches())
        assert [len(b) for b in batches] == [3, 3, 1]
        np.testing.assert_array_equal(reader[4].image, batches[1][1].image)
        np.testing.assert_array_equal(reader[-1].gaze, batches[2][0].gaze)
        with pytest.raises(IndexError):
            reader[7]


def test_errors_name_file_key_and_problem(tmp_path):
    garbage = tmp_path / "broken.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataError, match=r"broken\.h5.*cannot be read as HDF5"):
        open_subject(garbage)
    make_official(tmp_path / "nogaze.h5", face_gaze=None, face_head_pose=np.zeros((6, 2)), face_patch=bgr_patches(6, 32))
    with pytest.raises(DataError, match=r"nogaze\.h5: an ETH-XGaze file without gaze labels \(no key 'face_gaze'\)"):
        detect_format(tmp_path / "nogaze.h5")
    make_official(tmp_path / "nothing.h5", face_gaze=None, frame_index=None)
    with pytest.raises(DataError, match=r"nothing\.h5: unknown layout: .*keys present: \['cam_index', 'face_head_pose'"):
        detect_format(tmp_path / "nothing.h5")
    make_official(tmp_path / "nohead.h5", face_head_pose=None)
    with pytest.raises(DataError, match=r"nohead\.h5: key 'face_head_pose' is missing"):
        open_subject(tmp_path / "nohead.h5", NORM32)
    make_official(tmp_path / "shape.h5", face_gaze=np.zeros((6, 3)))
    with pytest.raises(DataError, match=r"shape\.h5: key 'face_gaze' has shape \(6, 3\), expected \(6, 2\)"):
        open_subject(tmp_path / "shape.h5", NORM32)
    make_official(tmp_path / "rows.h5", face_head_pose=np.zeros((5, 2)))
    with pytest.raises(DataError, match=r"rows\.h5: key 'face_head_pose' has shape \(5, 2\)"):
        open_subject(tmp_path / "rows.h5", NORM32)
    gaze = eth_xgaze_labels(np.random.default_rng(0), 6)["face_gaze"]
    gaze[4, 1] = np.nan
    make_official(tmp_path / "nan.h5", face_gaze=gaze)
    with pytest.raises(DataError, match=r"nan\.h5: key 'face_gaze' has NaN/inf labels in 1 of 6 rows \(rows \[4\]\)"):
        open_subject(tmp_path / "nan.h5", NORM32)
    with open_subject(tmp_path / "nan.h5", NORM32, strict=False) as reader:  # inspect's lenient mode
        assert len(reader.problems) == 1 and np.isnan(reader[4].gaze[1]) and np.isnan(reader[4].gaze_head).all()
    make_official(tmp_path / "degrees.h5", face_head_pose=np.full((6, 2), 30.0))
    with pytest.raises(DataError, match=r"degrees\.h5: key 'face_head_pose'.*radian"):
        open_subject(tmp_path / "degrees.h5", NORM32)
    with pytest.raises(DataError, match=r"missing\.h5: no such file"):
        open_subject(tmp_path / "missing.h5")


def test_gazenerf_512_files_get_focal_1600_and_bad_cameras_are_refused(tmp_path):
    make_gazenerf(tmp_path / "xgaze_subject0001.h5", n=1, res=512)
    with open_subject(tmp_path / "xgaze_subject0001.h5") as reader:
        norm = reader.normalisation
        assert (norm.focal, norm.resolution) == (1600.0, 512)  # GazeNeRF: 1600 at 512 px (680 mm, see module doc)
        assert reader[0].face_mask.shape == (512, 512)
    make_official(tmp_path / "cams.h5", n=2, cam_index=np.array([[3], [25]]))
    with pytest.raises(DataError, match=r"cams\.h5: key 'cam_index' holds 3\.\.25, outside 0\.\.18"):
        open_subject(tmp_path / "cams.h5", NORM32)
