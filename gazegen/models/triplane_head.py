"""E_tri: appearance and geometry features -> triplane (paper Eq. 1 and 3; Live3D's ``EncoderFinal``).

    concat(F_app, F_geo)                      (B, C_h + C_geo, P, P)
      -> conv, LeakyReLU, conv, LeakyReLU      (B, c1, P, P)                   ``net``
      -> stride-2 patch embedding + SegFormer blocks with spatial reduction   ``transformer``
                                                (B, embed, P/2, P/2)
      -> PixelShuffle(2)                        (B, embed/4, P, P)
      -> concat F_geo again, 3 convs with LeakyReLU, a last conv               ``output_net``
                                                (B, C_out, P, P)

Live3D reads the output (C_out = 3 * C_plane) plane-major as 3 planes of C_plane channels: EG3D's
``planes.view(B, 3, 32, H, W)`` of its 96-channel backbone output (LiveGaze.redirect); with plane
lifting it is an image-aligned map that models/plane_lifting.py carries onto the planes. Live3D: convs 256 and 128, one block of width 1024 with 2 heads, MLP ratio 2
and spatial reduction 2 at 128^2 tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.models.efficient_attention import EfficientTransformer
from gazegen.models.encoders import LEAKY_SLOPE


class TriplaneHead(nn.Module):
    """E_tri: F_app (B, C_h, P, P) and F_geo (B, C_geo, P, P) -> (B, C_out, P, P)."""

    def __init__(
        self,
        high_channels: int,
        geo_channels: int,
        channels: tuple[int, int],
        embed_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        out_channels: int,
    ) -> None:
        super().__init__()
        c0, c1 = channels
        self.net = nn.Sequential(
            nn.Conv2d(high_channels + geo_channels, c0, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c0, c1, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.transformer = EfficientTransformer(c1, embed_dim, depth, heads, mlp_ratio, sr_ratio=sr_ratio)
        self.output_net = nn.Sequential(
            nn.Conv2d(embed_dim // 4 + geo_channels, c0, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c0, c1, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c1, out_channels, 3, padding=1),
        )

    def forward(self, appearance: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        x = self.net(torch.cat([appearance, geometry], 1))  # (B, c1, P, P)
        x = F.pixel_shuffle(self.transformer(x), 2)  # (B, embed, P/2, P/2) -> (B, embed/4, P, P)
        return self.output_net(torch.cat([x, geometry], 1))  # (B, C_out, P, P)
