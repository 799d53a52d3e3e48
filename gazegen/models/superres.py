"""Super-resolution: the low-resolution feature image -> the output image (EG3D; Live3D's renderer).

EG3D's ``SuperresolutionHybrid8XDC``: the feature image (its first 3 channels are the raw RGB)
is resized to ``output / 2^n`` if needed (bilinear, antialiased), then n StyleGAN2 synthesis
blocks each double the resolution:

    x   -> conv0: modulated 3x3 conv, upsampled x2 -> conv1: modulated 3x3 conv      (features)
    img -> upsampled x2 + torgb(x): modulated 1x1 conv, not demodulated             (RGB skip path)

starting from ``img = features[:, :3]``. A modulated conv scales its weight's input channels by a
style ``s = affine(w)``, then (conv0, conv1) rescales each output filter to unit norm
("demodulation"), then adds a bias and applies LeakyReLU(0.2) times sqrt(2). Upsampling is
StyleGAN2's: a stride-2 transposed conv (or zero insertion for the RGB path) followed by the FIR
low-pass filter [1, 3, 3, 1] with gain 4. In EG3D the style comes from the GAN's latent w; Live3D
has no latent, so w is one learned vector (``style``, Live3D's ``const``) shared by every layer
and every image, and StyleGAN2's noise inputs are off (``noise_mode='none'``).

Parameter names follow EG3D's (``blocks.{i}.conv0.affine.weight`` is EG3D's
``block{i}.conv0.affine.weight``) with plain ``nn.Linear`` / tensors: EG3D's equalised-learning-
rate gains (``1 / sqrt(fan_in)`` at run time in ``FullyConnectedLayer`` and ``ToRGBLayer``) are
folded into the stored weights here, and live3d.py applies them when importing. Base: two
blocks of 256 and 128 channels, 128 -> 512 px, style width 512.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # StyleGAN2's resampling filter (separable, normalised to sum 1)
LRELU_SLOPE = 0.2  # StyleGAN2's activation: leaky_relu(x, 0.2) * sqrt(2)
LRELU_GAIN = math.sqrt(2.0)
DEMOD_EPS = 1e-8  # added to each filter's squared norm before the reciprocal square root


def fir_kernel(channels: int, like: torch.Tensor) -> torch.Tensor:
    """The [1, 3, 3, 1] 2-D low-pass filter with gain 4 (x2 upsampling), one copy per channel: (C, 1, 4, 4)."""
    taps = torch.tensor(FIR_TAPS, device=like.device, dtype=like.dtype)
    kernel = torch.outer(taps, taps) / taps.sum() ** 2 * 4.0  # (4, 4), sums to 4
    return kernel.expand(channels, 1, 4, 4)


def upsample2d(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zero insertion then the FIR filter (StyleGAN2's ``upsample2d``)."""
    return F.conv_transpose2d(image, fir_kernel(image.shape[1], image), stride=2, padding=1, groups=image.shape[1])


def _affine(style_dim: int, channels: int) -> nn.Linear:
    """Style w -> per-input-channel scales; starts at 1 + N(0, 1/style_dim) x w (EG3D's bias_init=1)."""
    layer = nn.Linear(style_dim, channels)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(style_dim))
    nn.init.ones_(layer.bias)
    return layer


class ModulatedConv(nn.Module):
    """StyleGAN2's ``SynthesisLayer`` without noise: (B, C_in, H, W) -> (B, C_out, H', W'), H' = 2H if ``up``."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.affine = _affine(style_dim, in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """leaky_relu(conv(x) + bias) * gain, computed as leaky_relu(conv'(x) + bias * gain) with the gain folded into
        the weight (leaky_relu(g z) = g leaky_relu(z) for g > 0) and the bias into the last conv: one pass over the
        output instead of three (the same up to float rounding)."""
        w = self.weight * self.affine(style)[None, :, None, None]  # (C_out, C_in, 3, 3) modulated
        w = w * (torch.rsqrt(w.square().sum((1, 2, 3), keepdim=True) + DEMOD_EPS) * LRELU_GAIN)  # demodulated, gain
        bias = self.bias * LRELU_GAIN
        if self.up:
            x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)  # (B, C_out, 2H+1, 2W+1)
            x = F.conv2d(x, fir_kernel(x.shape[1], x), bias, padding=1, groups=x.shape[1])  # (B, C_out, 2H, 2W)
        else:
            x = F.conv2d(x, w, bias, padding=1)  # (B, C_out, H, W)
        return F.leaky_relu(x, LRELU_SLOPE, inplace=not torch.is_grad_enabled())


class ToRGB(nn.Module):
    """StyleGAN2's ``ToRGBLayer``: modulated 1x1 conv to 3 channels, no demodulation, plus bias."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.affine = _affine(style_dim, in_channels)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.affine(style)[None, :, None, None]  # (3, C_in, 1, 1)
        return F.conv2d(x, w, self.bias)  # (B, 3, H, W)


class SuperResBlock(nn.Module):
    """One x2 step: (x (B, C_in, H, W), img (B, 3, H, W)) -> (B, C_out, 2H, 2W), (B, 3, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv0 = ModulatedConv(in_channels, out_channels, style_dim, up=True)
        self.conv1 = ModulatedConv(out_channels, out_channels, style_dim, up=False)
        self.torgb = ToRGB(out_channels, style_dim)

    def forward(self, x: torch.Tensor, image: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(self.conv0(x, style), style)
        return x, upsample2d(image).add_(self.torgb(x, style))


class SuperResolution(nn.Module):
    """Feature image (B, F, R, R), RGB in its first 3 channels -> image (B, 3, S, S), S = output_resolution."""

    def __init__(
        self, in_channels: int, channels: tuple[int, ...], style_dim: int, output_resolution: int, antialias: bool
    ) -> None:
        super().__init__()
        self.input_resolution = output_resolution // 2 ** len(channels)
        self.antialias = antialias
        self.style = nn.Parameter(torch.randn(style_dim))  # Live3D's `const`: the w of every layer
        widths = (in_channels, *channels)
        self.blocks = nn.ModuleList(SuperResBlock(widths[i], widths[i + 1], style_dim) for i in range(len(channels)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Channels-last throughout (oneDNN's convolutions: measured 1.8x (base) to 3.7x (tiny) faster on CPU than
        NCHW, the same numbers up to float rounding); the renderer's feature image already is."""
        features = features.contiguous(memory_format=torch.channels_last)  # no copy when it already is
        if features.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            features = F.interpolate(features, size, mode="bilinear", align_corners=False, antialias=self.antialias)
        x, image = features, features[:, :3]  # (B, F, r, r), (B, 3, r, r)
        for block in self.blocks:
            x, image = block(x, image, self.style)
        return image  # (B, 3, S, S)
