"""The triplane decoder MLP (EG3D's ``OSGDecoder``): the only part of the renderer with parameters.

    features of the 3 planes (B, 3, N, C) -> mean over planes (B, N, C)
      -> net.0 Linear(C, hidden) -> net.1 Softplus -> net.2 Linear(hidden, 1 + feature_channels)
    density_raw = output[..., :1]                                  (activated in compositing.py)
    features    = sigmoid(output[..., 1:]) * (1 + 2 * 0.001) - 0.001   (MipNeRF's widened sigmoid,
                  as in EG3D: features lie in (-0.001, 1.001), so 0 and 1 are reachable)

Parameter names: ``net.0.weight`` (hidden, C), ``net.0.bias`` (hidden,), ``net.2.weight``
(1 + feature_channels, hidden), ``net.2.bias`` (1 + feature_channels,): the same names as EG3D's
``OSGDecoder.net``, and output row 0 is the density as there. EG3D's ``FullyConnectedLayer``
(lr_multiplier 1) stores its weight unscaled and multiplies it by ``1 / sqrt(in_features)`` at
run time, so an EG3D/Live3D ``net.k.weight`` maps onto ours as ``weight / sqrt(in_features)``;
biases map unchanged.

Without autograd (rendering, synthesis) ``decode`` runs the same formula in place on its own
buffers: matrix products with the bias added in place, softplus as exp, +1 and log in place
(``softplus_``; torch's kernel is log1p-based, and on large tensors measured 1.7x slower), the
clamp against overflow skipped when no output of the first layer reaches it, and the widened
sigmoid on the contiguous output. Within 1.2e-7 of ``F.softplus`` where x <= 0 and one ulp of the
result above (float32); torch's own returns x above 20, off by up to e^-20.
Under autograd it runs ``net`` as written, so gradients are torch's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gazegen.config import RenderConfig

SIGMOID_MARGIN = 0.001  # EG3D / MipNeRF: sigmoid(x) * (1 + 2m) - m
SOFTPLUS_CLAMP = 80.0  # softplus_: exp is taken of at most this (exp(88.7) overflows float32)


def softplus_(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = log(1 + exp(x)) in place on ``x`` (no autograd), returned.

    When some x exceeds ``SOFTPLUS_CLAMP`` (one read pass tells), ``exp`` is taken of x clamped to it,
    then the maximum with x itself: log(1 + e^x) >= x, so above the clamp the result is x (as torch's
    softplus, which returns x above 20); otherwise neither is needed (two passes and a temporary
    fewer: the usual case). Below about -17, 1 + e^x rounds to 1 and the result to 0 instead of
    e^x < 6e-8 (float32).
    """
    if bool(x.amax() <= SOFTPLUS_CLAMP):  # False for a NaN too: the clamped path keeps it
        return x.exp_().add_(1).log_()
    y = torch.clamp_max(x, SOFTPLUS_CLAMP).exp_().add_(1).log_()  # clamp_max: x.clamp(max=) measured 3x slower
    return torch.maximum(y, x, out=x)


def _affine(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` (..., in) -> (..., out) as a matrix product, then the bias added in place (measured 10% faster
    than ``F.linear``'s addmm, which first copies the bias into every output row)."""
    return torch.matmul(x, layer.weight.t()).add_(layer.bias)


@dataclass(frozen=True)
class FieldOutput:
    """What a radiance field returns at a set of points."""

    features: torch.Tensor  # (B, N, F) colour features, about [0, 1]; the first 3 are RGB
    density_raw: torch.Tensor  # (B, N, 1) density before softplus(raw + density_bias)


class TriplaneDecoder(nn.Module):
    """Mean of the three plane features -> 2-layer MLP -> density (raw) and colour features."""

    def __init__(self, in_channels: int, hidden: int, feature_channels: int) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.net = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.Softplus(),
            nn.Linear(hidden, 1 + feature_channels),
        )

    @classmethod
    def from_config(cls, cfg: RenderConfig) -> TriplaneDecoder:
        """The decoder sized by ``cfg``: plane_channels -> decoder_hidden -> 1 + feature_channels."""
        return cls(cfg.plane_channels, cfg.decoder_hidden, cfg.feature_channels)

    def forward(self, plane_features: torch.Tensor) -> FieldOutput:
        """Sampled plane features (B, 3, N, C) -> FieldOutput with (B, N, F) features, (B, N, 1) raw density."""
        return self.decode(plane_features.mean(1))

    def decode(self, mean_features: torch.Tensor) -> FieldOutput:
        """Plane features already averaged over the 3 planes (B, N, C) (triplane.PlaneTexels.mean_at) -> FieldOutput."""
        if torch.is_grad_enabled():
            x = self.net(mean_features)  # (B, N, C) -> (B, N, 1 + F)
            features = torch.sigmoid(x)[..., 1:] * (1 + 2 * SIGMOID_MARGIN) - SIGMOID_MARGIN  # contiguous: 1.4x faster
        else:  # the same formula in place (module docstring)
            first, _, second = self.net
            hidden = softplus_(_affine(mean_features, first))  # (B, N, hidden)
            x = _affine(hidden, second)  # (B, N, 1 + F)
            density_raw = x[..., :1].clone()
            features = x.sigmoid_().mul_(1 + 2 * SIGMOID_MARGIN).sub_(SIGMOID_MARGIN)[..., 1:]  # contiguous x: fast passes
            return FieldOutput(features=features, density_raw=density_raw)
        return FieldOutput(features=features, density_raw=x[..., :1])
