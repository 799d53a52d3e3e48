"""Face detection, alignment and cropping (gazegen/data/faces.py) on real photographs that
scikit-image ships (astronaut: a frontal portrait; chelsea, coffee, rocket: no human face) and
on a drawn face whose eye centres are known exactly."""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest

from gazegen.config import CropConfig
from gazegen.data.mtcnn import MtcnnDetector
from gazegen.data.faces import (
    FaceDetection,
    ImageReadError,
    align_face,
    crop_faces,
    read_image,
    similarity_from_eyes,
    target_eyes,
)

skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photographs")


def _apply(matrix: np.ndarray, point) -> np.ndarray:
    return matrix[:, :2] @ np.asarray(point, np.float64) + matrix[:, 2]


def _roll_deg(det: FaceDetection) -> float:
    """Angle of the eye line (image right eye minus image left eye), degrees, y down."""
    (lx, ly), (rx, ry) = det.eyes()
    return math.degrees(math.atan2(ly - ry, lx - rx))


def _turn(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)


def _drawn_face(side: int = 400, cx: float = 200, cy: float = 210, s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A crude frontal RGB face (skin oval, hair, brows, eyes, nose, mouth) of eye distance 64 * s
    pixels, and its (left, right) eye centres (the subject's: left is on the image's right)."""
    image = np.full((side, side, 3), (150, 160, 170), np.uint8)

    def p(x: float, y: float) -> tuple[int, int]:
        return round(cx + s * x), round(cy + s * y)

    def n(v: float) -> int:
        return max(1, round(s * v))

    cv2.ellipse(image, p(0, -20), (n(95), n(110)), 0, 180, 360, (60, 40, 30), -1)  # hair
    cv2.ellipse(image, p(0, 10), (n(80), n(105)), 0, 0, 360, (225, 180, 150), -1)  # skin
    for side_x in (-1, 1):
        cv2.ellipse(image, p(side_x * 32, -14), (n(20), n(5)), 0, 180, 360, (70, 50, 40), n(5))  # brow
        cv2.ellipse(image, p(side_x * 32, 2), (n(17), n(8)), 0, 0, 360, (240, 240, 240), -1)  # sclera
        cv2.circle(image, p(side_x * 32, 2), n(7), (90, 60, 40), -1)  # iris
        cv2.circle(image, p(side_x * 32, 2), n(3), (10, 10, 10), -1)  # pupil
        cv2.ellipse(image, p(side_x * 32, 2), (n(18), n(9)), 0, 180, 360, (90, 70, 60), n(2))  # upper lid
    cv2.line(image, p(0, 5), p(-6, 40), (180, 140, 120), n(3))  # nose shadow
    cv2.ellipse(image, p(0, 45), (n(14), n(5)), 0, 0, 180, (160, 120, 110), n(3))  # nostrils
    cv2.ellipse(image, p(0, 68), (n(26), n(8)), 0, 0, 180, (150, 60, 70), n(5))  # mouth
    eyes = np.array([[cx + 32 * s, cy + 2 * s], [cx - 32 * s, cy + 2 * s]])  # subject's left = image right
    return cv2.GaussianBlur(image, (0, 0), 1.2 * s), eyes


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8 RGB


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut) -> FaceDetection:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


# --------------------------------------------------------------------------- reading


def test_read_image_rgb_gray_rgba_and_non_ascii_path(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = tmp_path / "visage_été_顔.png"
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
    np.testing.assert_array_equal(read_image(path), rgb)

    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    (tmp_path / "gray.png").write_bytes(cv2.imencode(".png", gray)[1].tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, -1))

    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((6, 8), 77, np.uint8)])
    (tmp_path / "rgba.png").write_bytes(cv2.imencode(".png", bgra)[1].tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"this is a text file, not a photograph\n", "not a decodable image"),
        ("corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not a decodable image"),
        ("truncated.jpg", None, "not a decodable image"),
    ],
)
def test_read_image_errors_name_the_file(tmp_path, astronaut, name, content, problem):
    if content is None:  # the first half of a real JPEG
        jpeg = cv2.imencode(".jpg", astronaut)[1].tobytes()
        content = jpeg[: len(jpeg) // 2]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


def test_read_image_missing_and_directory(tmp_path):
    for path in (tmp_path / "absent.png", tmp_path):
        with pytest.raises(ImageReadError, match="cannot read file") as info:
            read_image(path)
        assert str(path) in str(info.value)


# --------------------------------------------------------------------------- detection


def test_astronaut_face_box_and_eyes(astronaut_face):
    x, y, w, h = astronaut_face.box
    # Hand-checked on the photo: the face spans about x 175-275, y 60-170.
    assert 160 <= x <= 200 and 50 <= y <= 90 and 75 <= w <= 120 and 75 <= h <= 130
    assert not astronaut_face.eyes_estimated and len(astronaut_face.landmarks) == 5
    (lx, ly), (rx, ry) = astronaut_face.eyes()
    assert 195 <= rx <= 212 and 235 <= lx <= 255  # subject's right eye on the image's left
    assert 92 <= ry <= 110 and 92 <= ly <= 110
    assert abs(_roll_deg(astronaut_face)) < 6  # she tilts her head a little (~3 degrees)


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_no_human_face_in_other_photographs(detector, name):
    result = crop_faces(getattr(skdata, name)(), detector, CropConfig(), "always")
    assert result.status == "no_face" and not result.ok and result.image is None and result.detection is None
    assert "no face" in result.reason


def test_detector_pickles_for_workers(detector, astronaut, astronaut_face):
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.detect(astronaut) == [astronaut_face]


def test_largest_face_wins(detector, astronaut):
    canvas = np.full((520, 760, 3), 128, np.uint8)
    head = astronaut[20:240, 120:330]  # the head with some margin, (220, 210, 3)
    small = cv2.resize(head, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas[20 : 20 + small.shape[0], 20 : 20 + small.shape[1]] = small
    big = cv2.resize(head, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_LINEAR)
    canvas[220 : 220 + big.shape[0], 400 : 400 + big.shape[1]] = big
    faces = detector.detect(canvas)
    assert len(faces) == 2 and faces[0].area > 3 * faces[1].area
    result = crop_faces(canvas, detector, CropConfig(), "always")
    x, y, w, h = result.detection.box
    assert result.status == "cropped" and x >= 400 and y >= 220 and w > 100


# --------------------------------------------------------------------------- alignment


def test_target_framing_follows_the_normalisation():
    cfg = CropConfig()
    assert cfg.eye_distance_fraction * 512 == pytest.approx(1600 * 63 / 950)  # ~106 px of 512
    assert 0.38 < cfg.eye_line_fraction < 0.46  # eyes slightly above the centre
    (lx, ly), (rx, ry) = target_eyes(cfg, 512)
    assert (lx + rx) / 2 == 256 and ly == ry and lx - rx == pytest.approx(106.1, abs=0.1)


def test_similarity_from_eyes_is_exact_and_a_similarity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        eyes, targets = rng.uniform(0, 500, (2, 2)), rng.uniform(0, 500, (2, 2))
        m = similarity_from_eyes(eyes, targets)
        np.testing.assert_allclose([_apply(m, e) for e in eyes], targets, atol=1e-9)
        a = m[:, :2]
        np.testing.assert_allclose(a @ a.T, np.eye(2) * np.linalg.det(a), atol=1e-9)


def test_aligned_eyes_land_on_targets(detector, astronaut, astronaut_face):
    cfg = CropConfig(resolution=256)
    aligned = align_face(astronaut, astronaut_face, cfg)
    assert aligned.image.shape == (256, 256, 3) and aligned.image.dtype == np.uint8
    for eye, target in zip(astronaut_face.eyes(), (aligned.left_eye, aligned.right_eye)):
        assert np.abs(_apply(aligned.matrix, eye) - target).max() < 1.0
    # The pixels moved with the matrix: the face found again in the crop has its eyes there too.
    again = detector.detect(aligned.image)[0]
    for eye, target in zip(again.eyes(), target_eyes(cfg)):
        assert np.abs(np.subtract(eye, target)).max() < 0.04 * 256


@pytest.mark.parametrize("degrees", [15.0, -15.0])
def test_roll_is_corrected(detector, astronaut, astronaut_face, degrees):
    turned = _turn(astronaut, degrees)  # cv2: positive degrees turn the picture anticlockwise
    result = crop_faces(turned, detector, CropConfig(), "always")
    assert result.status == "cropped"
    assert _roll_deg(result.detection) == pytest.approx(_roll_deg(astronaut_face) - degrees, abs=4.0)
    again = detector.detect(result.image)[0]
    assert not again.eyes_estimated and abs(_roll_deg(again)) < 3.0


def test_downscaling_path_matches_direct_warp(detector, astronaut, astronaut_face):
    """A 4x photo takes the area-averaging path; its crop must equal the crop of the original."""
    cfg = CropConfig(resolution=128)
    big = cv2.resize(astronaut, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    scale = lambda p: (4 * p[0] + 1.5, 4 * p[1] + 1.5)  # noqa: E731 (pixel centres under cv2.resize)
    x, y, w, h = astronaut_face.box
    left, right = astronaut_face.eyes()
    big_face = FaceDetection((4 * x, 4 * y, 4 * w, 4 * h), scale(left), scale(right))
    small, large = align_face(astronaut, astronaut_face, cfg), align_face(big, big_face, cfg)
    assert np.abs(small.image.astype(int) - large.image.astype(int)).mean() < 3.0


def test_missing_eyes_fall_back_to_the_box(astronaut, astronaut_face):
    boxed = FaceDetection(astronaut_face.box)  # a detector that gives no eyes
    aligned = align_face(astronaut, boxed, CropConfig(resolution=128))
    for eye, target in zip(boxed.eyes(), (aligned.left_eye, aligned.right_eye)):
        assert np.abs(_apply(aligned.matrix, eye) - target).max() < 1e-6
    # The box estimate is near the detected eyes (within 15% of the eye distance).
    ipd = np.linalg.norm(np.subtract(*astronaut_face.eyes()))
    assert np.abs(np.subtract(boxed.eyes(), astronaut_face.eyes())).max() < 0.15 * ipd


# --------------------------------------------------------------------------- --crop modes


def test_never_passes_square_images_through(detector, astronaut):
    cfg = CropConfig(resolution=256)
    result = crop_faces(astronaut, detector, cfg, "never")
    assert result.status == "passthrough" and result.detection is None
    np.testing.assert_array_equal(result.image, cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA))
    result = crop_faces(skdata.chelsea(), detector, cfg, "never")
    assert result.status == "not_square" and "451x300" in result.reason and result.image is None


def test_auto_crops_photos_and_keeps_normalised_crops(detector, astronaut):
    cfg = CropConfig(resolution=256)
    photo = crop_faces(astronaut, detector, cfg, "auto")  # a square photo with a small face
    assert photo.status == "cropped"
    again = crop_faces(photo.image, detector, cfg, "auto")  # its crop already is normalised
    assert again.status == "passthrough" and again.image is photo.image and again.detection is not None
    assert crop_faces(photo.image, detector, cfg, "always").status == "cropped"
    # Square at the output size and no face: not taken as a frontal crop unasked; the reason says how to ask
    faceless = cv2.resize(skdata.immunohistochemistry(), (256, 256), interpolation=cv2.INTER_AREA)
    result = crop_faces(faceless, detector, cfg, "auto")
    assert result.status == "no_face" and result.reason.endswith("give it with --crop never")
    assert crop_faces(faceless, detector, cfg, "never").status == "passthrough"
    other = crop_faces(faceless[:200, :200], detector, cfg, "auto")  # another size: no hint
    assert other.status == "no_face" and other.reason == "no face found in the 200x200 image"
    assert crop_faces(skdata.chelsea(), detector, cfg, "auto").status == "no_face"  # not square


class _Landmarks:
    """A detector that finds one face with the given five landmarks (the oracle's exact ones)."""

    def __init__(self, marks: np.ndarray):
        self.marks = marks

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        (x0, y0), (x1, y1) = self.marks.min(0) - 20, self.marks.max(0) + 20
        pts = tuple(map(tuple, self.marks))
        return [FaceDetection((x0, y0, x1 - x0, y1 - y0), pts[1], pts[0], 1.0, landmarks=pts)]


@pytest.mark.parametrize("pitch_yaw_deg", [(0.0, 0.0), (-12.0, 18.0), (10.0, -22.0)])
def test_auto_reads_the_head_pose_of_a_normalised_crop(pitch_yaw_deg):
    """A normalised crop passed through by `auto` keeps its image but not a frontal label: the generic face placed at the
    normalised camera's face centre with a known head pose, its five landmarks projected exactly into a 512 px crop
    (given at 256): the head pose comes back to 0.01 degrees, with face_mat_norm the identity."""
    from gazegen.data.normalise import face_model, normalised_camera_matrix
    from gazegen.geometry import head_pose_to_rotation

    cfg = CropConfig(resolution=256)
    norm = cfg.normalisation.at_resolution(512)
    pose = np.radians(pitch_yaw_deg)
    cam = face_model(norm.eye_above_centre_mm) @ head_pose_to_rotation(pose).T + [0.0, 0.0, norm.distance_mm]
    marks = cam[:, :2] / cam[:, 2:] * norm.focal + normalised_camera_matrix(norm)[:2, 2]
    image = np.full((512, 512, 3), 128, np.uint8)
    result = crop_faces(image, _Landmarks(marks), cfg, "auto")
    assert result.status == "passthrough", result.reason
    assert result.image.shape == (256, 256, 3) and result.normalised is not None
    np.testing.assert_allclose(np.degrees(result.head_pose), pitch_yaw_deg, atol=0.01)
    np.testing.assert_array_equal(result.normalised.face_mat_norm, np.eye(3))


def test_small_faces_are_rejected(detector, astronaut):
    result = crop_faces(astronaut, detector, CropConfig(min_face_px=150), "always")
    assert result.status == "face_too_small" and "min_face_px=150" in result.reason
    with pytest.raises(ValueError, match="crop mode"):
        crop_faces(astronaut, detector, CropConfig(), "sometimes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rendered faces


@pytest.mark.parametrize("scale", [0.8, 1.0])
def test_drawn_face_is_found_and_normalised(detector, scale):
    """MTCNN finds a crude drawn face (at these sizes; not at 1.5x); the detected eyes are the
    drawn ones, and the drawn eyes land level and centred in the normalised crop."""
    image, eyes = _drawn_face(s=scale)
    cfg = CropConfig(resolution=256)
    result = crop_faces(image, detector, cfg, "always")
    assert result.status == "cropped" and result.normalised is not None
    ipd = 64 * scale
    assert np.abs(np.subtract(result.detection.eyes(), eyes)).max() < 0.15 * ipd
    moved = cv2.perspectiveTransform(eyes.reshape(-1, 1, 2), result.normalised.warp)[:, 0]  # the true eyes, in the crop
    assert abs(moved[0, 1] - moved[1, 1]) < 0.05 * 256 and abs(moved.mean(0)[0] - 128) < 0.05 * 256


def test_procedural_heads_pass_through_auto_as_normalised_crops(detector):
    """Rendered procedural heads are normalised crops already: `auto` keeps them unchanged when
    the crop config declares their framing (the camera looks at the eye midpoint)."""
    from gazegen.config import SynthHeadsConfig, load_config
    from gazegen.data.heads import render_subject, subject_plan

    heads = load_config(SynthHeadsConfig, None, ["resolution=256", "rig.views=1", "gazes=1"])
    cfg = CropConfig(resolution=256, normalisation=heads.camera)  # the heads' framing (their eye midpoint)
    for index in range(2):
        (sample,) = next(iter(render_subject(subject_plan(heads, index), heads)))
        result = crop_faces(sample.image, detector, cfg, "auto")
        assert result.status == "passthrough", result.reason
        np.testing.assert_array_equal(result.image, sample.image)
