"""Plane lifting: image-aligned features -> a triplane, through the source camera (a from-scratch option).

Live3D (and LiveGaze's `base` preset) reads E_tri's output map directly as three planes: the
network must learn to move content from image layout into each plane's world layout, which a
model distilled from EG3D at scale does, and a small model trained from scratch on CPU does not
(the image rows run down while the XY plane's rows run up world y; the XZ and ZY planes have no
image counterpart at all).

Lifting does that move in closed form. Texel (i, j) of plane k stands for the world segment
through its centre along the plane's normal (the axis the plane does not span); the segment is
sampled at ``samples`` points spread over the triplane's cube, each point is projected into the
source image with the source camera (``gazegen.geometry.project`` conventions) and the features
there are read bilinearly (zeros outside the image). The ``samples`` reads of a texel are stacked
as channels and mixed per plane by a 1x1 conv, LeakyReLU and a 3x3 conv:

    features (B, C, P, P), camera (B, 25)
      -> reads at the texels' segment points      (B, 3, C * samples, P, P)
      -> per-plane 1x1 conv, LeakyReLU, 3x3 conv  (B, 3, C_plane, P, P)

So the XY plane seen from the source camera starts out as the image itself, the right way up,
and the XZ and ZY planes start out as the image content along their rows and columns. It costs
one grid_sample of 3 * samples * P^2 points and needs the source camera at ``encode`` (every
store has it; photo crops use the camera of their estimated head pose).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.geometry import split_camera, world_to_camera_points
from gazegen.models.encoders import LEAKY_SLOPE
from gazegen.rendering.triplane import AxisPair


def texel_segments(resolution: int, samples: int, box_warp: float, axes: AxisPair) -> torch.Tensor:
    """World points (3, samples, P, P, 3): plane k's texel (i, j) centre, at ``samples`` depths along its normal.

    Texel centres follow ``sample_planes`` (align_corners=False): column j at u = ((2j+1)/P - 1) * box/2,
    row i at v likewise; depth s at w = ((2s+1)/samples - 1) * box/2.
    """
    half = box_warp / 2
    centres = ((2 * torch.arange(resolution, dtype=torch.float64) + 1) / resolution - 1) * half  # (P,)
    depths = ((2 * torch.arange(samples, dtype=torch.float64) + 1) / samples - 1) * half  # (K,)
    w, v, u = torch.meshgrid(depths, centres, centres, indexing="ij")  # (K, P, P) each: depth, row, column
    planes = []
    for a_u, a_v in axes:
        normal = ({0, 1, 2} - {a_u, a_v}).pop() if a_u != a_v else None
        point = torch.zeros(samples, resolution, resolution, 3, dtype=torch.float64)
        point[..., a_u], point[..., a_v] = u, v
        if normal is not None:
            point[..., normal] = w
        planes.append(point)
    return torch.stack(planes).float()  # (3, K, P, P, 3)


class PlaneLifting(nn.Module):
    """Image-aligned features (B, C, P, P) and source cameras (B, 25) -> triplane (B, 3, C_plane, P, P)."""

    def __init__(self, channels: int, samples: int, hidden: int, plane_channels: int, plane_resolution: int,
                 box_warp: float, axes: AxisPair) -> None:
        super().__init__()
        self.samples, self.plane_channels = samples, plane_channels
        self.register_buffer("points", texel_segments(plane_resolution, samples, box_warp, axes), persistent=False)
        self.mix = nn.Sequential(
            nn.Conv2d(3 * channels * samples, 3 * hidden, 1, groups=3),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(3 * hidden, 3 * plane_channels, 3, padding=1, groups=3),
        )

    def read(self, features: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """Features at every texel's segment points: (B, 3, C * samples, P, P)."""
        b, c, h, w = features.shape
        k_planes, k, p = self.points.shape[:3]
        points = self.points.reshape(1, -1, 3).expand(b, -1, -1).to(features.dtype)  # (B, 3*K*P*P, 3)
        cams = cameras.to(features.dtype)
        local = world_to_camera_points(points, cams)  # (B, N, 3) OpenCV camera axes
        _, intrinsics = split_camera(cams)  # (B, 3, 3) normalised by the image side
        focal = torch.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1]], -1)[:, None]  # (B, 1, 2)
        centre = torch.stack([intrinsics[:, 0, 2], intrinsics[:, 1, 2]], -1)[:, None]
        uv = local[..., :2] / local[..., 2:].clamp_min(1e-6) * focal + centre  # (B, N, 2) in [0, 1] across the image
        grid = (2 * uv - 1).reshape(b, 1, -1, 2)  # grid_sample's [-1, 1] (pixel edges, align_corners=False)
        read = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, 1, N)
        read = read.reshape(b, c, k_planes, k, p, p).permute(0, 2, 1, 3, 4, 5)  # (B, 3, C, K, P, P)
        return read.reshape(b, k_planes, c * k, p, p)

    def forward(self, features: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        read = self.read(features, cameras)  # (B, 3, C*K, P, P)
        b, _, _, p, _ = read.shape
        planes = self.mix(read.reshape(b, -1, p, p))  # (B, 3*C_plane, P, P), planes mixed separately (groups=3)
        return planes.reshape(b, 3, self.plane_channels, p, p)
