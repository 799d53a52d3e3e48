"""ETH-XGaze's raw multi-view release (Zhang et al. 2020) read as normalised Samples: a training store
with several cameras per frame, normalised to any camera (not only the published 224/448 px patches).

Layout (as read by the release's own ``normalization_example.py``, xucong-zhang/ETH-XGaze)::

    ROOT/calibration/cam_calibration/cam00.xml .. cam17.xml
    ROOT/data/annotation_train/subject0000.csv    one row per image
    ROOT/data/train/subject0000/frame0000/cam00.JPG .. cam17.JPG

A calibration file is an OpenCV FileStorage XML with ``Camera_Matrix`` (3x3) and
``Distortion_Coefficients`` (1x5), plus the extrinsics ``cam_rotation``/``cam_translation`` (not
needed: every annotation is already in its own camera's frame). A CSV row has 149 comma-separated
fields (0-based):

    0       the frame folder, ``frameNNNN``
    1       the image, ``camNN.JPG``
    2-3     the gaze point on the screen, pixels (unused)
    4-6     the gaze target in this camera's coordinates, mm
    7-9     the head rotation, Rodrigues (head model frame -> camera)
    10-12   the head translation, mm: the origin of ETH-XGaze's face model in the camera
    13-148  68 facial landmarks (x, y), pixels of the (rotated) image

Cameras 3, 6 and 13 were mounted upside down: their images are turned 180 degrees before use, as
the release's example does, and their annotations refer to the turned image. The face centre is
ETH-XGaze's: the head pose applied to `XGAZE_FACE_CENTRE_MM`. Unlike the example (which skips it
for speed), lens distortion is removed: the crop is sampled through the lens model (only the
crop's pixels are mapped, so it costs little) and the landmarks are undistorted. Each image is normalised with the annotated pose (gazegen/data/normalise.py
``normalise_with_pose``) to the store's camera; the gaze label is ``R (target - face centre)``;
masks come from the five landmarks derived from the 68 (gazegen/data/masks.py); the 68 landmarks
are stored warped into the crop. Only ``annotation_train`` is read (the release withholds the test
subjects' gaze); every subject is a train subject, with its frame and camera indices.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.data.faces import ImageReadError, read_image
from gazegen.data.normalise import HeadPose, normalise_with_pose
from gazegen.data.photo_reader import PhotoSubjectReader
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError

FIELDS = 149  # frame, image, 2 screen, 3 target, 3 rvec, 3 tvec, 68 x 2 landmarks
ANNOTATIONS = Path("data") / "annotation_train"
IMAGES = Path("data") / "train"
CALIBRATION = Path("calibration") / "cam_calibration"
SUBJECT = re.compile(r"subject\d{4}\.csv")
FRAME = re.compile(r"frame(\d+)")
CAMERA = re.compile(r"cam(\d\d)\.jpe?g", re.IGNORECASE)
ROTATED_CAMERAS = frozenset({3, 6, 13})  # mounted upside down (the release's normalization_example.py)
# ETH-XGaze's face centre in its face model's frame (mm): the mean of the eye-corner centre and the
# nose-wing centre, derived from face_model.txt rows 20, 23, 26, 29 and 15, 19 (the example's).
XGAZE_FACE_CENTRE_MM = np.array([-0.0166, -10.2915, 27.2761])
UNDISTORT = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)  # iterate to convergence, whatever the lens
EYES = (slice(36, 42), slice(42, 48))  # 68-point contours: the subject's right eye, then the left
NOSE_TIP, MOUTH_CORNERS = 30, (48, 54)


@dataclass(frozen=True)
class RawAnnotation:
    frame: str  # frame folder, e.g. "frame0003"
    image: str  # e.g. "cam05.JPG"
    frame_index: int
    cam_index: int
    target: np.ndarray  # (3,) gaze target, mm, this camera's frame
    rotation: np.ndarray  # (3, 3) head rotation, head model frame -> camera
    face_centre: np.ndarray  # (3,) mm, camera frame
    landmarks: np.ndarray  # (68, 2) pixels of the (turned, distorted) image


@dataclass(frozen=True)
class Calibration:
    camera_matrix: np.ndarray  # (3, 3)
    distortion: np.ndarray  # (k,) OpenCV distortion coefficients

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.distortion != 0))


def annotation_files(root: str | Path) -> list[Path]:
    """The ``subjectNNNN.csv`` files of an ETH-XGaze raw release at `root` (empty when it is not one); DataError
    when it has them but no calibration folder."""
    folder = Path(root) / ANNOTATIONS
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and SUBJECT.fullmatch(p.name))
    if files and not (Path(root) / CALIBRATION).is_dir():
        raise DataError(f"{Path(root) / CALIBRATION}: missing; an ETH-XGaze raw release keeps its cameras' "
                        f"calibration there (camNN.xml), beside {folder}")
    return files


def unread_files(root: str | Path) -> list[Path]:
    """What ``annotation_files`` leaves out of ``ROOT/data/annotation_train``: files not named ``subjectNNNN.csv``."""
    folder = Path(root) / ANNOTATIONS
    return sorted(p for p in folder.iterdir() if not SUBJECT.fullmatch(p.name)) if folder.is_dir() else []


def _row(path: Path, number: int, fields: list[str]) -> RawAnnotation:
    while len(fields) > FIELDS and not fields[-1].strip():  # a trailing comma
        fields = fields[:-1]
    if len(fields) != FIELDS:  # a field more or less shifts every label after it
        raise DataError(f"{path}: line {number} has {len(fields)} fields, ETH-XGaze rows have {FIELDS}")
    frame, camera = FRAME.fullmatch(fields[0].strip()), CAMERA.fullmatch(fields[1].strip())
    if frame is None or camera is None:
        raise DataError(f"{path}: line {number}: expected a frame folder and an image (frame0000,cam00.JPG), "
                        f"got {fields[0]!r},{fields[1]!r}")
    try:
        values = np.array([float(v) for v in fields[2:FIELDS]])
    except ValueError:
        raise DataError(f"{path}: line {number}: fields 3-{FIELDS} must be numbers") from None
    if not np.all(np.isfinite(values)):
        raise DataError(f"{path}: line {number}: a label is not finite")
    target, rvec, tvec = values[2:5], values[5:8], values[8:11]
    rotation = cv2.Rodrigues(rvec)[0]
    centre = rotation @ XGAZE_FACE_CENTRE_MM + tvec
    if centre[2] <= 0:
        raise DataError(f"{path}: line {number}: the face is not in front of the camera (z <= 0)")
    if np.linalg.norm(target - centre) < 1e-6:
        raise DataError(f"{path}: line {number}: the gaze target equals the face centre")
    return RawAnnotation(fields[0].strip(), fields[1].strip(), int(frame.group(1)), int(camera.group(1)), target,
                         rotation, centre, values[11:FIELDS - 2].reshape(68, 2))


def read_annotations(path: Path) -> list[RawAnnotation]:
    """Parse a subject's CSV; raises DataError naming the file, the line and the problem."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e})") from None
    return [_row(path, number, fields) for number, fields in enumerate(rows, 1) if any(v.strip() for v in fields)]


def read_calibration(path: Path) -> Calibration:
    """One camera's ``Camera_Matrix`` and ``Distortion_Coefficients``; DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: missing camera calibration file")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        matrix, distortion = fs.getNode("Camera_Matrix").mat(), fs.getNode("Distortion_Coefficients").mat()
        fs.release()
    except cv2.error as e:
        raise DataError(f"{path}: cannot read the camera calibration ({e.err})") from None
    except SystemError:  # OpenCV's parser on a file that is not XML/YAML (an empty one too)
        raise DataError(f"{path}: cannot read the camera calibration (not an OpenCV FileStorage XML file)") from None
    if matrix is None or np.shape(matrix) != (3, 3):
        raise DataError(f"{path}: no 3x3 'Camera_Matrix'")
    distortion = np.zeros(5) if distortion is None else np.asarray(distortion, np.float64).ravel()
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(distortion))):
        raise DataError(f"{path}: the calibration is not finite")
    return Calibration(np.asarray(matrix, np.float64), distortion)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) -> (5, 2) in `mtcnn.LANDMARKS` order: eye centres (contour means), nose tip, mouth corners."""
    return np.array([landmarks[EYES[0]].mean(0), landmarks[EYES[1]].mean(0), landmarks[NOSE_TIP],
                     landmarks[MOUTH_CORNERS[0]], landmarks[MOUTH_CORNERS[1]]])


class XGazeRawReader(PhotoSubjectReader):
    """One subject of ETH-XGaze's raw release as normalised Samples (the prepare_store reader protocol).

    `annotation`: ``ROOT/data/annotation_train/subjectNNNN.csv``; the images and calibration are
    found from ROOT. Every camera the CSV names must have its calibration file.
    """

    def __init__(self, annotation: str | Path, normalisation: NormalisationConfig, chunk: int = 16):
        self.annotation = Path(annotation)
        self.root = self.annotation.parents[2]
        self.normalisation, self.chunk = normalisation, chunk
        self.subject = self.annotation.stem
        self.rows = read_annotations(self.annotation)
        cams = sorted({r.cam_index for r in self.rows})
        self.calibrations = {c: read_calibration(self.root / CALIBRATION / f"cam{c:02d}.xml") for c in cams}

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> Sample:
        row = self.rows[index]
        calibration = self.calibrations[row.cam_index]
        k = calibration.camera_matrix
        landmarks = row.landmarks
        if calibration.distorted:  # the crop is sampled through the lens; the landmarks moved to match
            landmarks = cv2.undistortPointsIter(landmarks.reshape(-1, 1, 2), k, calibration.distortion, None, k,
                                                UNDISTORT)[:, 0]
        face = normalise_with_pose(self._image(row), HeadPose(row.rotation, row.face_centre, 0.0), k,
                                   self.normalisation, five_points(landmarks),
                                   calibration.distortion if calibration.distorted else None)
        gaze = geometry.vector_to_pitchyaw(face.face_mat_norm @ (row.target - row.face_centre))
        sample = self.labelled_sample(face, gaze, face.head_pose, k, index)
        warped = cv2.perspectiveTransform(landmarks.reshape(-1, 1, 2), face.warp)[:, 0]  # (68, 2) crop pixels
        return dataclasses.replace(sample, frame_index=row.frame_index, cam_index=row.cam_index,
                                   landmarks=warped.astype(np.float32))

    def _image(self, row: RawAnnotation) -> np.ndarray:
        """The row's image, turned upright for the cameras mounted upside down."""
        path = self.root / IMAGES / self.subject / row.frame / row.image
        try:
            image = read_image(path)
        except ImageReadError as e:
            raise DataError(str(e)) from None
        return cv2.rotate(image, cv2.ROTATE_180) if row.cam_index in ROTATED_CAMERAS else image
