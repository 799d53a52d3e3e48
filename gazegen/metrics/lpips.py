"""LPIPS, VGG variant (Zhang et al. 2018, "The unreasonable effectiveness of deep features").

For images x, y in [-1, 1]:

    f_l = VGG16 activation at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (ImageNet-normalised
          input; see gazegen/metrics/vgg.py: identical to LPIPS' ScalingLayer)
    u_l = f_l / (||f_l||_2 over channels + 1e-10)          # unit-normalised per pixel
    d_l = w_l . (u_l(x) - u_l(y))^2                        # 1x1 conv, C_l -> 1, no bias
    LPIPS(x, y) = sum_l mean_{h,w} d_l

Parameter names follow the published v0.1 files: ``lin0.model.1.weight`` ... ``lin4.model.1.weight``
(index 0 of each ``model`` is a dropout, the identity in eval mode), and ``net.features.*`` for the
torchvision VGG16 trunk. ``load_lpips`` fills the two parts from ``vgg16-397923af.pth`` and
``vgg.pth`` and loads them together with strict key matching.
"""

from __future__ import annotations

import torch
from torch import nn

from gazegen.metrics.vgg import RELU_CHANNELS, VGG16Features, features_state_dict
from gazegen.weights import load_weight

LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
EPS = 1e-10  # LPIPS' normalize_tensor epsilon


class NetLinLayer(nn.Module):
    """A 1x1 convolution C -> 1 without bias, after a dropout (as in the published files)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def unit_normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same with each pixel's channel vector scaled to unit length."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS distance (VGG). ``forward(x, y)`` -> (B,) for (B, 3, H, W) images in [-1, 1].

    A freshly built module has random weights; use ``load_lpips`` for the published metric.
    """

    def __init__(self):
        super().__init__()
        self.net = VGG16Features(LPIPS_LAYERS)
        for i, layer in enumerate(LPIPS_LAYERS):  # lin0..lin4: the published names
            setattr(self, f"lin{i}", NetLinLayer(RELU_CHANNELS[layer]))
        self.eval()

    def layers(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{i}") for i in range(len(LPIPS_LAYERS))]

    def forward(self, x: torch.Tensor, y: torch.Tensor, per_layer: bool = False) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        fx, fy = self.net(x), self.net(y)
        terms = []
        for layer, lin in zip(LPIPS_LAYERS, self.layers()):
            diff = (unit_normalise(fx[layer]) - unit_normalise(fy[layer])).pow(2)  # (B, C_l, h, w)
            terms.append(lin(diff).mean(dim=(1, 2, 3)))  # (B,)
        stacked = torch.stack(terms, dim=1)  # (B, L)
        return stacked if per_layer else stacked.sum(dim=1)


def load_lpips(*, verify: bool = True) -> LPIPS:
    """The published LPIPS v0.1 (VGG), frozen and in eval mode.

    Raises ``MissingWeightsError`` naming whichever of ``vgg16-397923af.pth`` / ``vgg.pth`` is
    absent: there is no random-weight fallback.
    """
    backbone = {f"net.{k}": v for k, v in features_state_dict(load_weight("vgg16", verify=verify)).items()}
    linear = load_weight("lpips_vgg", verify=verify)
    model = LPIPS()
    model.load_state_dict({**backbone, **linear}, strict=True)
    return model.eval().requires_grad_(False)
