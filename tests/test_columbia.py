"""`gazegen data prepare` on a tiny ColumbiaGaze folder written in the published format: procedural
heads photographed with the camera P degrees off their forward direction, looking (V, H) away
from the camera, saved as JPEGs named like the release with an EXIF focal length."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gazegen import geometry
from gazegen.data.columbia import SENSOR_WIDTH_MM, camera_matrix, parse_name
from gazegen.data.heads import sample_identity
from gazegen.data.photo_heads import photograph_head, rotation_from_pose
from gazegen.data.prepare import prepare_store
from gazegen.data.xgaze import DataError, open_subject

torch.set_num_threads(1)
SIZE, FOCAL_PX = 256, 500.0
FOCAL_MM = FOCAL_PX / SIZE * SENSOR_WIDTH_MM
SHOTS = [(0, 0, 0), (15, 10, -5), (-15, -10, 10), (0, 0, 15)]  # P, V, H degrees


def _save(path, image: np.ndarray) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x920A] = FOCAL_MM
    Image.fromarray(image).save(path, exif=exif, quality=95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("columbia")
    subject = root / "0001"
    subject.mkdir()
    identity = sample_identity(np.random.default_rng(11))
    for p, v, h in SHOTS:
        rot = rotation_from_pose(0.0, math.radians(p))  # the camera P degrees off the face's forward direction
        gaze_cam = geometry.pitchyaw_to_vector(np.radians([v, h]))  # (V, H) away from the direction to the camera
        photo = photograph_head(identity, rot, np.array([0.0, 0.0, 600.0]), SIZE, FOCAL_PX, gaze_target_mm=rot.T @ gaze_cam * 1000)
        _save(subject / f"0001_2m_{p}P_{v}V_{h}H.jpg", photo.image)
    (subject / "notes.txt").write_text("not a photo")
    return root


def test_names_and_exif_focal(folder, tmp_path):
    path = folder / "0001" / "0001_2m_15P_10V_-5H.jpg"
    np.testing.assert_allclose(parse_name(path), np.radians([15, 10, -5]))
    k = camera_matrix(path, SIZE, SIZE)
    assert k[0, 0] == pytest.approx(FOCAL_PX) and tuple(k[:2, 2]) == (SIZE / 2, SIZE / 2)
    with pytest.raises(DataError, match="not a ColumbiaGaze file name"):
        parse_name(tmp_path / "0001_2m_15P_10V.jpg")


def test_prepare_labels_from_names(folder, tmp_path):
    report = prepare_store(folder, tmp_path / "store", resolution=64, progress=False)
    assert report.written == ("test/columbia_0001.h5",) and report.images == len(SHOTS)
    with open_subject(tmp_path / "store" / "test" / "columbia_0001.h5") as reader:
        samples = list(reader)
    for s, (p, v, h) in zip(sorted(samples, key=lambda s: s.frame_index), sorted(SHOTS, key=lambda x: f"0001_2m_{x[0]}P_{x[1]}V_{x[2]}H.jpg")):
        np.testing.assert_allclose(s.gaze, np.radians([v, h]), atol=1e-6)
        np.testing.assert_allclose(s.head_pose, np.radians([0, p]), atol=1e-6)
        assert s.image.shape == (64, 64, 3) and s.face_mask[32, 32] == 1 and s.eye_mask.sum() > 0
        np.testing.assert_allclose(s.face_mat_norm @ s.face_mat_norm.T, np.eye(3), atol=1e-5)  # kept: labels map back to the photo


def test_faceless_photo_is_skipped_with_its_reason(folder, tmp_path, caplog):
    src = tmp_path / "src" / "0002"
    src.mkdir(parents=True)
    _save(src / "0002_2m_0P_0V_0H.jpg", np.full((200, 300, 3), 128, np.uint8))
    (src / "0002_2m_0P_0V_5H.jpg").write_bytes((folder / "0001" / "0001_2m_0P_0V_0H.jpg").read_bytes())
    (src / "IMG_1234.JPG").write_bytes((folder / "0001" / "0001_2m_0P_0V_0H.jpg").read_bytes())  # misnamed: no labels
    with caplog.at_level(logging.WARNING):
        report = prepare_store(tmp_path / "src", tmp_path / "out", resolution=64, progress=False)
    assert report.images == 1 and report.unusable == 1
    assert "0002_2m_0P_0V_0H.jpg: no face found; skipped" in caplog.text
    assert "1 photo(s) without a usable face, not converted" in report.summary()
    assert "0002: 1 image(s) not named as ColumbiaGaze photos (SSSS_Dm_PP_VV_HH.jpg), not read: IMG_1234.JPG" in caplog.text


def test_corrupt_photo_names_the_file(tmp_path):
    src = tmp_path / "src" / "0003"
    src.mkdir(parents=True)
    (src / "0003_2m_0P_0V_0H.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"0003_2m_0P_0V_0H.jpg: not a decodable image"):
        prepare_store(tmp_path / "src", tmp_path / "out", resolution=64, progress=False)


def test_a_subject_without_a_usable_face_gets_no_file_and_a_rerun_converts_it(folder, tmp_path, caplog):
    """0002's only photo is faceless: no (empty) store file, no place in the split file, a warning naming it; once the
    photo is replaced, the rerun keeps 0001 and converts 0002."""
    src = tmp_path / "src"
    shutil.copytree(folder / "0001", src / "0001")
    (src / "0002").mkdir()
    photo = src / "0002" / "0002_2m_0P_0V_0H.jpg"
    _save(photo, np.full((200, 300, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        report = prepare_store(src, tmp_path / "out", resolution=64, progress=False)
    assert report.written == ("test/columbia_0001.h5",) and report.unusable == 1
    assert not (tmp_path / "out" / "test" / "columbia_0002.h5").exists() and not list((tmp_path / "out").rglob("*.tmp"))
    assert json.loads((tmp_path / "out" / "train_test_split.json").read_text()) == {"train": [], "test": ["columbia_0001.h5"]}
    assert "0002: none of its 1 images is usable (each named above); not converted" in caplog.text
    photo.write_bytes((folder / "0001" / "0001_2m_0P_0V_0H.jpg").read_bytes())
    report = prepare_store(src, tmp_path / "out", resolution=64, progress=False)
    assert report.skipped == ("test/columbia_0001.h5",) and report.written == ("test/columbia_0002.h5",)
