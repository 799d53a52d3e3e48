"""The source's visible surface: each sample point learns how far it lies in front of or behind it.

A from-scratch option (``ModelConfig.surface_bands``). Nothing else tells a sample point where it
lies in depth. The pixel features (pixel_features.py) read the same value all along a source ray.
The lifted planes (plane_lifting.py) vary along the source's view axis only through perspective.
So the decoder can only place a surface through the planes' 64^2 texels, and the demo prior's
geometry stayed blurred: 6.9 mm of depth error on held-out heads, where a free triplane of the
same size, fitted to one head, reaches 2.5 mm.

This branch predicts the source's own z-depth map from F_geo (E_l's geometry features, image-
aligned) and lets every point compare itself with it, the depth counterpart of PixelNeRF's reads:

    F_geo (B, C_geo, P, P) -> conv 3x3, LeakyReLU, conv 3x3 -> + z of the world origin in the source camera
          -> d (B, 1, P, P)
    point p (world) -> source camera -> z_s and pixel (u, v) -> d(u, v), bilinear
                    -> s = z_s - d: signed distance along the source's axis, > 0 behind the visible surface
                    -> K Gaussian bands exp(-((s - mu_k) / width)^2 / 2), mu_k evenly over [-reach, reach]
                    -> Linear(K, C_plane)                                       (C_plane,)

The result is added to the triplane's mean feature at p before the decoder, like the pixel
features. The last conv and the Linear start at zero: d starts as a plane through the head's
centre, and a model that gains the branch renders what it rendered without it.

d is what E_geo stands for in the paper, face geometry as seen by the source, and training
supervises it directly against the source's depth (``loss.source_depth_weight``). It carries no
appearance, so it may be read at the eyes too: they are still painted by the gaze-conditioned
triplane alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.geometry import split_camera, world_to_camera_points
from gazegen.models.encoders import LEAKY_SLOPE


@dataclass(frozen=True)
class SourceSurface:
    """B (or 1) sources' predicted z-depth maps and their cameras."""

    depth: torch.Tensor  # (B, 1, P, P) z-depth of the visible surface in the source camera, world units
    camera: torch.Tensor  # (B, 25) the source cameras


class SurfaceBands(nn.Module):
    """F_geo and source cameras -> ``SourceSurface``; ``read`` gives each world point its (B, N, C_plane) term."""

    def __init__(self, geo_channels: int, hidden: int, bands: int, reach: float, plane_channels: int) -> None:
        super().__init__()
        if bands < 2:
            raise ValueError(f"surface bands: at least 2 to span [-reach, reach], got {bands}")
        self.depth_head = nn.Sequential(
            nn.Conv2d(geo_channels, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE), nn.Conv2d(hidden, 1, 3, padding=1)
        )
        self.register_buffer("centres", torch.linspace(-reach, reach, bands), persistent=False)  # (K,) world units
        self.width = 2 * reach / (bands - 1)  # one band's spacing
        self.proj = nn.Linear(bands, plane_channels)

    def reset_output_(self) -> None:
        """Zero the depth head's last conv and the output: d starts at the origin's depth and the branch adds nothing."""
        for layer in (self.depth_head[-1], self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, geometry: torch.Tensor, camera: torch.Tensor) -> SourceSurface:
        """F_geo (B, C_geo, P, P) and source cameras (B, 25) -> their surfaces' z-depth maps."""
        origin = world_to_camera_points(camera.new_zeros(camera.shape[0], 1, 3), camera)[:, 0, 2]  # (B,)
        return SourceSurface(depth=self.depth_head(geometry) + origin.to(geometry.dtype)[:, None, None, None], camera=camera)

    def read(self, surface: SourceSurface, points: torch.Tensor) -> torch.Tensor:
        """World points (B, N, 3) -> (B, N, C_plane). Surfaces of batch 1 serve every B."""
        b, n, _ = points.shape
        if surface.depth.shape[0] == 1 and b > 1:
            return self.read(surface, points.reshape(1, b * n, 3)).reshape(b, n, -1)
        local = world_to_camera_points(points, surface.camera.to(points.dtype))  # (B, N, 3) OpenCV camera axes
        _, k = split_camera(surface.camera.to(points.dtype))  # (B, 3, 3) normalised by the image side
        focal = torch.stack([k[:, 0, 0], k[:, 1, 1]], -1)[:, None]  # (B, 1, 2)
        centre = torch.stack([k[:, 0, 2], k[:, 1, 2]], -1)[:, None]
        uv = local[..., :2] / local[..., 2:3] * focal + centre  # (B, N, 2) in [0, 1] across the image
        grid = (2 * uv - 1)[:, None].to(surface.depth.dtype)  # (B, 1, N, 2)
        d = F.grid_sample(surface.depth, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]  # (B, N)
        signed = (local[..., 2] - d.to(points.dtype))[..., None]  # (B, N, 1) > 0: behind the visible surface
        bands = torch.exp(-0.5 * ((signed - self.centres.to(points.dtype)) / self.width).square())  # (B, N, K)
        return self.proj(bands.to(self.proj.weight.dtype))  # (B, N, C_plane)
