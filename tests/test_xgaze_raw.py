"""`gazegen data prepare` on a tiny ETH-XGaze raw release written in the published layout: two
procedural heads (two subjects), two frames each, photographed by three calibrated cameras of a
rig, one of them mounted upside down (cam03) and one with lens distortion (cam07), annotated with
the true head pose, gaze target and landmarks."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import cv2
import h5py
import numpy as np
import pytest
import torch

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.data.heads import sample_identity
from gazegen.data.normalise import HeadPose, normalise_with_pose, normalising_rotation
from gazegen.data.photo_heads import head_landmarks_mm, photograph_head, rotation_from_pose
from gazegen.data.prepare import prepare_store
from gazegen.data.xgaze import DataError, open_subject
from gazegen.data.xgaze_raw import XGAZE_FACE_CENTRE_MM

torch.set_num_threads(1)
SIZE, RES = 200, 64
# index: (yaw of the camera about the head, focal px, the head's offset from its optical axis mm); cam07's
# wide lens sees the head near its edge, where its strong distortion moves the face by pixels
CAMERAS = {0: (-0.3, 430.0, (20.0, 10.0)), 3: (0.0, 470.0, (-20.0, 0.0)), 7: (0.3, 300.0, (110.0, 50.0))}
DISTORTION = {7: np.array([-0.6, 0.0, 0.0, 0.0, 0.0])}  # barrel: the face stays in the frame
PRECISE = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)  # undistortion iterations
FRAMES = [((0.1, -0.1, 0.05), np.array([80.0, 40.0, -500.0])), ((-0.1, 0.15, -0.05), np.array([-120.0, -60.0, -450.0]))]


def _camera(yaw: float, offset: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera (rotation, translation mm): the head 600 mm away, `yaw` around it, `offset` off its axis."""
    rot = cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0]
    return rot, np.array([*offset, 600.0])


def _distort(image: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """What a lens with distortion `d` records of the pinhole image `image`."""
    h, w = image.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).reshape(-1, 1, 2).astype(np.float64)
    ideal = cv2.undistortPointsIter(grid, k, d, None, k, PRECISE).reshape(h, w, 2).astype(np.float32)
    return cv2.remap(image, ideal, None, cv2.INTER_LINEAR)


def _landmarks68(five: np.ndarray) -> np.ndarray:
    """68 landmarks whose eye contours, nose tip (30) and mouth corners (48, 54) give these five."""
    out = np.repeat(five[2:3], 68, 0)
    out[36:42], out[42:48], out[48], out[54] = five[0], five[1], five[3], five[4]
    return out


def _calibration(path, k: np.ndarray, d: np.ndarray, yaw: float, offset: tuple[float, float]) -> None:
    rot, trans = _camera(yaw, offset)
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("Camera_Matrix", k)
    fs.write("Distortion_Coefficients", d.reshape(1, 5))
    fs.write("cam_translation", trans.reshape(3, 1))
    fs.write("cam_rotation", rot)
    fs.release()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """ROOT and the truth: {(subject, frame, cam): (camera matrix, head rotation, face centre, target, photo,
    right eye centre)}, all in that camera's frame."""
    root = tmp_path_factory.mktemp("xgaze_raw")
    (root / "calibration" / "cam_calibration").mkdir(parents=True)
    (root / "data" / "annotation_train").mkdir(parents=True)
    truth = {}
    for s, seed in enumerate((3, 8)):
        identity = sample_identity(np.random.default_rng(seed))
        marks_head, centre_head = head_landmarks_mm(identity)
        rows = []
        for f, (pose, target_w) in enumerate(FRAMES):
            head_w = rotation_from_pose(*pose)
            for c, (yaw, focal, offset) in CAMERAS.items():
                rot_c, trans_c = _camera(yaw, offset)
                head_c, centre_c, target_c = rot_c @ head_w, trans_c, rot_c @ target_w + trans_c
                gaze_head = head_c.T @ (target_c - centre_c) + centre_head  # about the head's origin
                photo = photograph_head(identity, head_c, centre_c, SIZE, focal, gaze_target_mm=gaze_head)
                k, d = photo.camera_matrix, DISTORTION.get(c, np.zeros(5))
                image, five = photo.image, photo.landmarks
                if c in DISTORTION:
                    image = _distort(image, k, d)
                    rays = np.concatenate([(five - k[:2, 2]) / k[0, 0], np.ones((5, 1))], 1)
                    five = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, d)[0][:, 0]
                if c == 3:  # mounted upside down: the file is turned, the annotation is not
                    image = cv2.rotate(image, cv2.ROTATE_180)
                folder = root / "data" / "train" / f"subject{s:04d}" / f"frame{f:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"cam{c:02d}.JPG"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                rvec = cv2.Rodrigues(head_c)[0][:, 0]
                tvec = centre_c - head_c @ XGAZE_FACE_CENTRE_MM  # the face model's origin
                numbers = [960, 540, *target_c, *rvec, *tvec, *_landmarks68(five).ravel()]
                rows.append(",".join([f"frame{f:04d}", f"cam{c:02d}.JPG", *(f"{v:.6f}" for v in numbers)]))
                eye = head_c @ (marks_head[0] - centre_head) + centre_c  # the right eye centre, camera mm
                truth[(s, f, c)] = (k, head_c, centre_c, target_c, photo, eye)
                if s == 0 and f == 0:
                    _calibration(root / "calibration" / "cam_calibration" / f"cam{c:02d}.xml", k, d, yaw, offset)
        (root / "data" / "annotation_train" / f"subject{s:04d}.csv").write_text("\n".join(rows) + "\n")
    return root, truth


def _copy(release_root, tmp_path):
    return shutil.copytree(release_root, tmp_path / "src")


def test_prepare_builds_a_multiview_store(release, tmp_path):
    root, truth = release
    report = prepare_store(root, tmp_path / "store", resolution=RES, progress=False)
    assert report.written == ("train/subject0000.h5", "train/subject0001.h5") and report.images == 2 * 2 * 3
    assert json.loads((tmp_path / "store" / "train_test_split.json").read_text()) == {
        "train": ["subject0000.h5", "subject0001.h5"], "test": []}
    norm = NormalisationConfig().at_resolution(RES)
    for s in (0, 1):
        path = tmp_path / "store" / "train" / f"subject{s:04d}.h5"
        with open_subject(path) as reader:
            samples = list(reader)
        with h5py.File(path) as f:
            landmarks = f["facial_landmarks"][:]
        assert sorted((x.frame_index, x.cam_index) for x in samples) == sorted((f, c) for f in (0, 1) for c in CAMERAS)
        for x, marks in zip(samples, landmarks):
            k, head, centre, target, photo, eye = truth[(s, x.frame_index, x.cam_index)]
            rot = normalising_rotation(centre, head)  # the closed form, from the truth
            expected_gaze = geometry.vector_to_pitchyaw(rot @ (target - centre))
            assert geometry.angular_error(x.gaze, expected_gaze) < 0.05
            expected_head = geometry.rotation_to_head_pose(rot @ head)
            assert geometry.angular_error(x.head_pose, expected_head) < 0.05
            np.testing.assert_allclose(x.face_mat_norm, rot, atol=1e-5)
            # the right eye centre seen by the normalised camera: K_norm S R X
            scale = norm.distance_mm / np.linalg.norm(centre)
            p = np.array([[norm.focal, 0, RES / 2], [0, norm.focal, RES / 2], [0, 0, 1]]) @ np.diag([1, 1, scale]) @ rot @ eye
            np.testing.assert_allclose(marks[36:42].mean(0), p[:2] / p[2], atol=0.02)
            assert x.face_mask[RES // 2, RES // 2] == 1 and x.left_eye_mask.sum() > 0 and x.right_eye_mask.sum() > 0
            # the face in the crop is the truth photo's own (turned and undistorted right)
            face = x.face_mask.astype(bool)
            direct = _direct_crop(photo, head, centre, norm)
            assert np.corrcoef(x.image[face].astype(float).ravel(), direct[face].astype(float).ravel())[0, 1] > 0.95
        for f in (0, 1):  # multi-view: one gaze in the head frame, whatever the camera
            heads = [x.gaze_head for x in samples if x.frame_index == f]
            assert max(geometry.angular_error(h, heads[0]) for h in heads) < 0.1


def _direct_crop(photo, head, centre, norm) -> np.ndarray:
    """The undistorted, upright photo normalised directly."""
    return normalise_with_pose(photo.image, HeadPose(head, centre, 0.0), photo.camera_matrix, norm, photo.landmarks).image


def test_missing_calibration_names_the_file(release, tmp_path):
    src = _copy(release[0], tmp_path)
    (src / "calibration" / "cam_calibration" / "cam07.xml").unlink()
    with pytest.raises(DataError, match=r"cam07.xml: missing camera calibration file"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)
    assert not (tmp_path / "out" / "train").exists()


def test_nan_row_names_file_and_line(release, tmp_path):
    src = _copy(release[0], tmp_path)
    csv = src / "data" / "annotation_train" / "subject0001.csv"
    lines = csv.read_text().splitlines()
    fields = lines[1].split(",")
    fields[5] = "nan"
    csv.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"subject0001.csv: line 2: a label is not finite"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)


def test_corrupt_image_loses_nothing_written(release, tmp_path):
    src = _copy(release[0], tmp_path)
    bad = src / "data" / "train" / "subject0001" / "frame0001" / "cam03.JPG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"subject0001/frame0001/cam03.JPG: not a decodable image"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["subject0000.h5"]
    shutil.copy(release[0] / "data" / "train" / "subject0001" / "frame0001" / "cam03.JPG", bad)
    report = prepare_store(src, tmp_path / "out", resolution=RES, progress=False)
    assert report.skipped == ("train/subject0000.h5",) and report.written == ("train/subject0001.h5",)


@pytest.mark.parametrize("content", ["<<garbage>>\n", ""])
def test_an_unreadable_calibration_is_one_clear_error(release, tmp_path, content):
    src = _copy(release[0], tmp_path)
    (src / "calibration" / "cam_calibration" / "cam07.xml").write_text(content)
    with pytest.raises(DataError, match=r"cam07.xml: cannot read the camera calibration"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)


def _edit_row(src, line: int, edit) -> None:
    csv = src / "data" / "annotation_train" / "subject0001.csv"
    lines = csv.read_text().splitlines()
    lines[line - 1] = ",".join(edit(lines[line - 1].split(",")))
    csv.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit", [
    lambda f: [*f[:2], "7", *f[2:]],  # a field inserted: every label after it would shift by one
    lambda f: [*f, "1.0", "2.0"],  # two fields appended
])
def test_a_row_with_more_fields_is_refused(release, tmp_path, edit):
    src = _copy(release[0], tmp_path)
    _edit_row(src, 2, edit)
    with pytest.raises(DataError, match=r"subject0001.csv: line 2 has 15[01] fields, ETH-XGaze rows have 149"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)


def test_a_trailing_comma_is_no_field(release, tmp_path):
    src = _copy(release[0], tmp_path)
    _edit_row(src, 2, lambda f: [*f, ""])
    assert prepare_store(src, tmp_path / "out", resolution=RES, progress=False).images == 2 * 2 * 3


def test_a_release_without_its_calibration_folder_says_so(release, tmp_path):
    src = _copy(release[0], tmp_path)
    shutil.rmtree(src / "calibration")
    with pytest.raises(DataError, match=r"calibration/cam_calibration: missing; an ETH-XGaze raw release keeps"):
        prepare_store(src, tmp_path / "out", resolution=RES, progress=False)


def test_an_annotation_file_not_named_subjectNNNN_is_named_in_a_warning(release, tmp_path, caplog):
    src = _copy(release[0], tmp_path)
    folder = src / "data" / "annotation_train"
    (folder / "subject0001.csv").rename(folder / "subject01.csv")
    with caplog.at_level(logging.WARNING):
        report = prepare_store(src, tmp_path / "out", resolution=RES, progress=False)
    assert report.written == ("train/subject0000.h5",)
    assert any("subject01.csv: not converted: not named subjectNNNN.csv" in r.getMessage() for r in caplog.records)


def test_a_prepared_row_read_for_a_model_of_another_framing_keeps_its_head_in_the_photo(release, tmp_path):
    """A store prepared from the raw release (ETH-XGaze's framing) read by synthesis for a model framed about the eye
    midpoint is normalised again: its head pose and face_mat_norm still map back to the annotated head in the photo's
    own camera (the forward direction, exactly), and its head pose is not the store's."""
    from gazegen.pipelines.inputs import DecodeSettings, decode_sources
    from gazegen.pipelines.sources import list_sources

    root, truth = release
    store = tmp_path / "store"
    prepare_store(root, store, resolution=RES, progress=False)
    path = store / "train" / "subject0001.h5"
    with open_subject(path) as reader:
        camera, labels = reader.normalisation, [(s.frame_index, s.cam_index, s.head_pose) for s in reader]
    assert camera.eye_above_centre_mm == 23.7
    heads = dataclasses.replace(camera, eye_above_centre_mm=0.0)
    decoded = decode_sources(list_sources(path), DecodeSettings(RES, heads, "never"))
    for source, (frame, cam, stored_pose) in zip(decoded, labels):
        photo_head = truth[(1, frame, cam)][1]  # the head rotation in the photo's camera
        back = source.face_mat_norm.T @ geometry.head_pose_to_rotation(source.head_pose)
        assert geometry.angular_error(geometry.vector_to_pitchyaw(-back[:, 2]), geometry.vector_to_pitchyaw(-photo_head[:, 2])) < 1e-4
        assert geometry.angular_error(source.head_pose, stored_pose) > 0.5  # degrees: turned by ~1.4
