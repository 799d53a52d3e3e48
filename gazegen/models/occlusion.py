"""What the source camera sees: whether a world point is visible to it, given the z-depth map it sees.

The pixel features (models/pixel_features.py) and the source detail (models/source_detail.py) read the
source image where the source camera sees a point. A point hidden from that camera (behind the nose on
a turned view, the far cheek) would read the surface in front of it, and a turned view would show that
surface twice. ``LiveGaze.encode`` renders the source's own z-depth map d once per source; a point at
z-depth z in the source camera is then visible while z - d <= m, and its read fades linearly to nothing
at z - d = 2m, where m (``ModelConfig.occlusion_margin``, world units) is a margin for the rendered
depth's own error:

    visibility = clamp((2m - (z - d(uv))) / m, 0, 1),  uv = the point's place in the source image
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gazegen.geometry import project, world_to_camera_points


def visibility(points: torch.Tensor, camera: torch.Tensor, depth: torch.Tensor, margin: float) -> torch.Tensor:
    """World points (B, N, 3), source cameras (B, 25) and the z-depth they see (B, 1, R, R), world units -> (B, N, 1)
    in [0, 1]: 1 where a point is visible to its source camera (``margin`` behind its surface at most)."""
    z = world_to_camera_points(points, camera.to(points.dtype))[..., 2]  # (B, N) z-depth in the source camera
    grid = (2 * project(points, camera.to(points.dtype), 1) - 1)[:, None]  # (B, 1, N, 2): grid_sample's [-1, 1]
    seen = F.grid_sample(depth.to(points.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]
    return ((2 * margin - (z - seen)) / margin).clamp(0, 1)[..., None]  # (B, N, 1)
