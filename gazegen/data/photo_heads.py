"""Procedural heads photographed by an ordinary camera at a known pose: ground truth for the photo path.

`photograph_head` places a procedural head (gazegen/data/head_model.py) anywhere in front of a
pinhole camera of any focal length, with any pitch, yaw and roll, and renders it: the face is
not centred, not at the normalisation distance and not upright, like a face in a photo. It
returns the camera matrix (OpenCV pixel convention: integer coordinates are pixel centres), the
head's rotation and face centre in that camera, and the five landmarks of the head projected
(`head_landmarks_mm`). The landmark detector, head-pose solver and normalisation are measured
against these (tests/test_normalise.py, benchmarks/faces.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.data.head_model import Identity, Lighting, eye_axes, render
from gazegen.data.heads import sample_identity

WORLD_MM = NormalisationConfig()  # only its world scale (distance_mm / radius) is used: mm per world unit


@dataclass(frozen=True)
class HeadPhoto:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    camera_matrix: np.ndarray  # (3, 3) OpenCV intrinsics, pixels
    head_rotation: np.ndarray  # (3, 3) R_head: head frame (OpenCV axes) -> camera
    face_centre: np.ndarray  # (3,) mm, camera frame: ETH-XGaze's face centre of this head (`head_landmarks_mm`)
    landmarks: np.ndarray  # (5, 2) pixels, the five landmarks (mtcnn.LANDMARKS order) projected
    face_mask: np.ndarray  # (S, S) bool: the head's surface, body excluded
    left_eye_mask: np.ndarray  # (S, S) bool: the subject's left eyeball where it shows
    right_eye_mask: np.ndarray


def head_landmarks_mm(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """The head's own five landmarks (5, 3) and ETH-XGaze face centre (3,), head frame (OpenCV axes), mm.

    Eye centres: the front of each eyeball looking straight ahead; nose tip: the front of the
    nose-tip ellipsoid; mouth corners: the lips ellipsoid's surface at +-the mouth's half width;
    face centre: midway between the eye centres and the nose base (the tip raised by its radius).
    """
    shape, eyes = identity.shape, identity.eyes
    names = list(shape.names)
    tip_c, tip_r = shape.centres[names.index("nose_tip")], shape.radii[names.index("nose_tip")]
    lips_c, lips_r = shape.centres[names.index("lips")], shape.radii[names.index("lips")]
    mouth_y, half = identity.mouth
    corner_z = lips_c[2] + lips_r[2] * math.sqrt(max(0.0, 1.0 - (half / lips_r[0]) ** 2))
    world = np.array([
        [-eyes.half_spacing, 0.0, eyes.radius],  # the subject's right eye: world -x
        [eyes.half_spacing, 0.0, eyes.radius],
        [0.0, tip_c[1], tip_c[2] + tip_r[2]],
        [-half, mouth_y, corner_z],
        [half, mouth_y, corner_z],
    ])
    nose_base = np.array([0.0, tip_c[1], tip_c[2]])
    centre = (world[:2].mean(0) + nose_base) / 2
    flip = np.array(geometry.FLIP)
    return world * flip, centre * flip  # world = FLIP @ head, FLIP its own inverse


def rotation_from_pose(pitch: float, yaw: float, roll: float = 0.0) -> np.ndarray:
    """(3, 3) R_head with this pitch/yaw (geometry.head_pose_to_rotation) and a roll about the face's axis."""
    return geometry.head_pose_to_rotation(np.array([pitch, yaw])) @ geometry.rotation_z(np.array(roll))


def photograph_head(identity: Identity, rotation: np.ndarray, face_centre_mm: np.ndarray, size: int, focal_px: float,
                    gaze_target_mm: np.ndarray | None = None, light: Lighting | None = None) -> HeadPhoto:
    """Render `identity` with head rotation `rotation` and its face centre at `face_centre_mm`
    (camera frame) through a `size`-square camera of focal `focal_px` (principal point at the
    centre). The eyes look at `gaze_target_mm` (head frame; default: 1 m straight ahead)."""
    marks_head, centre_head = head_landmarks_mm(identity)
    origin_cam = np.asarray(face_centre_mm, np.float64) - rotation @ centre_head  # the head origin in the camera, mm
    mm = geometry.mm_per_world_unit(WORLD_MM)
    rot_w2c = rotation @ np.diag(geometry.FLIP)  # world (EG3D axes) -> camera
    c2w = np.eye(4)
    c2w[:3, :3] = rot_w2c.T
    c2w[:3, 3] = -rot_w2c.T @ origin_cam / mm
    k = np.array([[focal_px / size, 0.0, 0.5], [0.0, focal_px / size, 0.5], [0.0, 0.0, 1.0]])
    camera = torch.from_numpy(np.concatenate([c2w.ravel(), k.ravel()]))
    target = np.array([0.0, 0.0, -1000.0]) if gaze_target_mm is None else np.asarray(gaze_target_mm, np.float64)
    axes = torch.from_numpy(eye_axes(identity, (target * np.array(geometry.FLIP))[None]))  # (1, 2, 3) world
    light = light or Lighting(
        direction=torch.tensor([[0.3, 0.4, 0.87]]), ambient=torch.tensor([0.45]), diffuse=torch.tensor([0.6]),
        tint=torch.ones(1, 3), background=torch.tensor([[[0.55, 0.6, 0.65], [0.35, 0.38, 0.4]]]),
    )
    out = render(identity, camera, WORLD_MM.at_resolution(size), axes, light)
    matrix = np.array([[focal_px, 0.0, size / 2 - 0.5], [0.0, focal_px, size / 2 - 0.5], [0.0, 0.0, 1.0]])  # OpenCV pixels
    cam_points = marks_head @ rotation.T + origin_cam  # (5, 3)
    uv = cam_points[:, :2] / cam_points[:, 2:] * focal_px + matrix[:2, 2]
    return HeadPhoto(out.image_uint8()[0].numpy(), matrix, rotation, rotation @ centre_head + origin_cam, uv,
                     out.face_mask[0].numpy(), out.left_eye_mask[0].numpy(), out.right_eye_mask[0].numpy())


def mean_head_model_mm(count: int = 200) -> np.ndarray:
    """(5, 3) mm: the five landmarks of procedural heads about their face centre, averaged over
    the identities of seeds 0..count-1. The generic face model for this population (its noses
    sit lower and its mouths further back than ETH-XGaze's average human face)."""
    points = [np.subtract(*head_landmarks_mm(sample_identity(np.random.default_rng(i)))) for i in range(count)]
    return np.mean(points, 0)
