"""Pixel-aligned source features: each sample point also reads the source image where the source camera saw it.

A from-scratch option (``ModelConfig.pixel_channels``), after PixelNeRF (Yu et al., CVPR 2021). The
triplane has to carry the whole face through 64^2 texels per plane, and a small model trained on
a CPU learns it blurred (the demo prior reached 20 dB on held-out faces after 11k steps). This
branch lets each point look at the source directly:

    source image (B, 3, S, S) -> conv 3x3, LeakyReLU, conv 3x3 -> (B, C, S, S)
    map = [those features, the image]                                        (B, C + 3, S, S)
    point p (world) -> projected with the source camera -> bilinear read of the map (zeros outside)
                    -> Linear(C + 3, C_plane) x eye weight                   (C_plane,)

(The Linear's weight is applied to the map once per source, in ``forward``, before any read: the
same thing, since bilinear reads are linear, and each point then reads C_plane channels instead of
C + 3, with no per-render work on the map.)

The result is added to the triplane's mean feature at p before the decoder (renderer.py's
``TriplaneField``). The Linear starts at zero, so a model that gains this branch renders exactly
what it rendered without it: a prior trained without the branch loads and continues from there.

**The eyes come from the triplane, never from the source.** A point within the radius of either
eye centre (``eye_centre`` and its mirror in x, world units) reads nothing: weight 0, rising
linearly to 1 at (1 + its falloff) x the radius (``EyeZone``), so there is no seam. Otherwise the
source's own eyes would be copied into every redirected view, and the gaze path (which acts on the
triplane) would have to learn to fight them. Occlusion is ignored: a point behind the face reads
the pixel of the surface in front of it, as in PixelNeRF, and the density decides what is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.geometry import project
from gazegen.models.encoders import LEAKY_SLOPE


class EyeZone(nn.Module):
    """Where the source is never read, as weights: 0 within ``radius`` of either eye centre (``centre`` and its
    mirror in x, world units), rising linearly to 1 at (1 + ``falloff``) x ``radius``; all 1 when ``radius`` is 0.
    Shared by the pixel features and the source detail (models/source_detail.py)."""

    def __init__(self, centre: tuple[float, float, float], radius: float, falloff: float = 0.5) -> None:
        super().__init__()
        self.radius, self.falloff = radius, falloff
        x, y, z = centre
        self.register_buffer("centres", torch.tensor([[x, y, z], [-x, y, z]]), persistent=False)  # (2, 3) world units

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """World points (B, N, 3) -> weights (B, N, 1)."""
        if self.radius <= 0:
            return points.new_ones(*points.shape[:-1], 1)
        centres = self.centres.to(points.dtype)[None].expand(points.shape[0], -1, -1)  # (B, 2, 3)
        distance = torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist")  # (B, N, 2), exact
        nearest = distance.amin(-1, keepdim=True)  # (B, N, 1)
        return ((nearest - self.radius) / (self.falloff * self.radius)).clamp(0, 1)


@dataclass(frozen=True)
class SourcePixels:
    """What the branch keeps of B (or 1) source images: their feature map and cameras."""

    map: torch.Tensor  # (B, C_plane, S, S) the features and the image itself through proj's weight (no bias)
    camera: torch.Tensor  # (B, 25) the source cameras


class PixelFeatures(nn.Module):
    """Source images and cameras -> ``SourcePixels``; ``read`` gives each world point its (B, N, C_plane) term."""

    def __init__(self, channels: int, hidden: int, plane_channels: int, eyes: EyeZone) -> None:
        super().__init__()
        self.eyes = eyes
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE), nn.Conv2d(hidden, channels, 3, padding=1)
        )
        self.proj = nn.Linear(channels + 3, plane_channels)

    def reset_output_(self) -> None:
        """Zero the output layer: the branch adds nothing until it learns to (called after the model's init)."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, image: torch.Tensor, camera: torch.Tensor) -> SourcePixels:
        """Source images (B, 3, S, S) in [-1, 1] and their cameras (B, 25) -> ``SourcePixels``."""
        features = torch.cat([self.encoder(image), image], 1)  # (B, C + 3, S, S)
        return SourcePixels(map=F.conv2d(features, self.proj.weight[:, :, None, None]), camera=camera)  # (B, C_plane, S, S)

    def read(self, source: SourcePixels, points: torch.Tensor) -> torch.Tensor:
        """World points (B, N, 3) -> (B, N, C_plane). Sources of batch 1 serve every B."""
        b, n, _ = points.shape
        if source.map.shape[0] == 1 and b > 1:
            return self.read(source, points.reshape(1, b * n, 3)).reshape(b, n, -1)
        uv = project(points, source.camera.to(points.dtype), 1)  # (B, N, 2) in [0, 1] across the image
        grid = (2 * uv - 1)[:, None].to(source.map.dtype)  # (B, 1, N, 2): grid_sample's [-1, 1], pixel edges
        read = F.grid_sample(source.map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C_plane, 1, N)
        return (read[:, :, 0].transpose(1, 2) + self.proj.bias) * self.eyes(points)  # (B, N, C_plane)
