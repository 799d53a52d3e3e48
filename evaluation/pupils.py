"""Where the pupils are: an estimator-free reading of the gaze's direction in an image.

A gaze estimator trained on sharp faces can misread a blurred render. Measured on the demo model
(300 gaze steps on the shipped prior, held-out subject0005): the estimator read its gaze sweep with
r yaw -0.65, while the model moved its pupils the way the data does (r -0.86 between pupil x and the
requested yaw, against -0.92 on the subject's own images from that camera). The pupil offset below
needs no learned reader: the darkness-weighted centroid of each eye region (the store's eye masks),
relative to the region's centre, in units of its width and height, averaged over the eyes. Its
correlation with the requested gaze, beside the same correlation on the data, says whether a model
moves the pupils in the data's direction and how consistently.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _region_offset(luminance: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray | None:
    """(2,) x, y offset of one eye region's darkness centroid from its centre, in region widths/heights."""
    values = luminance[ys, xs]
    weight = (values.max() - values) ** 2  # the sclera weighs nothing, the pupil most
    if len(xs) < 4 or weight.sum() <= 0:
        return None
    centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
    centre = np.array([xs.mean(), ys.mean()])
    extent = np.array([np.ptp(xs) + 1, np.ptp(ys) + 1], np.float64)
    return (centroid - centre) / extent


def pupil_offset(image: np.ndarray, eye_mask: np.ndarray) -> np.ndarray:
    """``image`` (H, W, 3) uint8 and ``eye_mask`` (H, W) {0, 1} -> (2,) mean pupil offset (x, y) of its eyes;
    NaN where no eye region has any contrast."""
    luminance = image.astype(np.float64).mean(-1) / 255.0
    count, labels = cv2.connectedComponents(eye_mask.astype(np.uint8))
    offsets = [_region_offset(luminance, *np.nonzero(labels == k)) for k in range(1, count)]
    offsets = [o for o in offsets if o is not None]
    return np.mean(offsets, 0) if offsets else np.full(2, np.nan)


@dataclass(frozen=True)
class PupilFollowing:
    """Pearson r of pupil x vs gaze yaw and pupil y vs gaze pitch (camera frame), for a model and for the data."""

    model_yaw: float | None
    model_pitch: float | None
    data_yaw: float | None  # the same on the subjects' own images from the source's camera
    data_pitch: float | None

    @property
    def same_direction(self) -> bool | None:
        """Whether the model's pupils move with the data's sign in yaw (None when either r is missing)."""
        if self.model_yaw is None or self.data_yaw is None:
            return None
        return bool(np.sign(self.model_yaw) == np.sign(self.data_yaw))


def offsets_vs_gaze(offsets: np.ndarray, gaze: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``offsets`` (N, 2) and ``gaze`` (N, 2) where the offset was found (no NaN)."""
    keep = ~np.isnan(offsets).any(1)
    return offsets[keep], gaze[keep]
