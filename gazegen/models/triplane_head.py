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
lifting it is an image-aligned map that models/plane_lifting.py carries onto the planes. Live3D:
convs 256 and 128, one block of width 1024 with 2 heads, MLP ratio 2
and spatial reduction 2 at 128^2 tokens.

What does not depend on F_app (so a grid of gazes pays it once per source, issue 19): F_geo enters
E_tri only through the first conv of ``net`` and the first conv of ``output_net``, each applied to a
concatenation [., F_geo]. A convolution is linear in its input channels and zero padding pads each
channel alike, so conv([a, g]) = conv_a(a) + (conv_g(g) + bias): the F_geo half with the bias is a
per-source constant (``geometry_terms``, ``from_terms``). Everything after those two convs mixes
F_app in (the LeakyReLUs, the attention over the whole map, the later convs), so nothing else is.
At `base` the two halves are 2 x 14.5 GMAC of the ~373 GMAC of a redirect (gaze fusion + E_tri).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.models.efficient_attention import EfficientTransformer
from gazegen.models.encoders import LEAKY_SLOPE


@dataclass(frozen=True)
class GeometryTerms:
    """E_tri's F_geo-only terms of Bs sources (``TriplaneHead.geometry_terms``); shared by every gaze of a source."""

    net_in: torch.Tensor  # (Bs, c0, P, P) conv_g(F_geo) + bias of net[0]
    output_in: torch.Tensor  # (Bs, c0, P, P) conv_g(F_geo) + bias of output_net[0]

    def expand(self, batch: int) -> GeometryTerms:
        """The terms for ``batch`` redirects: unchanged when Bs == batch, a view when Bs == 1."""
        return GeometryTerms(self.net_in.expand(batch, -1, -1, -1), self.output_in.expand(batch, -1, -1, -1))


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

    # ------------------------------------------------------------ split at F_geo (issue 19): forward = from_terms o geometry_terms

    def geometry_terms(self, geometry: torch.Tensor) -> GeometryTerms:
        """F_geo (Bs, C_geo, P, P) -> the F_geo halves (and biases) of the two convs that read it, once per source."""
        return GeometryTerms(net_in=_input_half(self.net[0], geometry, last=True),
                             output_in=_input_half(self.output_net[0], geometry, last=True))

    def from_terms(self, appearance: torch.Tensor, terms: GeometryTerms) -> torch.Tensor:
        """F_app (B, C_h, P, P) and a source's terms -> (B, C_out, P, P): the output of ``forward``."""
        x = self.net[1:](_input_half(self.net[0], appearance, last=False) + terms.net_in)  # (B, c1, P, P)
        x = F.pixel_shuffle(self.transformer(x), 2)  # (B, embed/4, P, P)
        return self.output_net[1:](_input_half(self.output_net[0], x, last=False) + terms.output_in)


def _input_half(conv: nn.Conv2d, x: torch.Tensor, *, last: bool) -> torch.Tensor:
    """``conv`` applied to x (B, C_x, H, W) as the last (with the bias) or first (without) C_x of its input channels."""
    weight = conv.weight[:, -x.shape[1]:] if last else conv.weight[:, : x.shape[1]]  # (C_out, C_x, k, k)
    return F.conv2d(x, weight, conv.bias if last else None, conv.stride, conv.padding, conv.dilation)
