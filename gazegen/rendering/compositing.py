"""Volume compositing along rays (EG3D's ``MipRayMarcher2``), with no parameters.

Given S sorted samples per ray at depths t_0 < ... < t_{S-1} (distance along the unit ray), the
S-1 intervals between consecutive samples are the rendering elements:

    delta_i  = t_{i+1} - t_i
    value_i  = (value(t_i) + value(t_{i+1})) / 2          features and raw density, as in EG3D
    sigma_i  = softplus(raw_i + density_bias)             (EG3D: density_bias = -1)
    alpha_i  = 1 - exp(-sigma_i * delta_i)
    T_i      = exp(-sum_{j<i} sigma_j * delta_j)          = cumprod(1 - alpha) shifted, T_0 = 1
    w_i      = T_i * alpha_i
    opacity  = sum_i w_i = 1 - exp(-sum_i sigma_i * delta_i)
    features = sum_i w_i * feature_i  (+ (1 - opacity) on a white background; black adds 0)
    depth    = sum_i w_i * t_mid_i / opacity, clamped to the ray's sampled range [t_0, t_{S-1}]

Transmittance comes from an exclusive cumulative sum of optical depth, equal to EG3D's
``cumprod(1 - alpha + 1e-10)`` without its epsilon. Depth is the expected distance along the
ray given that the ray stops (EG3D), so a ray that meets nothing reads t_{S-1}; the renderer
converts it to z-depth. EG3D clamps with the minimum and maximum depth of the whole batch; the
clamp here is per ray, so a ray's result never depends on the other rays rendered with it.

The feature sum is taken per sample rather than per interval: sum_i w_i (f_i + f_{i+1}) / 2 =
sum_j f_j (w_{j-1} + w_j) / 2 (w_{-1} = w_{S-1} = 0), which never forms the (B, N, S-1, F)
interval features; equal up to float rounding. ``march`` does everything but the features, so a
renderer can weigh samples held in any order (``weighted_features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class March:
    """Per-ray results of marching N rays of S samples (S-1 intervals) through their densities alone."""

    depth: torch.Tensor  # (B, N) expected distance along the ray where it stops, world units
    opacity: torch.Tensor  # (B, N) sum of weights, in [0, 1]
    weights: torch.Tensor  # (B, N, S-1) weight of each interval
    transmittance: torch.Tensor  # (B, N, S-1) light reaching the start of each interval
    midpoints: torch.Tensor  # (B, N, S-1) distance of each interval's midpoint along the ray
    sample_weights: torch.Tensor  # (B, N, S) weight of each sample's features: (w_{j-1} + w_j) / 2


@dataclass(frozen=True)
class Composite:
    """Per-ray results of compositing N rays of S samples (S-1 intervals)."""

    features: torch.Tensor  # (B, N, F) composited features, background included, about [0, 1]
    depth: torch.Tensor  # (B, N) expected distance along the ray where it stops, world units
    opacity: torch.Tensor  # (B, N) sum of weights, in [0, 1]
    weights: torch.Tensor  # (B, N, S-1) weight of each interval
    transmittance: torch.Tensor  # (B, N, S-1) light reaching the start of each interval
    midpoints: torch.Tensor  # (B, N, S-1) distance of each interval's midpoint along the ray


def density_activation(density_raw: torch.Tensor, density_bias: float) -> torch.Tensor:
    """Raw decoder density -> sigma >= 0 per world unit: softplus(raw + density_bias)."""
    return F.softplus(density_raw + density_bias)


def march(density_raw: torch.Tensor, depths: torch.Tensor, *, density_bias: float) -> March:
    """Raw densities (B, N, S) at sorted depths (B, N, S) -> weights, opacity and depth of each ray."""
    mid_raw = (density_raw[..., :-1] + density_raw[..., 1:]) / 2  # (B, N, S-1)
    midpoints = (depths[..., :-1] + depths[..., 1:]) / 2  # (B, N, S-1)
    deltas = depths[..., 1:] - depths[..., :-1]  # (B, N, S-1)

    optical = density_activation(mid_raw, density_bias) * deltas  # (B, N, S-1) sigma * delta
    alpha = 1 - torch.exp(-optical)
    before = torch.cumsum(optical, -1) - optical  # (B, N, S-1) exclusive sum: optical depth before interval i
    transmittance = torch.exp(-before)
    weights = transmittance * alpha  # (B, N, S-1)

    opacity = weights.sum(-1)  # (B, N)
    hit = opacity > 0
    depth = (weights * midpoints).sum(-1) / torch.where(hit, opacity, torch.ones_like(opacity))  # (B, N)
    depth = torch.where(hit, depth, depths[..., -1])
    depth = torch.minimum(torch.maximum(depth, depths[..., 0]), depths[..., -1])
    sample_weights = (F.pad(weights, (1, 0)) + F.pad(weights, (0, 1))) / 2  # (B, N, S): half of each adjacent interval
    return March(depth=depth, opacity=opacity, weights=weights, transmittance=transmittance, midpoints=midpoints,
                 sample_weights=sample_weights)


def weighted_features(sample_weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Sum over samples of weight (B, N, S) x features (B, N, S, F) -> (B, N, F); the samples' order is irrelevant.

    In the weights' dtype: under autocast the decoder's features may come in a lower precision
    than the weights (float32 from ``march``), and einsum does not cast them itself.
    """
    return torch.einsum("...s,...sf->...f", sample_weights, features.to(sample_weights.dtype))


def composite(
    features: torch.Tensor,
    density_raw: torch.Tensor,
    depths: torch.Tensor,
    *,
    density_bias: float,
    white_background: bool = False,
) -> Composite:
    """Features (B, N, S, F), raw densities (B, N, S) and sorted depths (B, N, S) -> Composite."""
    m = march(density_raw, depths, density_bias=density_bias)
    out = weighted_features(m.sample_weights, features)  # (B, N, F)
    if white_background:
        out = out + (1 - m.opacity)[..., None]
    return Composite(features=out, depth=m.depth, opacity=m.opacity, weights=m.weights, transmittance=m.transmittance,
                     midpoints=m.midpoints)
