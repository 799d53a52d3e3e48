"""ColumbiaGaze (Smith et al. 2013, "Gaze Locking") raw photos read as normalised Samples.

Layout: ``ROOT/0001/ .. ROOT/0056/``, one folder per subject, 105 JPEGs each (5184 x 3456) named
``0001_2m_-15P_10V_-5H.jpg``: subject, distance, then the camera's horizontal angle from the
head's forward direction (P: 0, +-15, +-30 degrees) and the gaze direction relative to the
direction to the camera (V: 0, +-10; H: 0, +-5, +-10, +-15 degrees): 0V 0H is eye contact with
the camera, whatever P.

Each photo is normalised from its MTCNN landmarks (gazegen/data/normalise.py), with the focal
length in pixels from the EXIF focal length and the camera's sensor width (`SENSOR_WIDTH_MM`,
the Canon EOS Rebel T3i the set was taken with). The labels come from the file name, not from
the estimated pose: the normalised camera looks from the camera at the face, so the gaze in it
is ``(V, H)`` and the head pose is ``(0, P)`` (the head is level, the camera at eye height).
The signs are named constants: positive V looks up; positive H and P are taken as ETH-XGaze's
positive yaw (toward the image's left). These signs are an assumption not checked against the
released files (none are on this machine); a gaze-locking photo (0V 0H) is (0, 0) either way.
Every subject is one ``columbia_XXXX`` subject of the test split. A photo whose face is not
found is skipped with a warning naming it and why.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from gazegen.config import DetectorConfig, NormalisationConfig, PhotoCameraConfig
from gazegen.data.faces import IMAGE_SUFFIXES, ImageReadError, read_image
from gazegen.data.mtcnn import MtcnnDetector
from gazegen.data.normalise import NormalisationError, normalise_face, photo_camera_matrix
from gazegen.data.photo_reader import PhotoSubjectReader
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError

log = logging.getLogger(__name__)

NAME = re.compile(r"(\d{4})_(\d+(?:\.\d+)?)m_(-?\d+)P_(-?\d+)V_(-?\d+)H\.jpe?g", re.IGNORECASE)
SENSOR_WIDTH_MM = 22.3  # Canon EOS Rebel T3i (APS-C), the camera of the release
EXIF_IFD, EXIF_FOCAL_LENGTH = 0x8769, 0x920A
V_SIGN, H_SIGN, P_SIGN = 1.0, 1.0, 1.0  # file-name angle -> gazegen pitch / yaw (module docstring)
FACE_FRACTION = 12  # faces are searched from a twelfth of the image's shorter side up (they are large)


def subject_folders(root: str | Path) -> list[Path]:
    """The subject folders under `root` holding ColumbiaGaze-named photos (empty when none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and any(NAME.fullmatch(f.name) for f in p.iterdir()))


def parse_name(path: Path) -> tuple[float, float, float]:
    """(P, V, H) in radians from a ColumbiaGaze file name; DataError when it is not one."""
    match = NAME.fullmatch(path.name)
    if match is None:
        raise DataError(f"{path}: not a ColumbiaGaze file name (SSSS_Dm_PP_VV_HH.jpg, e.g. 0001_2m_-15P_10V_-5H.jpg)")
    return tuple(math.radians(float(match.group(i))) for i in (3, 4, 5))  # type: ignore[return-value]


def camera_matrix(path: Path, width: int, height: int) -> np.ndarray:
    """(3, 3) intrinsics from the EXIF focal length (mm) and `SENSOR_WIDTH_MM`; the generic
    photo guess (PhotoCameraConfig) with a warning when the file has none."""
    try:
        focal_mm = float(Image.open(path).getexif().get_ifd(EXIF_IFD).get(EXIF_FOCAL_LENGTH, 0.0))
    except (OSError, ValueError, TypeError):
        focal_mm = 0.0
    if focal_mm <= 0:
        log.warning("%s: no EXIF focal length; assuming %s", path, PhotoCameraConfig())
        return photo_camera_matrix(width, height)
    f = focal_mm / SENSOR_WIDTH_MM * width
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


class ColumbiaGazeReader(PhotoSubjectReader):
    """One ColumbiaGaze subject folder as normalised Samples (the prepare_store reader protocol)."""

    def __init__(self, folder: str | Path, normalisation: NormalisationConfig, chunk: int = 8):
        self.folder = Path(folder)
        self.normalisation, self.chunk = normalisation, chunk
        self.subject = f"columbia_{self.folder.name}"
        files = sorted(p for p in self.folder.iterdir() if p.is_file())
        self.photos = [p for p in files if NAME.fullmatch(p.name)]
        others = [p.name for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p not in self.photos]
        if others:
            log.warning("%s: %d image(s) not named as ColumbiaGaze photos (SSSS_Dm_PP_VV_HH.jpg), not read: %s",
                        self.folder, len(others), ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
        self._detectors: dict[int, MtcnnDetector] = {}

    def __len__(self) -> int:
        return len(self.photos)

    def sample(self, index: int) -> Sample | None:
        """The normalised photo `index`, or None (logged) when its face is not found."""
        path = self.photos[index]
        pose_p, v, h = parse_name(path)
        try:
            image = read_image(path)
        except ImageReadError as e:
            raise DataError(str(e)) from None
        faces = self._detector(min(image.shape[:2]) // FACE_FRACTION).detect(image)
        if not faces:
            log.warning("%s: no face found; skipped", path)
            return None
        k = camera_matrix(path, image.shape[1], image.shape[0])
        try:
            face = normalise_face(image, np.array(faces[0].landmarks), k, self.normalisation)
        except NormalisationError as e:
            log.warning("%s: landmarks not usable (%s); skipped", path, e)
            return None
        gaze = np.array([V_SIGN * v, H_SIGN * h])
        head_pose = np.array([0.0, P_SIGN * pose_p])
        return self.labelled_sample(face, gaze, head_pose, k, index)

    def _detector(self, min_face_px: int) -> MtcnnDetector:
        min_face_px = max(DetectorConfig().min_face_px, min_face_px)
        if min_face_px not in self._detectors:
            self._detectors[min_face_px] = MtcnnDetector(DetectorConfig(min_face_px=min_face_px))
        return self._detectors[min_face_px]
