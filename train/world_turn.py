"""A triplet's world turned about the face centre: training for a head frame that is a few degrees off.

A photo's head pose is estimated (gazegen/data/normalise.py, about 9-10 degrees median on the
procedural heads), and the model reads the source through the camera that pose gives. A model
trained only on exact cameras then renders such a source, turned to another view, as two heads
superimposed: the planes lifted through the source camera put the face where that camera says,
and each plane's mix of depths was learned for a face where the true camera puts it (2 degrees of
pitch error already shows; weights/demo-livegaze/MODEL_CARD.md).

Turning a triplet's world by a rotation Q about the origin (the face centre) is exactly such an
error: every camera of the triplet is rotated with it, c2w -> diag(Q, 1) @ c2w, so each image is
unchanged and still seen from where it was taken, and the gaze condition is the same gaze vector
written in the turned head frame. The head sits in the turned world turned by Q, as a head whose
pose was estimated Q^T off sits in the frame of its estimate. The targets, masks, depths (camera
z, unchanged by the turn) and the camera-frame gaze stay as they are.

    X_head = FLIP @ X_world (gazegen/geometry.py head_pose_to_camera)
    turned world:  X'_world = Q @ X_world      cameras: c2w' = diag(Q, 1) @ c2w
    gaze in the turned head frame:  v'_head = FLIP @ Q @ FLIP @ v_head
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from gazegen.geometry import FLIP, pitchyaw_to_vector, vector_to_pitchyaw

T = TypeVar("T")  # train/data.py Triplets (not imported: train/data.py imports this module)


def random_turn(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """(3, 3) a rotation about an axis drawn uniformly on the sphere by an angle uniform in [0, max_deg]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)  # Rodrigues


def turn_cameras(cameras: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """(B, 25) cameras and a (3, 3) world rotation -> the cameras of the turned world (c2w -> diag(Q, 1) @ c2w)."""
    c2w = cameras[:, :16].reshape(-1, 4, 4).clone()
    c2w[:, :3, :] = turn.to(cameras.dtype) @ c2w[:, :3, :]  # rotation and position alike
    return torch.cat([c2w.reshape(-1, 16), cameras[:, 16:]], 1)


def turn_gaze_head(gaze_head: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """(B, 2) gaze pitch/yaw in the head frame -> the same gaze in the turned world's head frame."""
    flip = torch.diag(torch.tensor(FLIP, dtype=torch.float64))
    in_head = flip @ turn.double() @ flip  # (3, 3) the world turn written in head coordinates
    vectors = pitchyaw_to_vector(gaze_head.double()) @ in_head.T  # (B, 3)
    return vector_to_pitchyaw(vectors).to(gaze_head.dtype)


def turn_world(triplets: T, turn: np.ndarray) -> T:
    """``triplets`` (a Triplets) with its world turned by ``turn`` (3, 3): cameras and gaze conditions."""
    q = torch.from_numpy(np.asarray(turn, np.float64))
    return replace(
        triplets,
        camera=turn_cameras(triplets.camera, q),
        source_camera=turn_cameras(triplets.source_camera, q),
        frontal_camera=turn_cameras(triplets.frontal_camera, q),
        gaze_head=turn_gaze_head(triplets.gaze_head, q),
        source_gaze_head=turn_gaze_head(triplets.source_gaze_head, q),
    )
