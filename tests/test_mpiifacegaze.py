"""`gazegen data prepare` on a tiny MPIIFaceGaze release written in the published format: a
procedural head photographed at known poses, annotated with its true landmarks, head pose, face
centre and gaze targets."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from gazegen import geometry
from gazegen.data.heads import sample_identity
from gazegen.data.mpiifacegaze import read_annotations
from gazegen.data.normalise import gaze_to_photo, normalising_rotation
from gazegen.data.photo_heads import head_landmarks_mm, photograph_head, rotation_from_pose
from gazegen.data.prepare import prepare_store
from gazegen.data.xgaze import DataError, open_subject

torch.set_num_threads(1)
POSES = [(0.1, -0.2, 0.15), (-0.15, 0.3, -0.1), (0.05, 0.1, 0.0)]  # pitch, yaw, roll radians


def _line(image: str, photo, identity, target_mm: np.ndarray) -> str:
    marks, centre = head_landmarks_mm(identity)
    half = identity.eyes.half_width
    corners = np.array([marks[0] + [-half, 0, 0], marks[0] + [half, 0, 0], marks[1] + [-half, 0, 0], marks[1] + [half, 0, 0],
                        marks[3], marks[4]]) - centre  # head frame, about the face centre
    cam = corners @ photo.head_rotation.T + photo.face_centre
    pixels = cam[:, :2] / cam[:, 2:] * photo.camera_matrix[0, 0] + photo.camera_matrix[:2, 2]
    rvec = cv2.Rodrigues(photo.head_rotation)[0][:, 0]
    numbers = [640, 360, *pixels.ravel(), *rvec, *photo.face_centre, *photo.face_centre, *target_mm]
    return " ".join([image, *(f"{v:.6f}" for v in numbers), "left"])


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """p00 with three images: gaze at the camera, along the face's forward axis, and at a point."""
    root = tmp_path_factory.mktemp("mpii")
    person = root / "p00"
    (person / "day01").mkdir(parents=True)
    (person / "Calibration").mkdir()
    identity = sample_identity(np.random.default_rng(7))
    lines, truth = [], []
    for i, (p, y, r) in enumerate(POSES):
        rot = rotation_from_pose(p, y, r)
        photo = photograph_head(identity, rot, np.array([30.0 * i - 30, 20.0, 550.0]), 192, 400.0)
        forward = rot @ np.array([0.0, 0.0, -1.0])  # the face's forward direction in the camera
        targets = [np.zeros(3), photo.face_centre + 400 * forward, np.array([100.0, -50.0, 0.0])]
        name = f"day01/{i + 1:04d}.jpg"
        cv2.imwrite(str(person / name), cv2.cvtColor(photo.image, cv2.COLOR_RGB2BGR))
        lines.append(_line(name, photo, identity, targets[i]))
        truth.append((photo, targets[i]))
    (person / "p00.txt").write_text("\n".join(lines) + "\n")
    scipy.io.savemat(str(person / "Calibration" / "Camera.mat"), {"cameraMatrix": truth[0][0].camera_matrix, "distCoeffs": np.zeros((1, 5))})
    return root, truth


def test_prepare_normalises_mpiifacegaze(release, tmp_path):
    root, truth = release
    report = prepare_store(root, tmp_path / "store", resolution=64, progress=False)
    assert report.written == ("test/mpii_p00.h5",) and report.images == 3
    with open_subject(tmp_path / "store" / "test" / "mpii_p00.h5") as reader:
        samples = list(reader)
    assert [s.image.shape for s in samples] == [(64, 64, 3)] * 3
    # looking at the camera: the normalised camera looks at the face, so the gaze is (0, 0)
    np.testing.assert_allclose(samples[0].gaze, [0.0, 0.0], atol=1e-5)
    # looking along the face's forward axis: the gaze in the head frame is (0, 0), and in the
    # camera it equals the head pose
    np.testing.assert_allclose(samples[1].gaze_head, [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(samples[1].gaze, samples[1].head_pose, atol=1e-5)
    # a gaze target elsewhere: the label mapped back into the photo's camera with the stored
    # face_mat_norm is the direction gt - fc
    photo, target = truth[2]
    expected = geometry.vector_to_pitchyaw(target - photo.face_centre)
    assert geometry.angular_error(gaze_to_photo(samples[2].gaze, samples[2].face_mat_norm), expected) < 1e-3
    for s, (photo, _) in zip(samples, truth):  # the head pose label is the true head seen from the normalised camera
        rot = normalising_rotation(photo.face_centre, photo.head_rotation)
        np.testing.assert_allclose(s.face_mat_norm, rot, atol=1e-6)
        np.testing.assert_allclose(s.head_pose, geometry.rotation_to_head_pose(rot @ photo.head_rotation), atol=1e-5)
        assert s.face_mask[32, 32] == 1 and s.left_eye_mask.sum() > 0 and s.right_eye_mask.sum() > 0


def test_bad_annotations_name_file_and_line(release, tmp_path):
    root, _ = release
    bad = tmp_path / "p01.txt"
    good = (root / "p00" / "p00.txt").read_text().splitlines()
    bad.write_text(good[0] + "\n" + " ".join(good[1].split()[:20]) + "\n")
    with pytest.raises(DataError, match=r"p01.txt: line 2 has 20 fields"):
        read_annotations(bad)
    fields = good[0].split()
    fields[5] = "nan"
    bad.write_text(" ".join(fields) + "\n")
    with pytest.raises(DataError, match="line 1: a label is not finite"):
        read_annotations(bad)


def test_missing_calibration_is_a_clear_error(release, tmp_path):
    root, _ = release
    person = tmp_path / "src" / "p03"
    person.mkdir(parents=True)
    (person / "p03.txt").write_text((root / "p00" / "p00.txt").read_text())
    with pytest.raises(DataError, match=r"Camera.mat: cannot read the camera calibration"):
        prepare_store(tmp_path / "src", tmp_path / "out", resolution=64, progress=False)


@pytest.mark.parametrize("content, expected", [
    (b"not a mat file at all\n", r"Camera.mat: cannot read the camera calibration \(\w+"),  # scipy: IndexError
    (b"", r"Camera.mat: cannot read the camera calibration"),  # scipy: MatReadError
    (b"MATLAB 7.3 MAT-file, HDF5 schema 1.00 .".ljust(116) + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 384,
     r"Camera.mat: a MATLAB v7.3 \(HDF5\) file"),  # MATLAB's header: 116 text bytes, 8 offset, version 2, endian
])
def test_an_unreadable_calibration_is_one_clear_error(release, tmp_path, content, expected):
    root, _ = release
    person = tmp_path / "src" / "p03"
    (person / "Calibration").mkdir(parents=True)
    (person / "p03.txt").write_text((root / "p00" / "p00.txt").read_text())
    (person / "Calibration" / "Camera.mat").write_bytes(content)
    with pytest.raises(DataError, match=expected):
        prepare_store(tmp_path / "src", tmp_path / "out", resolution=64, progress=False)


def _copy_release(root, dst, people=("p00", "p01")):
    """The fixture's person copied under each name (its txt renamed)."""
    for name in people:
        shutil.copytree(root / "p00", dst / name)
        (dst / name / "p00.txt").rename(dst / name / f"{name}.txt")
    return dst


def test_a_rerun_after_removing_a_bad_photo_converts_that_person(release, tmp_path):
    """p01's second photo is corrupt: the run stops there with p00 written. The user deletes the photo and its line;
    the rerun keeps p00 and converts p01 from its two remaining lines (the record's row count for p01, a person never
    written, is no reason to refuse)."""
    root, _ = release
    src = _copy_release(root, tmp_path / "src")
    (src / "p01" / "day01" / "0002.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"0002.jpg"):
        prepare_store(src, tmp_path / "out", resolution=64, progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "test").glob("*.h5")) == ["mpii_p00.h5"]
    txt = src / "p01" / "p01.txt"
    txt.write_text("\n".join(line for line in txt.read_text().splitlines() if "0002.jpg" not in line) + "\n")
    (src / "p01" / "day01" / "0002.jpg").unlink()
    report = prepare_store(src, tmp_path / "out", resolution=64, progress=False)
    assert report.skipped == ("test/mpii_p00.h5",) and report.written == ("test/mpii_p01.h5",) and report.images == 2


def test_people_left_out_are_named_and_an_empty_one_gets_no_file(release, tmp_path, caplog):
    """p01 has no p01.txt, P02 is named in capitals, p03 lists no image: each is warned about by name, none gets a
    store file or a place in the split file, and p00 converts."""
    root, _ = release
    src = _copy_release(root, tmp_path / "src", ("p00", "p01", "P02", "p03"))
    (src / "p01" / "p01.txt").unlink()
    (src / "p03" / "p03.txt").write_text("\n")
    with caplog.at_level(logging.WARNING):
        report = prepare_store(src, tmp_path / "out", resolution=64, progress=False)
    assert report.written == ("test/mpii_p00.h5",)
    warned = [r.getMessage() for r in caplog.records]
    assert any("p01: not converted: no p01.txt in it" in m for m in warned)
    assert any("P02: not converted: MPIIFaceGaze names its people p00 .. p14" in m for m in warned)
    assert any("p03: no images listed; not converted" in m for m in warned)
    assert json.loads((tmp_path / "out" / "train_test_split.json").read_text()) == {"train": [], "test": ["mpii_p00.h5"]}


def test_a_resolution_below_the_minimum_is_refused_before_anything_is_written(release, tmp_path):
    root, _ = release
    for resolution in (0, -8):
        with pytest.raises(DataError, match=rf"--resolution {resolution}: a store's images must be at least 16 px"):
            prepare_store(root, tmp_path / "out", resolution=resolution, progress=False)
    assert not (tmp_path / "out").exists()
