"""Face and eye masks for a normalised photo crop, from its landmarks and head pose.

GazeNeRF trains with a face mask and two eye masks made by a face parser; no parser's weights
ship with a package here, so the masks are drawn from the generic face instead: outlines fixed
in the head frame (the face from mid-forehead to chin, each eye's opening) are turned and
placed with the head pose solvePnP found, projected into the normalised crop and filled. The
eye outlines are then moved so that their centres sit on the detected eye landmarks (the pose
is fitted to five points and places them only to within its reprojection error). The masks are
therefore a generic face's, not this face's own outline: coarse at the jaw and hair line, and
the eye masks cover the whole opening (lids included) rather than the visible eyeball.

Names and values follow docs/design.md: ``face_mask``, ``left_eye_mask``, ``right_eye_mask`` (the
subject's eyes), {0, 1} uint8 of the crop's size; the store writer turns them into GazeNeRF's
``head_mask``/``left_eye_mask``/``right_eye_mask`` at 0/255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from gazegen.data.normalise import FACE_MODEL_MM, NormalisedFace

OUTLINE_POINTS = 48  # vertices of each projected outline
FACE_HALF_WIDTH_MM = 72.0  # cheek to cheek, at the eye line (ETH-XGaze's model: outer eye corners at +-46.5 mm)
FACE_TOP_MM = -75.0  # mid-forehead, above the face centre (head frame y points down)
FACE_CHIN_MM = 89.0  # the chin (ETH-XGaze's model: jaw point 8)
FACE_SIDE_DEPTH_MM = 35.0  # how far behind the face centre's plane the outline's sides lie
JAW_NARROWING = 0.85  # the lower half's width relative to the upper half's (a face is an egg, narrow end down)
EYE_HALF_WIDTH_MM, EYE_HALF_HEIGHT_MM = 15.0, 6.0  # the eye opening, corner to corner and lid to lid


@dataclass(frozen=True)
class FaceMasks:
    face_mask: np.ndarray  # (H, W) uint8 {0, 1}
    left_eye_mask: np.ndarray  # (H, W) uint8 {0, 1}, the subject's left eye (image right in a frontal crop)
    right_eye_mask: np.ndarray

    @property
    def eye_mask(self) -> np.ndarray:
        return self.left_eye_mask | self.right_eye_mask


def face_outline_mm() -> np.ndarray:
    """(P, 3) the face's outline in the head frame, mm about the face centre: an egg from
    mid-forehead to chin whose sides curve back."""
    t = np.linspace(0.0, 2.0 * math.pi, OUTLINE_POINTS, endpoint=False)
    upper = np.cos(t) >= 0
    x = FACE_HALF_WIDTH_MM * np.sin(t) * np.where(upper, 1.0, JAW_NARROWING)
    y = np.where(upper, FACE_TOP_MM, -FACE_CHIN_MM) * np.cos(t)
    z = FACE_SIDE_DEPTH_MM * np.sin(t) ** 2
    return np.stack([x, y, z], -1)


def eye_outline_mm(centre: np.ndarray) -> np.ndarray:
    """(P, 3) an eye opening around `centre` (head frame, mm), flat and facing the camera."""
    t = np.linspace(0.0, 2.0 * math.pi, OUTLINE_POINTS, endpoint=False)
    return centre + np.stack([EYE_HALF_WIDTH_MM * np.cos(t), EYE_HALF_HEIGHT_MM * np.sin(t), np.zeros_like(t)], -1)


def landmark_masks(face: NormalisedFace, camera_matrix: np.ndarray, model: np.ndarray = FACE_MODEL_MM) -> FaceMasks:
    """Face and eye masks of a normalised crop (module docstring). `camera_matrix` is the photo's,
    `model` the generic face the crop was normalised with."""
    side = face.image.shape[0]

    def project(points_head: np.ndarray) -> np.ndarray:  # (P, 3) head frame mm -> (P, 2) crop pixels
        cam = points_head @ face.source.rotation.T + face.source.translation  # the face centre is the model's origin
        photo = cam[:, :2] / cam[:, 2:] * np.diag(camera_matrix)[:2] + camera_matrix[:2, 2]
        return cv2.perspectiveTransform(photo.reshape(-1, 1, 2), face.warp)[:, 0]

    def fill(polygon: np.ndarray) -> np.ndarray:
        mask = np.zeros((side, side), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        return mask

    eyes = []
    for index in (1, 0):  # the subject's left eye, then the right one
        outline = project(eye_outline_mm(model[index]))
        eyes.append(fill(outline - project(model[index][None])[0] + face.landmarks[index]))
    return FaceMasks(face_mask=fill(project(face_outline_mm())) | eyes[0] | eyes[1], left_eye_mask=eyes[0], right_eye_mask=eyes[1])
