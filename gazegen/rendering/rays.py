"""Rays through pixel centres of EG3D cameras (see gazegen/geometry.py for the conventions).

Pixel (row i, column j) covers [j, j+1) x [i, i+1) and its ray passes through its centre
(j + 0.5, i + 0.5), so a world point that `geometry.project` maps to (u, v) lies on the ray of
pixel (floor(v), floor(u)). Rays are listed row-major: `(B, R*R, 3)` reshapes to `(B, R, R, 3)`
in image layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gazegen.geometry import full_precision, split_camera


@dataclass(frozen=True)
class Rays:
    origins: torch.Tensor  # (B, R*R, 3) camera centres, world units
    directions: torch.Tensor  # (B, R*R, 3) unit vectors, world frame
    z_per_t: torch.Tensor  # (B, R*R, 1) camera-axis depth per unit distance along the ray


def camera_rays(camera: torch.Tensor, resolution: int) -> Rays:
    """(B, 25) cameras -> one ray per pixel centre of a ``resolution``-square image, in the cameras' dtype
    whatever autocast is on (geometry.full_precision)."""
    with full_precision(camera):
        return _camera_rays(camera, resolution)


def _camera_rays(camera: torch.Tensor, resolution: int) -> Rays:
    c2w, k = split_camera(camera)  # (B, 4, 4), (B, 3, 3) normalised intrinsics
    centres = (torch.arange(resolution, dtype=camera.dtype, device=camera.device) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # (R, R) each, row-major
    fx, fy = k[:, 0, 0, None], k[:, 1, 1, None]  # (B, 1)
    cx, cy = k[:, 0, 2, None], k[:, 1, 2, None]
    x = (u.reshape(1, -1) - cx) / fx  # (B, R*R)
    y = (v.reshape(1, -1) - cy) / fy
    local = torch.stack([x, y, torch.ones_like(x)], -1)  # (B, R*R, 3) camera axes, z = 1
    norm = local.norm(dim=-1, keepdim=True)
    directions = (local / norm) @ c2w[:, :3, :3].transpose(1, 2)  # (B, R*R, 3)
    origins = c2w[:, None, :3, 3].expand_as(directions)
    return Rays(origins=origins, directions=directions, z_per_t=1.0 / norm)
