"""The two image encoders of Live3D that LiveGaze keeps (paper section 3.1-3.2, Fig. 2).

E_h (``HighFrequencyEncoder``): a stride-2 conv stack that keeps full detail; its features F_h
carry appearance (3DPE's analysis) and are where the gaze is injected.

E_l (``LowFrequencyEncoder``): a CNN backbone (ResNet-34 stem, layer1, layer2: stride 8) and
DeepLabV3's ASPP head, then SegFormer transformer blocks at stride 16, then upsampling convs
back to stride 2; its features F_geo carry the face's geometry.

Both map an image (B, C_in, H, W) to (B, C, H/2, W/2): the triplane's resolution. The layout
follows Live3DPortrait (an open reproduction of Live3D; see gazegen/live3d.py for the key mapping):
``EncoderEhigh`` for E_h, and smp's ``DeepLabV3(encoder_name="resnet34", encoder_depth=3)``
+ ``EncoderF`` for E_l, built there with ``use_bn=False``: every BatchNorm replaced by identity
and every conv given a bias. Two behaviours of that code are kept on purpose:

* upsampling in E_l is bilinear with ``align_corners=True`` (``nn.UpsamplingBilinear2d``);
* ``append_pixel_coordinates``: a 3-channel input gets two more channels, the raw row and column
  index of each pixel (0 .. H-1, not normalised), before both encoders (``coord_channels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.models.efficient_attention import EfficientTransformer

LEAKY_SLOPE = 0.01  # LeakyReLU slope of Live3D's conv stacks (PyTorch's default)


def append_pixel_coordinates(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 5, H, W): the image, then each pixel's row index, then its column index."""
    b, _, h, w = image.shape
    rows = torch.arange(h, device=image.device, dtype=image.dtype)[:, None].expand(h, w)  # (H, W)
    cols = torch.arange(w, device=image.device, dtype=image.dtype)[None, :].expand(h, w)
    grid = torch.stack([rows, cols])[None].expand(b, 2, h, w)  # (B, 2, H, W)
    return torch.cat([image, grid], 1)


class HighFrequencyEncoder(nn.Module):
    """E_h: image (B, C_in, H, W) -> F_h (B, channels, H/2, W/2).

    A 7x7 stride-2 conv to ``hidden`` channels, then ``depth`` 3x3 convs at ``channels``, each
    followed by LeakyReLU (Live3D's ``EncoderEhigh.net``).
    """

    def __init__(self, in_channels: int, hidden: int, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 7, stride=2, padding=3), nn.LeakyReLU(LEAKY_SLOPE)]
        for i in range(depth):
            layers += [nn.Conv2d(hidden if i == 0 else channels, channels, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block, without BatchNorm (convs carry biases)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        needs_projection = stride != 1 or in_channels != channels
        self.downsample = nn.Conv2d(in_channels, channels, 1, stride=stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + skip)


class ResNetBackbone(nn.Module):
    """ResNet stem, layer1 and layer2: (B, C_in, H, W) -> (B, channels[1], H/8, W/8).

    7x7 stride-2 conv, ReLU, 3x3 stride-2 max-pool, ``blocks[0]`` blocks at ``channels[0]``,
    ``blocks[1]`` blocks at ``channels[1]`` (the first of stride 2). ResNet-34: (64, 128), (3, 4).
    """

    def __init__(self, in_channels: int, channels: tuple[int, int], blocks: tuple[int, int]) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 7, stride=2, padding=3)
        self.layer1 = nn.Sequential(*(BasicBlock(c1, c1) for _ in range(blocks[0])))
        self.layer2 = nn.Sequential(BasicBlock(c1, c2, stride=2), *(BasicBlock(c2, c2) for _ in range(blocks[1] - 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(image)), 3, stride=2, padding=1)  # (B, c1, H/4, W/4)
        return self.layer2(self.layer1(x))  # (B, c2, H/8, W/8)


class ASPP(nn.Module):
    """DeepLabV3's head (smp's ``DeepLabV3Decoder``) without BatchNorm: (B, C_in, h, w) -> (B, channels, h, w).

    Five parallel branches, each followed by ReLU: a 1x1 conv, three 3x3 convs dilated by
    ``rates``, and global average pooling + 1x1 conv broadcast back over the grid. Their
    concatenation goes through a 1x1 projection, ReLU, dropout (active in training only, as in
    DeepLabV3), then a 3x3 conv and ReLU.
    """

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, int, int], dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels, channels, 1)]
            + [nn.Conv2d(in_channels, channels, 3, padding=r, dilation=r) for r in rates]
        )
        self.pool_conv = nn.Conv2d(in_channels, channels, 1)
        self.project = nn.Conv2d(5 * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.fuse = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [F.relu(conv(x)) for conv in self.convs]  # 4 x (B, channels, h, w)
        pooled = F.relu(self.pool_conv(x.mean((2, 3), keepdim=True)))  # (B, channels, 1, 1)
        branches.append(pooled.expand_as(branches[0]))
        y = self.dropout(F.relu(self.project(torch.cat(branches, 1))))  # (B, channels, h, w)
        return F.relu(self.fuse(y))


class LowFrequencyEncoder(nn.Module):
    """E_l: image (B, C_in, H, W) -> F_geo (B, channels, H/2, W/2).

    backbone (H/8) -> ASPP (H/8) -> transformer: stride-2 patch embedding to ``embed_dim`` and
    ``depth`` SegFormer blocks (H/16) -> PixelShuffle(2) to ``embed_dim / 4`` channels (H/8) ->
    bilinear x2 -> ``head``: conv, ReLU, bilinear x2, conv, ReLU, conv (H/2). Live3D: ResNet-34,
    ASPP 256, 5 blocks of width 1024 with 4 heads and MLP ratio 2, head 128 -> 96 channels.
    """

    def __init__(
        self,
        in_channels: int,
        backbone_channels: tuple[int, int],
        backbone_blocks: tuple[int, int],
        aspp_channels: int,
        aspp_rates: tuple[int, int, int],
        aspp_dropout: float,
        embed_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        hidden: int,
        channels: int,
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(in_channels, backbone_channels, backbone_blocks)
        self.aspp = ASPP(backbone_channels[1], aspp_channels, aspp_rates, aspp_dropout)
        self.transformer = EfficientTransformer(aspp_channels, embed_dim, depth, heads, mlp_ratio, sr_ratio=1)
        self.head = nn.Sequential(
            nn.Conv2d(embed_dim // 4, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.aspp(self.backbone(image))  # (B, aspp, H/8, W/8)
        x = F.pixel_shuffle(self.transformer(x), 2)  # (B, embed, H/16, W/16) -> (B, embed/4, H/8, W/8)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, embed/4, H/4, W/4)
        return self.head(x)  # (B, channels, H/2, W/2)
