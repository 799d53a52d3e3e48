"""Where a point seen by several calibrated cameras lies: linear triangulation (least squares over the views).

faces.py uses it to ask how consistently a landmark detector reads one face across poses: the five points it reads,
triangulated from a head's photos at known poses, are the 3-D points the detector behaves as if it saw. A pose fitted
to those points (instead of the head's true ones) leaves only the detector's reading changing from pose to pose.
"""

from __future__ import annotations

import numpy as np


def projection(camera_matrix: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(3, 4) P = K [R | t]: a point X of the object's frame shows at pixel P (X, 1), dehomogenised."""
    return np.asarray(camera_matrix, np.float64) @ np.column_stack([rotation, translation])


def triangulate(projections: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(V, 3, 4) projections and the (V, 2) pixels one point shows at in each -> the point (3,), object frame.

    Each view gives two linear equations in the homogeneous point (u P_3 - P_1, v P_3 - P_2); their least-squares
    solution is the right singular vector of the smallest singular value. Exact for exact pixels; needs two views.
    """
    projections, pixels = np.asarray(projections, np.float64), np.asarray(pixels, np.float64)
    if len(projections) < 2 or len(projections) != len(pixels):
        raise ValueError(f"triangulation needs one pixel per view and at least two views, got {len(projections)} "
                         f"projections and {len(pixels)} pixels")
    rows = np.concatenate([pixels[:, :1] * projections[:, 2] - projections[:, 0],
                           pixels[:, 1:] * projections[:, 2] - projections[:, 1]])  # (2V, 4)
    scale = np.linalg.norm(rows, axis=1, keepdims=True)  # each equation to unit length: views weigh alike
    point = np.linalg.svd(rows / scale)[2][-1]  # (4,) homogeneous
    return point[:3] / point[3]
