"""EG3D's importance renderer as functions: cameras + a radiance field -> feature image, RGB, depth, alpha.

For every pixel ray (rays.py) of each camera:

  1. coarse: ``samples_coarse`` stratified depths in [ray_start, ray_end] (ray_sampler.py), the
     field evaluated there, composited (compositing.py) to get interval weights;
  2. fine: ``samples_fine`` depths drawn from the smoothed coarse weights by inverse CDF, without
     gradient, and the field evaluated there;
  3. the union of coarse and fine samples sorted by depth and composited again.

A field is any callable from world points (B, N, 3) to ``FieldOutput``; ``TriplaneField`` is
the one the network uses (sample_planes + TriplaneDecoder), tests inject analytic ones.

Outputs (``RenderOutput``):
  features  (B, F, R, R)  composited features mapped to [-1, 1] as ``2 * x - 1`` on every
                          channel (EG3D), background included;
  rgb       (B, 3, R, R)  the first 3 channels of ``features``;
  depth     (B, 1, R, R)  z-depth along the camera's optical axis, world units
                          (expected distance along the ray times ``z_per_t``);
  alpha     (B, 1, R, R)  opacity, the sum of the weights along the ray, in [0, 1].

Rays are processed in chunks of at most ``cfg.chunk_rays`` rays in all (``chunk_rays // B``
per camera, at least 1), which bounds memory without autograd (inference at 512 px); under
autograd every chunk's graph is kept, as in EG3D. All random numbers (stratified jitter and the
fine pass's CDF levels) are drawn for all rays before chunking, so chunking never changes the
result, and with ``training=False`` rendering is deterministic: rendering B cameras at once equals
rendering them one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gazegen.config import RenderConfig
from gazegen.rendering.compositing import Composite, composite
from gazegen.rendering.decoder import FieldOutput, TriplaneDecoder
from gazegen.rendering.ray_sampler import importance_depths, sample_offsets, stratified_depths
from gazegen.rendering.rays import Rays, camera_rays
from gazegen.rendering.triplane import sample_planes

Field = Callable[[torch.Tensor], FieldOutput]  # world points (B, N, 3) -> FieldOutput (B, N, F) / (B, N, 1)


@dataclass(frozen=True)
class TriplaneField:
    """A triplane read by the decoder: points (B, N, 3) -> FieldOutput. Planes of batch 1 serve any B."""

    planes: torch.Tensor  # (B or 1, 3, C, P, P)
    decoder: TriplaneDecoder
    box_warp: float
    eg3d_compatible: bool = False  # read plane 2 as EG3D does (ZX): for EG3D / Live3D weights

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        return self.decoder(sample_planes(self.planes, points, self.box_warp, eg3d_compatible=self.eg3d_compatible))


@dataclass(frozen=True)
class RenderOutput:
    """The neural rendering of B cameras at R x R pixels."""

    features: torch.Tensor  # (B, F, R, R) in about [-1, 1]: 2 * composited feature - 1
    rgb: torch.Tensor  # (B, 3, R, R) features[:, :3]
    depth: torch.Tensor  # (B, 1, R, R) z-depth along the camera axis, world units
    alpha: torch.Tensor  # (B, 1, R, R) opacity in [0, 1]
    weights: torch.Tensor | None = None  # (B, R*R, K) final interval weights, rays row-major (return_weights)
    sample_depths: torch.Tensor | None = None  # (B, R*R, K) their midpoints, distance along the ray


def _evaluate(field: Field, rays: Rays, depths: torch.Tensor) -> FieldOutput:
    """The field at depths (B, n, S) along rays (B, n) -> features (B, n, S, F), raw density (B, n, S)."""
    b, n, s = depths.shape
    points = rays.origins[:, :, None, :] + depths[..., None] * rays.directions[:, :, None, :]  # (B, n, S, 3)
    out = field(points.reshape(b, n * s, 3))  # (B, n*S, F), (B, n*S, 1)
    return FieldOutput(features=out.features.reshape(b, n, s, -1), density_raw=out.density_raw.reshape(b, n, s))


def _render_rays(
    field: Field, rays: Rays, coarse_offsets: torch.Tensor, fine_offsets: torch.Tensor, cfg: RenderConfig
) -> Composite:
    """Coarse pass, fine pass, sorted union and compositing for one chunk of rays (B, n)."""
    depths = stratified_depths(cfg.ray_start, cfg.ray_end, coarse_offsets)  # (B, n, S)
    coarse = _evaluate(field, rays, depths)
    features, raw = coarse.features, coarse.density_raw  # (B, n, S, F), (B, n, S)
    if fine_offsets.shape[-1] > 0:
        with torch.no_grad():  # the fine depths carry no gradient (EG3D, NeRF)
            weights = composite(features, raw, depths, density_bias=cfg.density_bias).weights  # (B, n, S-1)
            fine_depths = importance_depths(depths, weights, fine_offsets)  # (B, n, M)
        fine = _evaluate(field, rays, fine_depths)
        depths, order = torch.sort(torch.cat([depths, fine_depths], -1), -1)  # (B, n, S+M)
        raw = torch.cat([raw, fine.density_raw], -1).gather(-1, order)  # (B, n, S+M)
        features = torch.cat([features, fine.features], -2)  # (B, n, S+M, F)
        features = features.gather(-2, order[..., None].expand_as(features))
    return composite(features, raw, depths, density_bias=cfg.density_bias, white_background=cfg.white_background)


def render_field(
    field: Field,
    cameras: torch.Tensor,
    cfg: RenderConfig,
    *,
    resolution: int | None = None,
    generator: torch.Generator | None = None,
    training: bool = False,
    return_weights: bool = False,
) -> RenderOutput:
    """Render any field seen by cameras (B, 25) at ``resolution`` (default cfg.neural_resolution) pixels."""
    if cfg.samples_coarse < 2:
        raise ValueError(f"samples_coarse must be at least 2 to form an interval, got {cfg.samples_coarse}")
    res = cfg.neural_resolution if resolution is None else resolution
    b = cameras.shape[0]
    rays = camera_rays(cameras, res)  # (B, R*R, 3) origins and directions, (B, R*R, 1) z_per_t
    n_rays = res * res
    # every random number up front, in a fixed order, so chunking never changes the samples
    offsets = sample_offsets(
        (b, n_rays, cfg.samples_coarse + cfg.samples_fine), training=training, generator=generator,
        device=cameras.device, dtype=cameras.dtype,
    )  # (B, R*R, S + M)
    coarse_offsets, fine_offsets = offsets.split([cfg.samples_coarse, cfg.samples_fine], -1)  # (B, R*R, S), (B, R*R, M)

    step = max(1, cfg.chunk_rays // b)
    chunks = []
    for lo in range(0, n_rays, step):
        part = slice(lo, lo + step)
        chunk = Rays(origins=rays.origins[:, part], directions=rays.directions[:, part], z_per_t=rays.z_per_t[:, part])
        chunks.append(_render_rays(field, chunk, coarse_offsets[:, part], fine_offsets[:, part], cfg))

    features = torch.cat([c.features for c in chunks], 1)  # (B, R*R, F)
    depth = torch.cat([c.depth for c in chunks], 1) * rays.z_per_t[..., 0]  # (B, R*R) z-depth
    opacity = torch.cat([c.opacity for c in chunks], 1)  # (B, R*R)
    image = (2 * features - 1).permute(0, 2, 1).reshape(b, -1, res, res)  # (B, R*R, F) -> (B, F, R, R)
    return RenderOutput(
        features=image,
        rgb=image[:, :3],
        depth=depth.reshape(b, 1, res, res),  # (B, R*R) -> (B, 1, R, R), rows first
        alpha=opacity.reshape(b, 1, res, res),
        weights=torch.cat([c.weights for c in chunks], 1) if return_weights else None,  # (B, R*R, K)
        sample_depths=torch.cat([c.midpoints for c in chunks], 1) if return_weights else None,
    )


def render_triplane(
    planes: torch.Tensor,
    decoder: TriplaneDecoder,
    cameras: torch.Tensor,
    cfg: RenderConfig,
    *,
    resolution: int | None = None,
    generator: torch.Generator | None = None,
    training: bool = False,
    eg3d_compatible: bool = False,
    return_weights: bool = False,
) -> RenderOutput:
    """Render triplanes (B or 1, 3, C, P, P) through ``decoder`` for cameras (B, 25).

    A triplane of batch 1 is shared by all B cameras (one face, many views) without copying.
    ``eg3d_compatible`` reads the planes with EG3D's projection (triplane.py) for weights trained
    with it (EG3D, Live3D). ``training`` jitters the samples with ``generator``.
    """
    field = TriplaneField(planes=planes, decoder=decoder, box_warp=cfg.box_warp, eg3d_compatible=eg3d_compatible)
    return render_field(
        field, cameras, cfg, resolution=resolution, generator=generator, training=training, return_weights=return_weights
    )
