"""Detect, align and crop faces in photographs so that they look like the training data.

Conventions (docs/design.md): images are uint8 HWC **RGB**; `read_image` is the one place where
OpenCV's BGR is converted. Pixel coordinates are (x, y) floats, x right, y down, in OpenCV's
convention (integer coordinates are pixel centres; the normalised camera's principal point is
(W/2, H/2), as in ETH-XGaze). `left_eye` and `right_eye` are the **subject's** eyes (as in
`Sample`): in a frontal photo the subject's left eye is on the image's right.

Pipeline: a `FaceDetector` (gazegen/data/mtcnn.py `MtcnnDetector`: faces with five landmarks)
finds faces; the largest wins (`crop_each_face` keeps them all, with stable ids). A face with
landmarks is normalised the ETH-XGaze way (gazegen/data/normalise.py: head pose by solvePnP,
the normalising rotation, the crop in the model's normalised camera); a face from a detector
without landmarks is aligned by `align_face`, the similarity transform that puts its two eye
centres where a frontal face sits in the normalised training images (`CropConfig`).
`crop_faces` implements `--crop auto|always|never` and returns a `CropResult` whose `reason`
is what the synthesis pipeline writes to its errors table when `ok` is false.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from gazegen.config import CropConfig
from gazegen.data.images import resize_image
from gazegen.data.normalise import NormalisationError, NormalisedFace, normalise_face, photo_camera_matrix, read_normalised_crop
from gazegen.errors import GazegenError

Point = tuple[float, float]  # (x, y) pixels
Box = tuple[float, float, float, float]  # x, y (top-left corner), width, height in pixels
CropMode = Literal["auto", "always", "never"]
CropStatus = Literal["cropped", "passthrough", "no_face", "face_too_small", "no_landmarks", "not_square"]

# Eye centres of a frontal face as fractions of a square frontal-face box (x, y from its top-left
# corner), for detectors that give a box but no eyes. Measured on OpenCV Haar frontal-face
# detections of scikit-image's astronaut (eyes ~0.46 box apart).
BOX_RIGHT_EYE: Point = (0.27, 0.37)  # the subject's right eye: the image's left
BOX_LEFT_EYE: Point = (0.73, 0.37)


class ImageReadError(GazegenError, ValueError):
    """A file could not be read as an image; the message names the file and the problem."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what inputs read_image is given for


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    The bytes are decoded with ``cv2.imdecode`` (so non-ASCII paths work) in colour mode:
    grayscale is expanded to three channels, alpha is dropped, 16-bit is reduced to 8-bit and
    the EXIF orientation is applied. Raises `ImageReadError` for missing, unreadable, empty or
    undecodable files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format, {len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class FaceDetection:
    """One face in an image: its box, eye centres (subject's left/right) and a detector score."""

    box: Box  # axis-aligned face box
    left_eye: Point | None = None  # the subject's left eye centre (image right), None if unknown
    right_eye: Point | None = None  # the subject's right eye centre (image left)
    score: float = 0.0  # detector confidence; only comparable within one detector
    eyes_estimated: bool = False  # True: eye centres guessed from the box, not detected
    landmarks: tuple[Point, ...] | None = None  # five points (gazegen/data/mtcnn.py LANDMARKS) when known

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def eyes(self) -> tuple[Point, Point]:
        """(left, right) eye centres: the detected ones, else the estimate from the box."""
        if self.left_eye is not None and self.right_eye is not None:
            return self.left_eye, self.right_eye
        return eyes_from_box(self.box)


def eyes_from_box(box: Box) -> tuple[Point, Point]:
    """(left, right) eye centres estimated from a frontal-face box (`BOX_LEFT_EYE`, `BOX_RIGHT_EYE`)."""
    x, y, w, h = box
    return (x + BOX_LEFT_EYE[0] * w, y + BOX_LEFT_EYE[1] * h), (x + BOX_RIGHT_EYE[0] * w, y + BOX_RIGHT_EYE[1] * h)


class FaceDetector(Protocol):
    """Finds faces in an (H, W, 3) uint8 RGB image; any order (callers pick the largest)."""

    def detect(self, image: np.ndarray) -> list[FaceDetection]: ...


def check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")


# --------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (res, res, 3) uint8 RGB crop
    matrix: np.ndarray  # (2, 3) float64 affine, input pixels -> crop pixels (cv2.warpAffine's M)
    left_eye: Point  # the subject's left eye in the crop (the target position)
    right_eye: Point


def target_eyes(cfg: CropConfig, resolution: int | None = None) -> tuple[Point, Point]:
    """(left, right) eye centres of a frontal face in a normalised image of side `resolution`."""
    n = cfg.resolution if resolution is None else resolution
    half, line = cfg.eye_distance_fraction * n / 2, cfg.eye_line_fraction * n
    return (n / 2 + half, line), (n / 2 - half, line)


def similarity_from_eyes(eyes: tuple[Point, Point], targets: tuple[Point, Point]) -> np.ndarray:
    """(2, 3) rotation + uniform scale + translation mapping both (left, right) eyes onto the targets."""
    (sl, sr), (tl, tr) = np.asarray(eyes, np.float64), np.asarray(targets, np.float64)
    src, dst = sl - sr, tl - tr
    if np.linalg.norm(src) < 1e-6:
        raise ValueError("the two eye centres coincide")
    scale = np.linalg.norm(dst) / np.linalg.norm(src)
    angle = math.atan2(dst[1], dst[0]) - math.atan2(src[1], src[0])
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    rot = np.array([[a, -b], [b, a]])
    shift = (tl + tr) / 2 - rot @ ((sl + sr) / 2)
    return np.concatenate([rot, shift[:, None]], axis=1)


def align_face(image: np.ndarray, detection: FaceDetection, cfg: CropConfig) -> AlignedFace:
    """Warp `image` so that the detection's eyes land on `target_eyes(cfg)`: the eye line becomes
    horizontal (roll), the eye distance matches (scale) and the face is centred. Pixels outside
    the photo are black, as in ETH-XGaze's normalisation. Large reductions first shrink the
    photo with area averaging (warpAffine alone would alias)."""
    check_rgb(image)
    targets = target_eyes(cfg)
    matrix = similarity_from_eyes(detection.eyes(), targets)
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    source, pre = image, np.eye(3)
    if scale < 0.5:  # shrink by ~the same factor first, then warp with a scale near 1
        f = 2.0 * scale
        size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
        source = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        fx, fy = size[0] / image.shape[1], size[1] / image.shape[0]
        pre = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])  # resize's pixel map
    warp = matrix @ np.linalg.inv(pre)  # resized pixels -> crop pixels
    size = (cfg.resolution, cfg.resolution)
    crop = cv2.warpAffine(source, warp[:2], size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return AlignedFace(crop, matrix, targets[0], targets[1])


# --------------------------------------------------------------------------- --crop modes


@dataclass(frozen=True)
class CropResult:
    status: CropStatus  # "cropped" and "passthrough" are successes
    reason: str  # human-readable: what happened and why (the errors table's text when not ok)
    image: np.ndarray | None = None  # (res, res, 3) uint8 RGB, None when not ok
    detection: FaceDetection | None = None  # the face used (largest), if any
    aligned: AlignedFace | None = None  # the eye alignment, when cropped from a detection without landmarks
    normalised: NormalisedFace | None = None  # the ETH-XGaze normalisation, when cropped from landmarks

    @property
    def head_pose(self) -> np.ndarray:
        """(2,) the face's head pitch/yaw in the normalised camera: from the landmarks when the
        crop was normalised from them, else (0, 0) (a frontal face assumed)."""
        return np.zeros(2) if self.normalised is None else self.normalised.head_pose

    @property
    def ok(self) -> bool:
        return self.status in ("cropped", "passthrough")


def crop_faces(image: np.ndarray, detector: FaceDetector, cfg: CropConfig, mode: CropMode = "auto") -> CropResult:
    """Turn a photo into a normalised face crop of side `cfg.resolution`.

    never   the input already is a normalised crop: a square input is resized, any other fails.
    always  the largest detected face is aligned and cropped; no face (or too small) fails.
    auto    a square input passes through (resized) when it already looks normalised: its
            largest face has its eyes within `cfg.auto_tolerance` of the target positions and
            its eye line within `cfg.auto_max_roll_deg` of level; its head pose is read from the
            landmarks in the normalised camera. Otherwise as ``always``: an image
            without a face found fails, also a square one at the normalised side (a normalised crop
            of a strongly turned head may defeat the detector, but its head pose is not (0, 0), so it
            is not taken as frontal unasked: the reason points to ``never``).
    """
    check_rgb(image)
    h, w = image.shape[:2]
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"crop mode must be auto, always or never, got {mode!r}")
    if mode == "never":
        if h != w:
            return CropResult("not_square", f"--crop never needs square normalised crops, got {w}x{h} pixels")
        return CropResult("passthrough", "--crop never: passed through", resize_image(image, cfg.resolution))
    faces = sorted(detector.detect(image), key=lambda d: -d.area)
    face = faces[0] if faces else None
    if mode == "auto" and h == w and face is not None and _looks_normalised(face, w, cfg):
        return _passed_through(image, face, cfg)
    if face is None:
        crop = h == w and w in (cfg.resolution, cfg.normalisation.resolution)
        hint = "; if it is a normalised face crop of a frontal head, give it with --crop never" if crop else ""
        return CropResult("no_face", f"no face found in the {w}x{h} image{hint}")
    if face.box[2] < cfg.min_face_px:
        reason = f"largest face is {face.box[2]:.0f} px wide, below min_face_px={cfg.min_face_px}"
        return CropResult("face_too_small", reason, detection=face)
    return crop_face(image, face, cfg)


def _passed_through(image: np.ndarray, face: FaceDetection, cfg: CropConfig) -> CropResult:
    """A square image that already looks like a normalised crop, resized to `cfg.resolution`; with landmarks, its head
    pose is read from them in the normalised camera (a normalised crop's head need not face the camera)."""
    resized = resize_image(image, cfg.resolution)
    if face.landmarks is None:
        return CropResult("passthrough", "already a normalised face crop (no landmarks: a frontal head assumed)", resized, face)
    scale = cfg.resolution / image.shape[1]
    marks = np.asarray(face.landmarks, np.float64) * scale  # in the units of normalised_camera_matrix (centre at side / 2)
    try:
        normalised = read_normalised_crop(resized, marks, cfg.normalisation.at_resolution(cfg.resolution))
    except NormalisationError as e:
        return CropResult("no_landmarks", f"a normalised face crop whose landmarks are not usable ({e})", detection=face)
    return CropResult("passthrough", "already a normalised face crop", resized, face, normalised=normalised)


def crop_face(image: np.ndarray, face: FaceDetection, cfg: CropConfig) -> CropResult:
    """Crop one detected face: ETH-XGaze normalisation from its landmarks when it has them (head
    pose from solvePnP, camera from `cfg.camera`, the normalised camera looking at the point
    `cfg.normalisation.eye_above_centre_mm` below the eyes), else the similarity alignment of its eyes."""
    where = f"face at {tuple(round(v) for v in face.box)}"
    if face.landmarks is None:
        aligned = align_face(image, face, cfg)
        return CropResult("cropped", f"{where} aligned by its eyes", aligned.image, face, aligned)
    camera = photo_camera_matrix(image.shape[1], image.shape[0], cfg.camera)
    try:
        normalised = normalise_face(image, np.asarray(face.landmarks), camera, cfg.normalisation.at_resolution(cfg.resolution))
    except NormalisationError as e:
        return CropResult("no_landmarks", f"{where}: landmarks not usable ({e})", detection=face)
    return CropResult("cropped", f"{where} normalised from its landmarks", normalised.image, face, normalised=normalised)


def crop_each_face(image: np.ndarray, detector: FaceDetector, cfg: CropConfig) -> list[tuple[str, CropResult]]:
    """Every face of a photo as its own source: ``(face_id, result)``, largest face first, with
    ``face_id`` ``"face00"``, ``"face01"``, ... in that order (so the largest keeps ``face00``
    whether one face or all are taken). A photo without a usable face gives one failed result
    with the id ``"face00"``."""
    check_rgb(image)
    faces = sorted(detector.detect(image), key=lambda d: -d.area)
    if not faces:
        return [("face00", CropResult("no_face", f"no face found in the {image.shape[1]}x{image.shape[0]} image"))]
    out = []
    for i, face in enumerate(faces):
        if face.box[2] < cfg.min_face_px:
            reason = f"face {i} is {face.box[2]:.0f} px wide, below min_face_px={cfg.min_face_px}"
            out.append((f"face{i:02d}", CropResult("face_too_small", reason, detection=face)))
        else:
            out.append((f"face{i:02d}", crop_face(image, face, cfg)))
    return out


def _looks_normalised(face: FaceDetection, side: int, cfg: CropConfig) -> bool:
    """True when the face's eyes already sit where `target_eyes` puts them, within tolerance."""
    (l, r), (tl, tr) = np.asarray(face.eyes()), np.asarray(target_eyes(cfg, side))
    ipd = np.linalg.norm(tl - tr)
    roll = math.degrees(math.atan2(l[1] - r[1], l[0] - r[0]))
    return (
        abs(np.linalg.norm(l - r) / ipd - 1) <= cfg.auto_tolerance
        and np.linalg.norm((l + r) / 2 - (tl + tr) / 2) <= cfg.auto_tolerance * ipd
        and abs(roll) <= cfg.auto_max_roll_deg
    )


