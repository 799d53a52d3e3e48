"""MPIIFaceGaze's release (Zhang et al. 2017) read as normalised Samples, for the cross-dataset protocol.

Layout: ``ROOT/pXX/`` per person (p00 .. p14) with ``pXX.txt`` (one line per image), the images
``pXX/dayYY/NNNN.jpg`` and ``pXX/Calibration/Camera.mat`` (``cameraMatrix`` 3x3, ``distCoeffs``).
A line has 28 space-separated fields:

    1       the image path relative to pXX/
    2-3     the gaze point on the screen, pixels (unused)
    4-15    six landmarks (x, y): four eye corners, then two mouth corners, image pixels
    16-21   the head pose from the 6-point face model: Rodrigues rotation (3), translation mm (3)
    22-24   fc: the face centre in camera coordinates, mm (the mean of the six model points)
    25-27   gt: the gaze target in camera coordinates, mm (gaze direction: gt - fc)
    28      "left" or "right", the eye of the evaluation subset (unused)

Each image is normalised with the annotated pose (gazegen/data/normalise.py ``normalise_with_pose``,
the face centre being fc, as in the dataset's own normalisation) to the store's normalised camera;
the gaze label is ``R (gt - fc)``; lens distortion is not removed (the release's own normalised
data keep it too). Masks come from the generic face placed with that pose (gazegen/data/masks.py),
the eye outlines moved onto the centres of the annotated eye corners. Every person is one
subject ``mpii_pXX`` of the test split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.data.faces import ImageReadError, read_image
from gazegen.data.normalise import HeadPose, normalise_with_pose
from gazegen.data.photo_reader import PhotoSubjectReader
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError

FIELDS = 28
PERSON = re.compile(r"p\d\d")


@dataclass(frozen=True)
class Annotation:
    image: str  # path relative to the person's folder
    landmarks: np.ndarray  # (6, 2) four eye corners, two mouth corners, pixels
    rotation: np.ndarray  # (3, 3) head rotation, head -> camera
    face_centre: np.ndarray  # (3,) mm
    target: np.ndarray  # (3,) mm


def person_folders(root: str | Path) -> list[Path]:
    """The ``pXX`` folders holding a ``pXX.txt`` under `root` (empty when it is not an MPIIFaceGaze release)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and PERSON.fullmatch(p.name) and (p / f"{p.name}.txt").is_file())


def unread_folders(root: str | Path) -> list[Path]:
    """Folders under `root` named like a person (``pXX``, any case) that ``person_folders`` leaves out: a name
    not lower-case, or no ``pXX.txt`` in it."""
    root = Path(root)
    if not root.is_dir():
        return []
    used = set(person_folders(root))
    return sorted(p for p in root.iterdir() if p.is_dir() and PERSON.fullmatch(p.name.lower()) and p not in used)


def read_annotations(path: Path) -> list[Annotation]:
    """Parse a ``pXX.txt``; raises DataError naming the file, the line and the problem."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != FIELDS:
            raise DataError(f"{path}: line {number} has {len(fields)} fields, MPIIFaceGaze lines have {FIELDS}")
        try:
            values = np.array([float(v) for v in fields[1:27]])
        except ValueError:
            raise DataError(f"{path}: line {number}: fields 2-27 must be numbers") from None
        if not np.all(np.isfinite(values)):
            raise DataError(f"{path}: line {number}: a label is not finite")
        rvec, tvec, fc, gt = values[14:17], values[17:20], values[20:23], values[23:26]
        if fc[2] <= 0 or tvec[2] <= 0:
            raise DataError(f"{path}: line {number}: the face is not in front of the camera (z <= 0)")
        if np.linalg.norm(gt - fc) < 1e-6:
            raise DataError(f"{path}: line {number}: the gaze target equals the face centre")
        out.append(Annotation(fields[0], values[2:14].reshape(6, 2), cv2.Rodrigues(rvec)[0], fc, gt))
    return out


def read_camera(person: Path) -> np.ndarray:
    """(3, 3) ``cameraMatrix`` of ``person/Calibration/Camera.mat``."""
    path = person / "Calibration" / "Camera.mat"
    try:
        variables = scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy reads MATLAB files up to v7; v7.3 is HDF5
        raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it as v7 or older") from None
    except Exception as e:  # scipy's parser fails in many ways on a file that is no MAT file (IndexError, MatReadError)
        raise DataError(f"{path}: cannot read the camera calibration ({type(e).__name__}: {e})") from None
    try:
        matrix = np.asarray(variables["cameraMatrix"], np.float64)
    except KeyError:
        raise DataError(f"{path}: no variable 'cameraMatrix'") from None
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'cameraMatrix' is not a numeric matrix") from None
    if matrix.shape != (3, 3):
        raise DataError(f"{path}: 'cameraMatrix' is {matrix.shape}, expected (3, 3)")
    return matrix


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """MPII's six landmarks -> `mtcnn.LANDMARKS` order: eye centres (corner midpoints; the subject's
    right eye is the one on the image's left), no nose (NaN), mouth corners."""
    eyes = sorted([landmarks[0:2].mean(0), landmarks[2:4].mean(0)], key=lambda p: p[0])
    mouth = sorted(landmarks[4:6], key=lambda p: p[0])
    return np.array([eyes[0], eyes[1], [np.nan, np.nan], mouth[0], mouth[1]])


class MpiiFaceGazeReader(PhotoSubjectReader):
    """One person of an MPIIFaceGaze release as normalised Samples (the prepare_store reader protocol)."""

    def __init__(self, person: str | Path, normalisation: NormalisationConfig, chunk: int = 32):
        self.person = Path(person)
        self.normalisation, self.chunk = normalisation, chunk
        self.subject = f"mpii_{self.person.name}"
        self.annotations = read_annotations(self.person / f"{self.person.name}.txt")
        self.camera_matrix = read_camera(self.person)

    def __len__(self) -> int:
        return len(self.annotations)

    def sample(self, index: int) -> Sample:
        a = self.annotations[index]
        try:
            image = read_image(self.person / a.image)
        except ImageReadError as e:
            raise DataError(str(e)) from None
        pose = HeadPose(a.rotation, a.face_centre, 0.0)
        face = normalise_with_pose(image, pose, self.camera_matrix, self.normalisation, five_points(a.landmarks))
        gaze = geometry.vector_to_pitchyaw(face.face_mat_norm @ (a.target - a.face_centre))
        head_pose = face.head_pose
        return self.labelled_sample(face, gaze, head_pose, self.camera_matrix, index)
