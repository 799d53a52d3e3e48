"""Source detail: the source image, warped into each view by the rendered depth, sharpens the output.

A from-scratch option (``ModelConfig.detail_hidden``). The neural render is 64 px in the demo, and
the super-resolution can only interpolate what it holds: even a perfect 64 px render, upsampled
bicubically, reaches 25.7 dB face PSNR on the demo's heads (benchmarks/learning.py). The source has
the face's detail at full resolution, and the render says where each output pixel lies in 3D:

    output pixel (S x S) -> its ray at the rendered depth (bilinear to S) -> a world point p
    p -> projected with the source camera -> bilinear read of the source image     warped (B, 3, S, S)
    weight = opacity (bilinear to S) x eye weight(p)                               w (B, 1, S, S)
    output = image + conv3x3(LeakyReLU(conv3x3([image, warped * w, w])))          (B, 3, S, S)

The last conv starts at zero, so a model that gains the branch renders what it rendered without
it, and learns where the warped source helps. As for the pixel features, points near either eye
read nothing (w = 0 within ``eye_radius``), so the gaze stays the triplane's; occlusion is ignored
(a point hidden from the source reads the surface in front of it), and the conv sees the image
and the weight to judge the read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.geometry import project
from gazegen.models.encoders import LEAKY_SLOPE
from gazegen.models.pixel_features import eye_centres, eye_weight
from gazegen.rendering.rays import camera_rays


class SourceDetail(nn.Module):
    """(image, depth, alpha, cameras) of B views and their source (image, camera) -> the image with source detail."""

    def __init__(self, hidden: int, eye_centre: tuple[float, float, float], eye_radius: float) -> None:
        super().__init__()
        self.eye_radius = eye_radius
        self.mix = nn.Sequential(nn.Conv2d(7, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
                                 nn.Conv2d(hidden, 3, 3, padding=1))
        self.register_buffer("eyes", eye_centres(eye_centre), persistent=False)  # (2, 3) world units

    def reset_output_(self) -> None:
        """Zero the last conv: the branch adds nothing until it learns to (called after the model's init)."""
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def warp(self, depth: torch.Tensor, alpha: torch.Tensor, cameras: torch.Tensor, source: torch.Tensor,
             source_camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rendered z-depth and opacity (B, 1, R, R) of cameras (B, 25); sources (B or 1, 3, S, S) and their cameras
        (B or 1, 25) -> the source read where each output pixel's surface projects (B, 3, S, S), and its weight (B, 1, S, S)."""
        b, side = depth.shape[0], source.shape[-1]
        rays = camera_rays(cameras, side)  # (B, S*S, 3) origins and directions, (B, S*S, 1) z per unit distance
        z = F.interpolate(depth, size=(side, side), mode="bilinear", align_corners=False).reshape(b, -1, 1)  # (B, S*S, 1)
        points = rays.origins + (z / rays.z_per_t) * rays.directions  # (B, S*S, 3) world
        uv = project(points, source_camera.to(points.dtype).expand(b, -1), 1)  # (B, S*S, 2) in [0, 1] across the image
        grid = (2 * uv - 1).reshape(b, side, side, 2).to(source.dtype)  # grid_sample's [-1, 1], pixel edges
        warped = F.grid_sample(source.expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                               align_corners=False)  # (B, 3, S, S)
        a = F.interpolate(alpha, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)  # (B, 1, S, S)
        eyes = eye_weight(points, self.eyes.to(points.dtype), self.eye_radius).reshape(b, 1, side, side)
        return warped, a * eyes.to(a.dtype)

    def forward(self, image: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor, cameras: torch.Tensor,
                source: torch.Tensor, source_camera: torch.Tensor) -> torch.Tensor:
        """Views (B, 3, S, S) with their depth, opacity (B, 1, R, R) and cameras (B, 25) -> (B, 3, S, S)."""
        warped, weight = self.warp(depth, alpha, cameras, source, source_camera)
        return image + self.mix(torch.cat([image, warped * weight, weight], 1))
