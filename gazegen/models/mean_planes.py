"""A learned triplane shared by every source: what all heads have in common, at its place in space.

A from-scratch option (``ModelConfig.mean_planes``). The planes a source gets carry what its camera
saw, not where it lies: plane lifting (plane_lifting.py) gives a texel what the source camera saw
along its ray, the same along the source's view axis but for perspective, and every encoder is
convolutional. The decoder sees no coordinate. So no part of the field knew where a point is, and
the shape every head shares had to be rebuilt from each image. It was not: the demo prior's
held-out depth error was 6.9 mm, while the per-camera median depth of its training heads, one
fixed map per camera and no image at all, reads 4.3 mm on the same pixels (``benchmarks/learning.py``,
"mean head"; evaluation/depth_baseline.py).

    world point p (B, N, 3) -> bilinear read of M (3, C, P + 2m, P + 2m), mean over its 3 planes -> (B, N, C)

The read is added to the source's planes' mean at p before the decoder, like the pixel features;
the renderer gets both in one read (``around``): M's texel grid extends the source planes' by whole
texels, so M's bilinear read plus T's equals the read of M + T padded with ``margin`` zero texels.
M has the source planes' texel size and reaches ``margin`` texels beyond their cube on every side:
inside the cube, adding M's read is adding M's centre to every source's planes; beyond it, where
the source's planes read zeros, the shoulders and the back of the head still get their common
shape (a twentieth of the demo's pixels with depth lie there). EG3D's generator starts from a
learned constant for the same reason. M starts at zero, so a model that gains it renders what it
rendered before (train/init_weights.GROWN); it learns at its own rate (``optim.lr_mean_planes``): one
texel is one free value, like a fitted triplane's, not a weight shared across an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.rendering.triplane import PlaneTexels


class MeanPlanes(nn.Module):
    """One learned triplane (3, C, P + 2 margin, P + 2 margin) over the source planes' cube grown by ``margin`` texels."""

    def __init__(self, channels: int, resolution: int, box_warp: float, margin: int = 0,
                 eg3d_compatible: bool = False) -> None:
        super().__init__()
        side = resolution + 2 * margin
        self.margin = margin
        self.planes = nn.Parameter(torch.zeros(3, channels, side, side))
        self.extent = box_warp * side / resolution  # world units: the same texel size as the source planes
        self.eg3d_compatible = eg3d_compatible

    def texels(self, dtype: torch.dtype = torch.float32, *, sources: torch.Tensor | None = None) -> PlaneTexels:
        """M as one triplane (1, 3, C, S, S) that serves every point set, or with ``sources`` (B, 3, C, P, P) added
        (``around``: (B, 3, C, S, S), in their dtype); its ``mean_at`` maps world points (B, N, 3) to the mean over the
        3 planes of their bilinear features (B, N, C), zeros beyond. Read by the margin loss (train/losses.py); the
        renderer reads ``around`` through its own texels. Without gradients it holds a channel-last copy."""
        planes = self.planes[None].to(dtype) if sources is None else self.around(sources)
        return PlaneTexels.from_planes(planes, self.extent, self.eg3d_compatible)

    def around(self, triplane: torch.Tensor) -> torch.Tensor:
        """Source triplanes (B, 3, C, P, P) -> M + T (B, 3, C, P + 2 margin, P + 2 margin) over ``extent``: read once,
        the sum of reading M and T apart (T reads zeros beyond its cube, as its zero padding does), up to rounding."""
        return self.planes[None].to(triplane.dtype) + F.pad(triplane, (self.margin,) * 4)
