"""`gazegen data prepare` on a tiny MPIIFaceGaze release written in the published format: a
procedural head photographed at known poses, annotated with its true landmarks, head pose, face
centre and gaze targets."""

from __future__ import annotations

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
