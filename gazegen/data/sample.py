"""`Sample`: one normalised face image with its labels, the common type of every reader.

Conventions (docs/design.md): the image is uint8 HWC **RGB** (readers convert ETH-XGaze's BGR);
masks are uint8 {0, 1}; angles are radians, (pitch, yaw) in the normalised camera frame for
`gaze` and `head_pose`, in the head frame for `gaze_head` (see gazegen/geometry.py); `camera`
is EG3D's 25 numbers in renderer world units; `depth` is z-depth in millimetres of the
normalised camera (0 where no surface).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gazegen.config import NormalisationConfig


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    gaze: np.ndarray  # (2,) float32 gaze pitch/yaw, camera frame
    head_pose: np.ndarray  # (2,) float32 head pitch/yaw, camera frame
    gaze_head: np.ndarray  # (2,) float32 gaze pitch/yaw, head frame
    camera: np.ndarray  # (25,) float32 EG3D camera
    normalisation: NormalisationConfig  # the normalised camera the image was taken with
    subject: str  # e.g. "subject0003"
    frame_index: int = 0  # frame (one gaze target) within the subject
    cam_index: int = 0  # camera of the rig, 0-based
    face_mask: np.ndarray | None = None  # (H, W) uint8 {0, 1}
    left_eye_mask: np.ndarray | None = None  # (H, W) uint8 {0, 1}, the subject's left eye
    right_eye_mask: np.ndarray | None = None  # (H, W) uint8 {0, 1}
    depth: np.ndarray | None = None  # (H, W) float32 millimetres
    landmarks: np.ndarray | None = None  # (68, 2) float32 pixels
    face_mat_norm: np.ndarray | None = None  # (3, 3) float32: the source camera -> the normalised one (ETH-XGaze's key)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # dataset-specific arrays kept as read

    @property
    def resolution(self) -> int:
        return int(self.image.shape[0])

    @property
    def eye_mask(self) -> np.ndarray | None:
        """(H, W) uint8 {0, 1}: both eyes, or None when the eye masks are unknown."""
        if self.left_eye_mask is None or self.right_eye_mask is None:
            return None
        return np.maximum(self.left_eye_mask, self.right_eye_mask)
