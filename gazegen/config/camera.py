"""Camera and data-generation configs: the normalised camera, procedural heads and face cropping."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gazegen.config.loader import ConfigError, _build, bounded


# --------------------------------------------------------------------------- normalisation

ETH_XGAZE_EYE_ABOVE_CENTRE_MM = 23.7  # the eye line above ETH-XGaze's face centre, on its generic face (mm)
HEADS_EYE_ABOVE_CENTRE_MM = 0.0  # gazegen's procedural heads: the camera looks at their eye midpoint


@dataclass(frozen=True)
class NormalisationConfig:
    """ETH-XGaze-style normalised camera (Zhang et al.) plus the renderer's world scale.

    The camera looks at the face centre, `eye_above_centre_mm` below the midpoint of the eye centres:
    ETH-XGaze's face centre (the midpoint of the eye-corner centre and the nose-base centre) lies
    23.7 mm below the eyes of its generic 3D face (face_model.txt); gazegen's procedural heads are
    framed about their eye midpoint (0). Stores record it, training copies it into the checkpoint,
    and synthesis frames photos by it (gazegen/data/faces.py), so a photo's face sits in the crop
    where the model's training faces sat.
    """

    focal: float = bounded(1600.0, 1.0)  # focal length in pixels at `resolution`
    distance_mm: float = bounded(950.0, 1.0)  # camera to face-centre distance, millimetres
    resolution: int = bounded(512, 8, 4096)  # image side in pixels
    radius: float = bounded(2.7, 0.1)  # the same distance in renderer world units (EG3D: 2.7)
    eye_above_centre_mm: float = bounded(ETH_XGAZE_EYE_ABOVE_CENTRE_MM, 0.0, 60.0)  # the eye line above the face centre

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalisationConfig:
        """A NormalisationConfig from plain data (``to_dict``'s output, e.g. a checkpoint's metadata), validated."""
        return _build(cls, data, "")

    def at_resolution(self, resolution: int) -> NormalisationConfig:
        """The same camera (same field of view) for images resized to ``resolution`` pixels."""
        return dataclasses.replace(self, focal=self.focal * resolution / self.resolution, resolution=resolution)

    def same_view(self, other: NormalisationConfig) -> bool:
        """The same field of view (focal / resolution) and distance: the same images at any size."""
        return (math.isclose(self.focal / self.resolution, other.focal / other.resolution, rel_tol=1e-4)
                and math.isclose(self.distance_mm, other.distance_mm, rel_tol=1e-4))

    def same_framing(self, eye_above_centre_mm: float) -> bool:
        """Whether this camera looks at a face centre ``eye_above_centre_mm`` below the eyes (within half a millimetre)."""
        return math.isclose(self.eye_above_centre_mm, eye_above_centre_mm, abs_tol=0.5)


# The normalisations of published stores. ETH-XGaze (Zhang et al. 2020, official patches):
# focal 960 with 600 mm at 224 px and 300 mm at 448 px. LiveGaze's 512 px store (supplement,
# section 6): focal 1600, 950 mm. GazeNeRF's 512 px files: focal 1600, 680 mm (its
# pre_processing/data_process.py).
PUBLISHED_NORMALISATIONS: dict[str, NormalisationConfig] = {
    "xgaze224": NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224),
    "xgaze448": NormalisationConfig(focal=960.0, distance_mm=300.0, resolution=448),
    "livegaze512": NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=512),
    "gazenerf512": NormalisationConfig(focal=1600.0, distance_mm=680.0, resolution=512),
}


# --------------------------------------------------------------------------- procedural heads


@dataclass(frozen=True)
class RigConfig:
    """The camera rig around the head (ETH-XGaze has 18 cameras)."""

    views: int = bounded(18, 1, 64)  # number of cameras; camera 0 is frontal
    max_yaw_deg: float = bounded(60.0, 0.0, 85.0)  # widest horizontal camera angle
    max_pitch_deg: float = bounded(30.0, 0.0, 80.0)  # widest vertical camera angle


@dataclass(frozen=True)
class GazeRangeConfig:
    """Range of gaze directions in the head frame (ETH-XGaze: about +-50 yaw, +-40 pitch)."""

    max_yaw_deg: float = bounded(50.0, 0.0, 80.0)
    max_pitch_deg: float = bounded(40.0, 0.0, 70.0)
    converge: bool = True  # both eyes look at one target point; False: parallel eye axes
    target_mm: tuple[float, float] = (400.0, 1200.0)  # distance range of the gaze target, >= MIN_TARGET_MM


# The nearest gaze target synth-heads draws, mm from the face centre. Well beyond the eyeball (radius
# ~12 mm) and the nose tip (~40 mm in front of the eyes), and no nearer than adult eyes converge (the
# near point of convergence is ~60-100 mm): a nearer target rolls the eyes back or inward past any real
# gaze, and a distance <= 0 puts it behind the eyes, with labels that describe neither.
MIN_TARGET_MM = 100.0


@dataclass(frozen=True)
class SynthHeadsConfig:
    """`gazegen data synth-heads`: procedural multi-view gaze heads in the training-store layout."""

    subjects: int = bounded(4, 1, 100000)  # identities, one h5 file each
    resolution: int = bounded(128, 16, 2048)  # image side in pixels
    gazes: int = bounded(20, 1, 100000)  # frames per subject, one gaze target each
    test_subjects: int = bounded(1, 0, 100000)  # the last subjects go to the test split
    seed: int = bounded(0, 0)  # subject i uses seed (seed, i): files do not depend on `subjects`
    normalisation: NormalisationConfig = NormalisationConfig()  # defaults: LiveGaze's 512 px store (but see `camera`)
    rig: RigConfig = RigConfig()
    gaze: GazeRangeConfig = GazeRangeConfig()

    def __post_init__(self) -> None:
        _check_target_mm(self.gaze.target_mm)
        _check_test_subjects(self.subjects, self.test_subjects)

    @property
    def camera(self) -> NormalisationConfig:
        """The normalised camera of the written images: `normalisation` at `resolution`, looking at the heads' eye
        midpoint (their labels' origin, gazegen/data/heads.py) whatever `normalisation.eye_above_centre_mm` says."""
        return dataclasses.replace(self.normalisation.at_resolution(self.resolution), eye_above_centre_mm=HEADS_EYE_ABOVE_CENTRE_MM)


def _check_target_mm(target_mm: tuple[float, float]) -> None:
    low, high = target_mm
    if not (MIN_TARGET_MM <= low <= high < float("inf")):
        raise ConfigError(f"gaze.target_mm: expected [low, high] with {MIN_TARGET_MM:g} <= low <= high, mm from the face "
                          f"centre (no eyes converge nearer), got [{low:g}, {high:g}]", "gaze.target_mm")


def _check_test_subjects(subjects: int, test_subjects: int) -> None:
    """At least one training subject, except in a one-subject store (a test-only store, for evaluate or finetune)."""
    most = max(subjects - 1, 1)
    if test_subjects > most:
        raise ConfigError(f"test_subjects: {test_subjects} with subjects = {subjects} leaves no training subject; at most {most}",
                          "test_subjects")


# --------------------------------------------------------------------------- face cropping


@dataclass(frozen=True)
class PhotoCameraConfig:
    """The intrinsics assumed for a photo whose camera is unknown: a pinhole with square pixels,
    principal point at the image centre, focal length `focal_fraction` times the longer side
    (1.0: a ~53 degree field of view across the longer side, a typical phone or webcam)."""

    focal_fraction: float = bounded(1.0, 0.1, 20.0)



@dataclass(frozen=True)
class CropConfig:
    """Detect, align and crop faces in photographs like the training data (gazegen/data/faces.py).

    The target framing is not a literal: it is where a frontal face at `normalisation` lands.
    The eyes are `ipd_mm` apart and `normalisation.eye_above_centre_mm` above the face centre the
    normalised camera looks at (ETH-XGaze's: 23.7 mm on its generic 3D face model, face_model.txt,
    whose eye-corner centres are 63.5 mm apart; 63 mm is also the adult mean IPD; gazegen's
    procedural heads: 0, their eye midpoint). A landmark normalisation looks at the point that far
    below the eyes, so both paths frame faces as the model's training data were.
    """

    resolution: int = bounded(512, 16, 4096)  # side of the output crop, pixels
    normalisation: NormalisationConfig = NormalisationConfig()  # framing to match (LiveGaze 512 px store)
    ipd_mm: float = bounded(63.0, 40.0, 80.0)  # distance between the eye centres, millimetres
    min_face_px: int = bounded(40, 8)  # faces narrower than this (input pixels) are rejected
    # --crop auto: an input counts as a normalised crop when its eye distance and eye midpoint are
    # within this fraction of the target eye distance of the targets
    auto_tolerance: float = bounded(0.2, 0.0, 1.0)
    auto_max_roll_deg: float = bounded(8.0, 0.0, 45.0)  # --crop auto: largest eye-line tilt of a crop
    camera: PhotoCameraConfig = PhotoCameraConfig()  # a photo's assumed intrinsics (landmark normalisation)

    @property
    def eye_distance_fraction(self) -> float:
        """Target distance between the eye centres as a fraction of the side (LiveGaze: ~0.21)."""
        n = self.normalisation
        return n.focal / n.resolution * self.ipd_mm / n.distance_mm

    @property
    def eye_line_fraction(self) -> float:
        """Target height of the eye line as a fraction of the side from the top (LiveGaze: ~0.42)."""
        n = self.normalisation
        return 0.5 - n.focal / n.resolution * n.eye_above_centre_mm / n.distance_mm


# --------------------------------------------------------------------------- faces in photos


@dataclass(frozen=True)
class DetectorConfig:
    """MTCNN face detection with five landmarks (gazegen/data/mtcnn.py).

    The image pyramid starts at the scale that maps `min_face_px` to the proposal net's 12 px
    window and shrinks by `scale_step` down to 12 px, so a photo of any size is searched for
    every face from `min_face_px` wide up. A face counts when its eye line is within
    `max_roll_deg` of level and it is confirmed on a crop turned level (MTCNN's landmarks go
    astray beyond ~30 degrees of roll). When no face scores `confident`, copies turned by each of
    `rolls` degrees are searched in that order until one does; every face is also read the other
    way up on a crop around it (an upside-down face can score as confident), and of one face read
    several ways the best-scored reading is kept. So any roll is found, at up to 1 + len(rolls)
    times the cost on a photo without a confident face.
    """

    min_face_px: int = bounded(32, 12)  # smallest face searched for, pixels of the input image
    scale_step: float = bounded(0.709, 0.3, 0.95)  # pyramid factor between levels (MTCNN: 0.709)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9)  # face scores kept by P-, R- and O-Net
    max_roll_deg: float = bounded(30.0, 10.0, 90.0)  # largest eye-line tilt accepted in one (turned) copy
    confident: float = bounded(0.99, 0.0, 1.0)  # a face scored this high ends the search of turned copies
    # degrees, tried in order: quarter turns first (a face turned by one is often also scored,
    # with landmarks astray, in the copies 45 degrees off)
    rolls: tuple[float, ...] = (90.0, -90.0, 180.0, 45.0, -45.0, 135.0, -135.0)

