"""Real faces at known head poses: a portrait's pixels on a generic face surface, turned and photographed.

A photo alone gives no true head pose. Lifting a frontal portrait onto a relief (a smooth generic
face shape) and turning the relief gives photos of a real face's texture whose head rotation is
known exactly, and whose landmarks are known wherever the portrait's are. It is an approximation
of a head: the surface is generic, nothing hidden in the portrait appears (the far cheek
stretches instead), so it is used only within moderate turns (yaw +-40, pitch +-20 degrees in
benchmarks/faces.py). Its depths are the generic face's, not the person's: the nose stands out
exactly as far as in ETH-XGaze's generic face, so a head-pose fit that leans on the nose's depth
does better here than on real heads, whose noses differ (the procedural heads': 24-31 mm).

Frames and units: the head frame is OpenCV's, in mm: x along the portrait's eye line (image left
to right), y down, z away from the camera; the origin is the midpoint of the eye centres, and the
eye centres have z = 0. The portrait's own camera is taken as orthographic: a pixel's (x, y) are
its offsets from the eye midpoint along and across the eye line, scaled so that the eyes are
`EYE_SPACING_MM` apart.

The surface, z(x, y) in mm (negative: toward the camera):
    cheeks  an ellipse across the face: CHEEK_DEPTH * (1 - sqrt(1 - (x / HALF_WIDTH)^2)), and
            CHEEK_DEPTH beyond HALF_WIDTH (what lies beside the face, background, ears and hair,
            is carried on that back surface);
    profile forehead and chin leaning back: PROFILE_CURVE * (y - PROFILE_CENTRE)^2;
    nose    a ridge of height NOSE_HEIGHT at the nose tip, Gaussian across (NOSE_WIDTH), rising
            smoothly from the eye line to the tip and falling to nothing at NOSE_BASE below it;
then shifted so that the eye centres (on the surface, 9 mm behind its midline at their height)
lie at z = 0. At the points of ETH-XGaze's generic face (eye centres 62.8 mm apart, nose tip
39.6 mm and mouth corners 70.9 mm below them, the corners 41.6 mm apart) it puts the nose tip
26 mm and the mouth corners 5 mm in front of the eyes, as that face has them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EYE_SPACING_MM = 62.8  # the generic face's eye centres (FACE_MODEL_MM)
HALF_WIDTH, CHEEK_DEPTH = 78.0, 70.0  # mm: the cheeks' ellipse
PROFILE_CURVE, PROFILE_CENTRE = 0.002, 40.0  # 1/mm, mm below the eyes
NOSE_HEIGHT, NOSE_WIDTH, NOSE_BASE = 17.0, 9.0, 12.0  # mm above the cheeks at the tip; across; tip to base
BACKGROUND = 90  # the grey of pixels no sample reaches


@dataclass(frozen=True)
class Relief:
    """A portrait lifted onto the generic surface: coloured points and the landmarks, head frame, mm."""

    points: np.ndarray  # (N, 3) mm, one per portrait sample
    colours: np.ndarray  # (N, 3) uint8 RGB
    landmarks: np.ndarray  # (5, 3) mm, the portrait's landmarks on the surface


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def surface_depth(xy: np.ndarray, nose_tip_y: float) -> np.ndarray:
    """(..., 2) mm in the head plane -> (...,) z in mm of the generic surface, before the eyes are moved to 0."""
    x, y = xy[..., 0], xy[..., 1]
    cheeks = CHEEK_DEPTH * (1.0 - np.sqrt(np.clip(1.0 - (x / HALF_WIDTH) ** 2, 0.0, 1.0)))
    profile = PROFILE_CURVE * (y - PROFILE_CENTRE) ** 2
    along = np.where(y <= nose_tip_y, _smoothstep(y / nose_tip_y), 1.0 - _smoothstep((y - nose_tip_y) / NOSE_BASE))
    nose = NOSE_HEIGHT * along * np.exp(-0.5 * (x / NOSE_WIDTH) ** 2)
    return cheeks + profile - nose


@dataclass(frozen=True)
class PortraitFrame:
    """Where a portrait's pixels lie on the relief, fixed by its five landmarks."""

    middle: np.ndarray  # (2,) px, the eye midpoint
    axes: np.ndarray  # (2, 2) rows: the head's x (along the eye line) and y, unit vectors in image pixels
    mm_per_px: float
    nose_tip_y: float  # mm below the eye line
    eyes_z: float  # the surface's depth at the eyes, mm (subtracted: the eyes lie at z = 0)

    @classmethod
    def from_landmarks(cls, landmarks_px: np.ndarray) -> PortraitFrame:
        """(5, 2) landmarks in gazegen/data/mtcnn.py LANDMARKS order (the image-left eye first)."""
        marks = np.asarray(landmarks_px, np.float64)
        across = marks[1] - marks[0]  # the subject's right eye is on the image's left
        axis_x = across / np.linalg.norm(across)
        axes = np.stack([axis_x, [-axis_x[1], axis_x[0]]])  # y: image down, for a level eye line
        middle, mm_per_px = (marks[0] + marks[1]) / 2, EYE_SPACING_MM / float(np.linalg.norm(across))
        xy = (marks - middle) @ axes.T * mm_per_px  # (5, 2) the landmarks in the head plane, mm
        return cls(middle, axes, mm_per_px, float(xy[2, 1]), float(surface_depth(xy[:2], float(xy[2, 1])).mean()))

    def to_head(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) portrait pixels -> (N, 3) mm, their points on the relief (head frame)."""
        xy = (np.asarray(pixels, np.float64) - self.middle) @ self.axes.T * self.mm_per_px
        return np.concatenate([xy, (surface_depth(xy, self.nose_tip_y) - self.eyes_z)[..., None]], -1)


def lift(portrait: np.ndarray, landmarks_px: np.ndarray, sample_mm: float = 0.5) -> Relief:
    """(H, W, 3) uint8 RGB portrait and its (5, 2) landmarks (`PortraitFrame.from_landmarks`) -> the relief,
    sampled every `sample_mm` across the portrait (bilinear)."""
    frame = PortraitFrame.from_landmarks(landmarks_px)
    h, w = portrait.shape[:2]
    step = sample_mm / frame.mm_per_px  # portrait pixels per sample
    u, v = np.meshgrid(np.arange(0.0, w - 1, step), np.arange(0.0, h - 1, step))
    colours = cv2.remap(portrait, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR).reshape(-1, 3)
    points = frame.to_head(np.stack([u.ravel(), v.ravel()], -1))  # (N, 3)
    return Relief(points=points, colours=colours, landmarks=frame.to_head(landmarks_px))


def photograph(relief: Relief, rotation: np.ndarray, eyes_at_mm: np.ndarray, size: int, focal_px: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The relief turned by `rotation` (3, 3: head frame -> camera) with its eye midpoint at `eyes_at_mm` (camera
    frame), seen by a `size`-square pinhole camera of focal `focal_px` (principal point at the centre).

    Returns the (size, size, 3) uint8 photo, its (5, 2) true landmarks in pixels, and the (3, 3) camera matrix.
    Each pixel takes the nearest sample that lands in it; pixels no sample reaches are filled from their
    neighbours (inpainting) where they lie among samples, else `BACKGROUND`.
    """
    k = np.array([[focal_px, 0.0, size / 2], [0.0, focal_px, size / 2], [0.0, 0.0, 1.0]])
    cam = relief.points @ rotation.T + eyes_at_mm  # (N, 3)
    pixels = cam[:, :2] / cam[:, 2:] * focal_px + size / 2  # (N, 2)
    col, row = np.floor(pixels[:, 0]).astype(np.int64), np.floor(pixels[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (cam[:, 2] > 0)
    index, depth = (row * size + col)[inside], cam[inside, 2]
    order = np.lexsort((depth, index))  # by pixel, nearest first
    first = np.ones(len(order), bool)
    first[1:] = index[order][1:] != index[order][:-1]
    nearest = order[first]
    photo = np.full((size * size, 3), BACKGROUND, np.uint8)
    photo[index[nearest]] = relief.colours[inside][nearest]
    photo = photo.reshape(size, size, 3)
    hit = np.zeros(size * size, np.uint8)
    hit[index[nearest]] = 1
    hit = hit.reshape(size, size)
    holes = (cv2.morphologyEx(hit, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0) & (hit == 0)
    photo = cv2.inpaint(photo, holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    marks_cam = relief.landmarks @ rotation.T + eyes_at_mm
    return photo, marks_cam[:, :2] / marks_cam[:, 2:] * focal_px + size / 2, k
