"""ETH-XGaze normalisation of a face in a photo, from five landmarks.

Zhang et al. ("Revisiting data normalization for appearance-based gaze estimation", 2018; the
ETH-XGaze release) normalise a face in three steps, done here:

1. Head pose: the 2D landmarks and a generic 3D face model give the head's rotation and
   position in the photo's camera (``cv2.solvePnP``; the camera matrix is the photo's, or the
   `PhotoCameraConfig` guess when it is unknown).
2. The normalising rotation ``R`` (ETH-XGaze's ``face_mat_norm``) turns the camera to look at
   the face centre, its x axis in the plane of the head's x axis (no roll left); the scaling
   ``S = diag(1, 1, d_norm / d)`` moves the face to the normalisation distance.
3. The crop is the photo warped by ``W = K_norm S R K^-1`` to the normalised camera
   (`NormalisationConfig`: focal, distance and resolution of the model's training data).

Labels move with ``R`` only: a direction ``g`` in the photo's camera is ``R g`` in the
normalised one (`gaze_to_normalised`), and back with ``R^T`` (`gaze_to_photo`); the head pose in
the normalised camera is that of ``R R_head``. Frames and angle conventions: gazegen/geometry.py
(OpenCV axes; the head frame equals the camera frame for a face looking into the camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from gazegen.config import NormalisationConfig, PhotoCameraConfig
from gazegen.errors import GazegenError
from gazegen.geometry import head_pose_to_rotation, pitchyaw_to_vector, rotation_to_head_pose, rotation_z, vector_to_pitchyaw

# The generic face: the five MTCNN landmarks (gazegen/data/mtcnn.py LANDMARKS: the subject's
# right eye, left eye, nose tip, right and left mouth corners) in the head frame, millimetres,
# with the origin at ETH-XGaze's face centre (the midpoint of the eye-corner centre and the
# nose-base centre, which the normalised camera looks at). Depths and the eyes from ETH-XGaze's
# generic 3D face model (face_model.txt, row = 68-point index minus 16, as the release's
# normalization_example.py indexes it): eye centres = means of the six eye contour points, nose
# tip = point 30, mouth corners = points 48 and 54, made symmetric. The nose's and the mouth
# corners' places across the face are where MTCNN puts them on real faces instead: the median
# frontal layout of scikit-image's LFW faces 40-99 (eye distance scaled to 62.8 mm, made
# symmetric): the nose 38.1 mm below the eyes (ETH-XGaze's point 30: 39.6) and the corners 52.4
# mm apart, 68.5 mm below the eyes (points 48 and 54: 41.6 and 70.9). A pose fit needs the
# model's points where the detector's points are. Measured with benchmarks/faces.py (median /
# 90th percentile head-pose error, degrees, ETH-XGaze's points -> these), on real faces lifted
# onto a generic face surface and turned to known poses: LFW's faces 0-39 (held out; 9 poses
# each) 10.9 / 18.3 -> 8.9 / 16.3, the astronaut 14.0 / 21.0 -> 9.0 / 15.9, Grace Hopper
# 12.7 / 23.3 -> 9.9 / 17.8 (45 poses each); the held-out LFW faces' frontal pitch median +13.2
# -> +4.1 (news photos, facing the camera; all 100: |yaw| 90th percentile 15.5 -> 19.3). The
# procedural heads, whose mouths are as narrow as ETH-XGaze's points (41-49 mm), fare worse:
# 5.7 / 19.5 -> 9.8 / 16.6.
FACE_MODEL_MM = np.array(
    [
        [-31.4, -24.1, 2.4],  # right eye centre (image left in a frontal photo)
        [31.4, -24.1, 2.4],  # left eye centre
        [0.0, 14.0, -24.0],  # nose tip (z < 0: toward the camera)
        [-26.2, 44.4, -2.8],  # right mouth corner
        [26.2, 44.4, -2.8],  # left mouth corner
    ]
)
FACE_CENTRE_MM = np.zeros(3)  # the face centre in the model's frame
# How far each landmark (the order above) strays from the generic face, along and across the eye
# line, relative to the eyes: the mouth corners' height changes with the expression (a smile
# lifts them) and from face to face; weighted down, the pitch follows the nose's parallax
# instead of the eye-to-mouth span (measured in benchmarks/faces.py: on a smiling photo the
# span alone reads as a head pitched down by 40-55 degrees).
LANDMARK_SPREAD = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 3.0], [1.0, 3.0]])
PITCH_STARTS_DEG = (-30.0, 0.0, 30.0)  # extra starts of the head-pose fit (it may have two minima)


def face_model(eye_above_centre_mm: float) -> np.ndarray:
    """`FACE_MODEL_MM` about another look-at point: the point `eye_above_centre_mm` below the
    midpoint of the eye centres (ETH-XGaze's face centre: ~24 mm; the eye midpoint itself: 0)."""
    eyes = FACE_MODEL_MM[:2].mean(0)
    return FACE_MODEL_MM - (eyes + [0.0, eye_above_centre_mm, 0.0])


class NormalisationError(GazegenError, ValueError):
    """The landmarks give no usable head pose (degenerate, behind the camera, or too far off)."""


@dataclass(frozen=True)
class HeadPose:
    """A head's pose in a camera: ``X_cam = rotation @ X_head + translation`` (mm)."""

    rotation: np.ndarray  # (3, 3) R_head, head frame -> camera frame
    translation: np.ndarray  # (3,) mm: the face centre in camera coordinates
    reprojection_px: float  # RMS distance between the landmarks and the model projected with this pose

    @property
    def pitchyaw(self) -> np.ndarray:
        """(2,) head pitch/yaw radians in this camera (roll dropped; geometry.rotation_to_head_pose)."""
        return rotation_to_head_pose(self.rotation)


@dataclass(frozen=True)
class NormalisedFace:
    """One face in the normalised camera, with what maps it back to the photo."""

    image: np.ndarray  # (res, res, 3) uint8 RGB, black outside the photo
    face_mat_norm: np.ndarray  # (3, 3) R: photo camera -> normalised camera (ETH-XGaze's name)
    warp: np.ndarray  # (3, 3) photo pixels -> normalised pixels (W = K_norm S R K^-1)
    head_pose: np.ndarray  # (2,) head pitch/yaw radians in the normalised camera
    head_rotation: np.ndarray  # (3, 3) R_head in the normalised camera (R @ source.rotation)
    landmarks: np.ndarray  # (5, 2) the landmarks in normalised pixels
    source: HeadPose  # the head in the photo's camera


def normalised_camera_matrix(norm: NormalisationConfig) -> np.ndarray:
    """(3, 3) K of the normalised camera: focal ``norm.focal``, principal point at the image centre."""
    return np.array([[norm.focal, 0.0, norm.resolution / 2], [0.0, norm.focal, norm.resolution / 2], [0.0, 0.0, 1.0]])


def photo_camera_matrix(width: int, height: int, cfg: PhotoCameraConfig = PhotoCameraConfig()) -> np.ndarray:
    """(3, 3) assumed intrinsics of a `width` x `height` photo: principal point at the centre."""
    f = cfg.focal_fraction * max(width, height)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def estimate_head_pose(landmarks: np.ndarray, camera_matrix: np.ndarray, model: np.ndarray = FACE_MODEL_MM) -> HeadPose:
    """Head pose from (5, 2) pixel landmarks (gazegen/data/mtcnn.py LANDMARKS order) and the (5, 3) mm model points they show.

    Five points fix the pitch badly: near frontal it shows in the nose's parallax against the
    eyes (first order) and in how short the eye-to-mouth span looks (second order, and the span
    changes with a smile). The fit therefore weighs each landmark's error along and across the
    eye line by `LANDMARK_SPREAD` (the mouth corners' height counts little), and, because such a
    fit can have two minima (a face pitched up or down by a similar amount), starts from SQPnP's
    solution and from the head pitched `PITCH_STARTS_DEG`, keeping the best. Those starts are
    pitches of an upright face, so the fit runs on the landmarks turned about the optical axis
    until the eye line is level (`level_eye_line`: exactly the camera rolled about its axis), and
    its pose is turned back: the same face in a photo turned by any angle gets the same head
    pose, turned with it. No lens distortion. Raises `NormalisationError` when no pose puts the
    face in front of the camera.
    """
    image_points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    object_points = np.asarray(model, np.float64).reshape(-1, 3)
    k = np.asarray(camera_matrix, np.float64)
    level_points, turn = level_eye_line(image_points, k)
    try:
        ok, rvec, tvec = cv2.solvePnP(object_points[:, None], level_points[:, None], k, None, flags=cv2.SOLVEPNP_SQPNP)
        start = (cv2.Rodrigues(rvec)[0], tvec[:, 0]) if ok and tvec[2, 0] > 0 else None
    except cv2.error as e:  # SQPnP declines landmarks close together for the focal (a small face in a large photo)
        start = _frontal_start(level_points, object_points, k)
        if start is None:  # e.g. all landmarks on one point
            raise NormalisationError(f"solvePnP failed on these landmarks ({e.err})") from None
    if start is None:
        raise NormalisationError("solvePnP found no head pose in front of the camera for these landmarks")
    rotation, translation = _weighted_fit(level_points, object_points, k, *start)
    if translation[2] <= 0:
        raise NormalisationError("no head pose in front of the camera fits these landmarks")
    rotation, translation = turn @ rotation, turn @ translation  # back to the photo's camera
    rms = float(np.sqrt(np.mean(np.sum((_project(object_points, rotation, translation, k) - image_points) ** 2, -1))))
    return HeadPose(rotation, rotation @ FACE_CENTRE_MM + translation, rms)


def level_eye_line(image_points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) pixel landmarks (the first two: the image-left and image-right eye) -> the same
    landmarks seen by the camera rolled about its optical axis until the eye line is level, and
    ``turn`` (3, 3), the rotation from that rolled camera's frame to `k`'s: X_cam = turn @ X_level.
    Works on the rays (K^-1 x), so it is exact for any pinhole `k`."""
    rays = (image_points - k[:2, 2]) / np.diag(k)[:2]  # (P, 2) x/z, y/z
    across = rays[1] - rays[0]
    angle = math.atan2(across[1], across[0])  # the eye line's roll, radians (image y down)
    turn = rotation_z(np.array(angle))
    level = rays @ turn[:2, :2]  # each ray turned by -angle: turn^T @ ray (z is unchanged)
    return level * np.diag(k)[:2] + k[:2, 2], turn


def _frontal_start(image_points: np.ndarray, object_points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A start for the fit where SQPnP gives none: the face frontal, along the ray of its landmarks' mean, at the distance
    its eye spacing gives (model mm x focal / pixels); None when the eyes coincide."""
    eyes_px = float(np.linalg.norm((image_points[1] - image_points[0]) / np.diag(k)[:2]))  # normalised image units
    if eyes_px < 1e-9:
        return None
    distance = float(np.linalg.norm(object_points[1] - object_points[0])) / eyes_px
    ray = np.append((image_points.mean(0) - k[:2, 2]) / np.diag(k)[:2], 1.0)
    return head_pose_to_rotation(np.zeros(2)), ray * distance


def _project(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(P, 3) model points -> (P, 2) pixels of a pinhole camera `k` (no distortion)."""
    cam = points @ rotation.T + translation  # (P, 3)
    return cam[:, :2] / cam[:, 2:] * np.diag(k)[:2] + k[:2, 2]


def _weighted_fit(image_points: np.ndarray, object_points: np.ndarray, k: np.ndarray, rotation: np.ndarray,
                  translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (rotation, translation) minimising the landmark errors, each split along and across the
    eye line and divided by `LANDMARK_SPREAD`, from several starts (`estimate_head_pose`); the
    landmarks' eye line is level (`level_eye_line`), so the starts are an upright face's."""
    across = image_points[1] - image_points[0]  # the image-left eye to the image-right eye
    across = across / max(float(np.linalg.norm(across)), 1e-9)
    frame = np.stack([across, [-across[1], across[0]]])  # (2, 2) rows: along, across the eye line
    spread = LANDMARK_SPREAD if len(image_points) == len(LANDMARK_SPREAD) else np.ones_like(image_points)

    def residuals(x: np.ndarray) -> np.ndarray:
        error = _project(object_points, cv2.Rodrigues(x[:3])[0], x[3:], k) - image_points  # (P, 2)
        return (error @ frame.T / spread).ravel()

    yaw = rotation_to_head_pose(rotation)[1]
    starts = [rotation] + [head_pose_to_rotation(np.array([math.radians(p), yaw])) for p in PITCH_STARTS_DEG]
    from scipy.optimize import least_squares  # here: 0.24 s that every synthesis worker would pay at start-up

    fits = [least_squares(residuals, np.concatenate([cv2.Rodrigues(r)[0][:, 0], translation]), method="lm") for r in starts]
    best = min(fits, key=lambda f: f.cost).x
    return cv2.Rodrigues(best[:3])[0], best[3:]


def normalising_rotation(face_centre: np.ndarray, head_rotation: np.ndarray) -> np.ndarray:
    """(3, 3) ETH-XGaze's ``R``: rows are the normalised camera's axes in the photo's camera.

    z looks at the face centre; y is perpendicular to z and the head's x axis (so the head's x
    axis lies in the normalised x-z plane: no roll); x completes a right-handed frame.
    """
    forward = face_centre / np.linalg.norm(face_centre)
    down = np.cross(forward, head_rotation[:, 0])
    down /= np.linalg.norm(down)
    right = np.cross(down, forward)
    return np.stack([right / np.linalg.norm(right), down, forward])


def normalise_face(image: np.ndarray, landmarks: np.ndarray, camera_matrix: np.ndarray, norm: NormalisationConfig,
                   model: np.ndarray | None = None) -> NormalisedFace:
    """Warp the face with these (5, 2) landmarks to the normalised camera `norm` (module docstring).

    `model`: the (5, 3) mm landmarks of the generic face about its face centre (the point the
    normalised camera looks at); by default the generic face about `norm`'s face centre,
    `norm.eye_above_centre_mm` below its eyes.
    """
    model = face_model(norm.eye_above_centre_mm) if model is None else model
    pose = estimate_head_pose(landmarks, camera_matrix, model)
    return normalise_with_pose(image, pose, camera_matrix, norm, landmarks)


def normalise_with_pose(image: np.ndarray, pose: HeadPose, camera_matrix: np.ndarray, norm: NormalisationConfig,
                        landmarks: np.ndarray, distortion: np.ndarray | None = None) -> NormalisedFace:
    """Warp the face whose head pose in the photo's camera is known (``pose.translation``: its
    face centre) to the normalised camera `norm`; `landmarks` (P, 2) photo pixels are carried along.

    `distortion`: the photo's lens distortion (OpenCV coefficients), when it has one: the crop is
    then sampled through it, and `landmarks` must already be undistorted (``cv2.undistortPoints``
    with ``P=camera_matrix``); the warp, labels and landmarks are those of the distortion-free camera."""
    rot = normalising_rotation(pose.translation, pose.rotation)
    distance = float(np.linalg.norm(pose.translation))
    scale = np.diag([1.0, 1.0, norm.distance_mm / distance])
    warp = normalised_camera_matrix(norm) @ scale @ rot @ np.linalg.inv(camera_matrix)
    # photo pixels per normalised pixel at the face: shrink a much larger photo with area
    # averaging first (a perspective warp alone would alias)
    magnification = norm.focal * distance / (camera_matrix[0, 0] * norm.distance_mm)
    crop = _warp(image, warp, norm.resolution, magnification, camera_matrix, distortion)
    marks = cv2.perspectiveTransform(np.asarray(landmarks, np.float64).reshape(-1, 1, 2), warp)[:, 0]
    head_rotation = rot @ pose.rotation
    return NormalisedFace(crop, rot, warp, rotation_to_head_pose(head_rotation), head_rotation, marks, pose)


def read_normalised_crop(image: np.ndarray, landmarks: np.ndarray, norm: NormalisationConfig) -> NormalisedFace:
    """A face that already is a crop of the normalised camera `norm` (a square image of side `norm.resolution`, with its
    (5, 2) landmarks): kept as it is (``face_mat_norm`` and ``warp`` the identity), its head pose read from the
    landmarks in that camera. A normalised crop's head need not face the camera: ETH-XGaze's patches hold head poses
    up to 80 degrees off."""
    k = normalised_camera_matrix(norm)
    pose = estimate_head_pose(landmarks, k, face_model(norm.eye_above_centre_mm))
    return NormalisedFace(image, np.eye(3), np.eye(3), rotation_to_head_pose(pose.rotation), pose.rotation,
                          np.asarray(landmarks, np.float64).reshape(-1, 2), pose)


def _warp(image: np.ndarray, warp: np.ndarray, side: int, magnification: float, camera_matrix: np.ndarray,
          distortion: np.ndarray | None) -> np.ndarray:
    source, pre = image, np.eye(3)
    if magnification < 0.5:
        f = 2.0 * magnification
        size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
        source = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        fx, fy = size[0] / image.shape[1], size[1] / image.shape[0]
        pre = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])  # resize's pixel map
    if distortion is None:
        return cv2.warpPerspective(source, warp @ np.linalg.inv(pre), (side, side), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # each crop pixel -> its distortion-free photo pixel -> its ray -> through the lens -> the source
    crop = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 1, 2).astype(np.float64)
    photo = cv2.perspectiveTransform(crop, np.linalg.inv(warp))[:, 0]  # (side * side, 2)
    rays = np.concatenate([(photo - camera_matrix[:2, 2]) / np.diag(camera_matrix)[:2], np.ones((len(photo), 1))], 1)
    lens, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), camera_matrix, np.asarray(distortion, np.float64))
    pixels = lens[:, 0] @ pre[:2, :2].T + pre[:2, 2]
    grid = pixels.reshape(side, side, 2).astype(np.float32)
    return cv2.remap(source, grid, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def gaze_to_normalised(gaze: np.ndarray, face_mat_norm: np.ndarray) -> np.ndarray:
    """(..., 2) pitch/yaw in the photo's camera -> (..., 2) in the normalised camera."""
    return vector_to_pitchyaw((face_mat_norm @ pitchyaw_to_vector(np.asarray(gaze, np.float64))[..., None])[..., 0])


def gaze_to_photo(gaze: np.ndarray, face_mat_norm: np.ndarray) -> np.ndarray:
    """(..., 2) pitch/yaw in the normalised camera -> (..., 2) in the photo's camera; `face_mat_norm`
    (3, 3) or (..., 3, 3). A synthesized row's gaze: gazegen/data/parquet.py ``gaze_in_photo``."""
    back = np.swapaxes(np.asarray(face_mat_norm, np.float64), -1, -2)  # R^T
    return vector_to_pitchyaw((back @ pitchyaw_to_vector(np.asarray(gaze, np.float64))[..., None])[..., 0])


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The angle, in degrees, of the rotation that takes (3, 3) rotation `a` to `b`."""
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))
