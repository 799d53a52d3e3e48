"""Source detail: the source image, warped into each view by the rendered depth, sharpens the output.

A from-scratch option (``ModelConfig.detail_hidden``). The neural render is 64 px in the demo, and
the super-resolution can only interpolate what it holds: even a perfect 64 px render, upsampled
bicubically, reaches 25.7 dB face PSNR on the demo's heads (benchmarks/learning.py). The source has
the face's detail at full resolution, and the render says where each output pixel lies in 3D:

    output pixel (S x S) -> its ray at the rendered depth (bilinear to S) -> a world point p
    p -> projected with the source camera -> bilinear read of the source image     warped (B, 3, S, S)
    weight = opacity (bilinear to S) x eye weight(p)                               w (B, 1, S, S)
    turn = sin of the angle at p between the view's ray and the source camera's    v (B, 1, S, S)
    h = LeakyReLU(conv3x3([image, warped * w, w]) + conv1x1(v))                    (B, H, S, S)
    share = tanh(conv3x3(h)) x w                                                   (B, 1, S, S)
    output = image + share x (warped - image) + conv3x3(h)                         (B, 3, S, S)

The share blends the read in (image-based rendering's blend weight); the last conv corrects what
a blend cannot. Both, and the turn's conv, start at zero, so a model that gains the branch (or a
part of it) renders what it rendered without it, and learns where the warped source helps. The
turn says how far the read can be trusted: through the source's own camera (v = 0) the read is the
source itself whatever the depth, and a depth error moves the read in proportion to v (image-based
rendering weighs its source views by the same angle). As for the pixel features, points near either eye
read nothing (w = 0 within the ``EyeZone``'s radius), so the gaze stays the triplane's; occlusion is ignored
(a point hidden from the source reads the surface in front of it), and the conv sees the image
and the weight to judge the read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.geometry import project, split_camera
from gazegen.models.encoders import LEAKY_SLOPE
from gazegen.models.pixel_features import EyeZone
from gazegen.rendering.rays import camera_rays


class SourceDetail(nn.Module):
    """(image, depth, alpha, cameras) of B views and their source (image, camera) -> the image with source detail."""

    def __init__(self, hidden: int, eyes: EyeZone) -> None:
        super().__init__()
        self.eyes = eyes
        # [image, warped * w, w] -> hidden -> 3; the turn v joins before the activation (mix[0](x) + turn(v))
        self.mix = nn.Sequential(nn.Conv2d(7, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
                                 nn.Conv2d(hidden, 3, 3, padding=1))
        self.turn = nn.Conv2d(1, hidden, 1, bias=False)
        self.blend = nn.Conv2d(hidden, 1, 3, padding=1)  # hidden -> the share's logit

    def reset_output_(self) -> None:
        """Zero the output convs and the turn's: the branch adds nothing until it learns to (called after the model's init)."""
        for conv in (self.mix[-1], self.blend, self.turn):
            nn.init.zeros_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def warp(self, depth: torch.Tensor, alpha: torch.Tensor, cameras: torch.Tensor, source: torch.Tensor,
             source_camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rendered z-depth and opacity (B, 1, R, R) of cameras (B, 25); sources (B or 1, 3, S, S) and their cameras
        (B or 1, 25) -> the source read where each output pixel's surface projects (B, 3, S, S), its weight and the
        turn between the two cameras' rays there (B, 1, S, S) each."""
        b, side = depth.shape[0], source.shape[-1]
        rays = camera_rays(cameras, side)  # (B, S*S, 3) origins and directions, (B, S*S, 1) z per unit distance
        z = F.interpolate(depth, size=(side, side), mode="bilinear", align_corners=False).reshape(b, -1, 1)  # (B, S*S, 1)
        points = rays.origins + (z / rays.z_per_t) * rays.directions  # (B, S*S, 3) world
        source_camera = source_camera.to(points.dtype).expand(b, -1)
        uv = project(points, source_camera, 1)  # (B, S*S, 2) in [0, 1] across the image
        grid = (2 * uv - 1).reshape(b, side, side, 2).to(source.dtype)  # grid_sample's [-1, 1], pixel edges
        warped = F.grid_sample(source.expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                               align_corners=False)  # (B, 3, S, S)
        a = F.interpolate(alpha, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)  # (B, 1, S, S)
        eyes = self.eyes(points).reshape(b, 1, side, side)
        return warped, a * eyes.to(a.dtype), turn(points.detach(), rays.directions, source_camera).to(source.dtype)

    def forward(self, image: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor, cameras: torch.Tensor,
                source: torch.Tensor, source_camera: torch.Tensor) -> torch.Tensor:
        """Views (B, 3, S, S) with their depth, opacity (B, 1, R, R) and cameras (B, 25) -> (B, 3, S, S)."""
        warped, weight, v = self.warp(depth, alpha, cameras, source, source_camera)
        read, act, out = self.mix
        mixed = read(torch.cat([image, warped * weight, weight], 1))  # (B, H, S, S)
        h = act(torch.addcmul(mixed, v, self.turn.weight.view(1, -1, 1, 1)))  # + turn(v): the 1x1 conv of one channel
        share = torch.tanh(self.blend(h)) * weight  # (B, 1, S, S)
        return image + share * (warped - image) + out(h)


def turn(points: torch.Tensor, directions: torch.Tensor, source_camera: torch.Tensor) -> torch.Tensor:
    """World points (B, S*S, 3) on view rays of unit directions (B, S*S, 3), source cameras (B, 25) -> sin of the
    angle between each view ray and the source camera's ray through its point, as maps (B, 1, S, S)."""
    b, n = points.shape[:2]
    toward = points - split_camera(source_camera)[0][:, None, :3, 3]  # (B, S*S, 3) source camera -> point
    toward = toward / toward.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    side = math.isqrt(n)
    return torch.linalg.cross(directions, toward, dim=-1).norm(dim=-1).reshape(b, 1, side, side)
