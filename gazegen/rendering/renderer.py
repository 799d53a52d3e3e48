"""EG3D's importance renderer as functions: cameras + a radiance field -> feature image, RGB, depth, alpha.

For every pixel ray (rays.py) of each camera:

  1. coarse: ``samples_coarse`` stratified depths in [ray_start, ray_end] (ray_sampler.py), the
     field evaluated there, composited (compositing.py) to get interval weights;
  2. empty space: a ray whose coarse opacity is at most ``cfg.empty_opacity`` keeps its coarse
     composite as its result; it gets no fine samples and is not composited again;
  3. fine: for every other ray, ``samples_fine`` depths drawn from the smoothed coarse weights
     by inverse CDF, without gradient, and the field evaluated there;
  4. the coarse and fine samples, each already sorted, merged by depth (no general sort) and
     composited again.

With ``empty_opacity = 0`` every ray with any coarse opacity is refined, as in EG3D. A skipped ray
misses at most what its fine samples would have found between coarse samples: on a field that
is smooth at the coarse spacing its features and alpha move by about its (negligible) opacity,
its depth (the expected stopping distance of a ray that hardly stops) is the coarse estimate.

A field is any callable from world points (B, N, 3) to ``FieldOutput``; ``TriplaneField`` is
the one the network uses (PlaneTexels.mean_at + TriplaneDecoder.decode: the planes are read once
per point, their mean formed in the same pass; a model with pixel-aligned source features adds its
per-point term to that mean), tests inject analytic ones.

A triplane field is empty outside its planes' cube, as a scene box is in nerfstudio: the cube of
the planes' outermost texel centres (``box_warp`` or the mean planes' extent, less half a texel on
each side), beyond which a bilinear read blends in the zero padding. There a point is off one or
two planes and reads (partly) zeros from them but the full value of the other: beyond x =
+-box_warp/2 the side plane ZY still gives the face's profile at (z, y), a third of the sum the
decoder was trained on. The ray range reaches past the cube (EG3D's [2.25, 3.3] at radius 2.7),
so those partial sums rendered: the demo model, turned 20 degrees from its source, drew specks
at |x| = 0.68...0.69 and z = -0.74 (its mean planes reach +-0.69) in 24 of 72 views each way
(benchmarks/specks.py).
The decoder's features are kept; only the density is set empty.

Outputs (``RenderOutput``):
  features  (B, F, R, R)  composited features mapped to [-1, 1] as ``2 * x - 1`` on every
                          channel (EG3D), background included; channels-last in memory
                          (the rays' own order, no copy; what the super-resolution's convs want);
  rgb       (B, 3, R, R)  the first 3 channels of ``features``;
  depth     (B, 1, R, R)  z-depth along the camera's optical axis, world units
                          (expected distance along the ray times ``z_per_t``);
  alpha     (B, 1, R, R)  opacity, the sum of the weights along the ray, in [0, 1].

Without autograd, rays are processed in chunks of at most ``cfg.chunk_rays`` rays in all
(``chunk_rays // B`` per camera, at least 1): a bound on memory (inference at 512 px), and
``TriplaneField`` reads and decodes a chunk's points ``cfg.block_points`` at a time, so that a
block's texel taps, plane mean and 64-wide hidden layer stay in the core's cache (base, one CPU
thread: 8192 points measured fastest among 4096-16384 and the whole chunk, ~5% over the latter). Under autograd every chunk's graph would be kept
anyway, and many small chunks measured slower (demo training step: 0.61 steps/s at 1024 rays,
0.70 in one chunk), so all rays go at once, as in EG3D. All random numbers (stratified jitter and the fine pass's CDF levels) are drawn for all
rays before chunking, and the empty-space test is per ray, so chunking never changes the result;
with ``training=False`` rendering is deterministic: rendering B cameras at once equals rendering
them one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from gazegen.config import RenderConfig
from gazegen.rendering.compositing import March, march, weighted_features
from gazegen.rendering.decoder import FieldOutput, TriplaneDecoder
from gazegen.rendering.ray_sampler import importance_depths, merge_order, sample_offsets, stratified_depths
from gazegen.rendering.rays import Rays, camera_rays
from gazegen.rendering.triplane import PlaneTexels

EMPTY_RAW = -1e4  # raw density of a point outside the planes' cube: softplus(EMPTY_RAW + bias) is exactly 0 in float32
Field = Callable[[torch.Tensor], FieldOutput]  # world points (B, N, 3) -> FieldOutput (B, N, F) / (B, N, 1)
PointTerm = Callable[[torch.Tensor], torch.Tensor]  # world points (B, N, 3) -> (B, N, C) added to the plane features


@dataclass(frozen=True)
class TriplaneField:
    """A triplane read by the decoder: points (B, N, 3) -> FieldOutput. Planes of batch 1 serve any B."""

    texels: PlaneTexels  # the planes (B or 1, 3, C, P, P), channel-last
    decoder: TriplaneDecoder
    point_term: PointTerm | None = None  # added to the planes' mean before the decoder (models/pixel_features.py)
    block_points: int = 0  # without autograd, points read and decoded at a time (RenderConfig.block_points; 0: all)
    half_side: float | None = None  # the field's domain, world units: points beyond are empty (None: texels.half_side)

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        b, n, _ = points.shape
        step = max(1, self.block_points // b) if self.block_points > 0 and not torch.is_grad_enabled() else n
        if step >= n:
            return self._read(points)
        first = self._read(points[:, :step])
        features = first.features.new_empty(b, n, first.features.shape[-1])  # (B, N, F)
        density_raw = first.density_raw.new_empty(b, n, 1)  # (B, N, 1)
        features[:, :step], density_raw[:, :step] = first.features, first.density_raw
        for lo in range(step, n, step):
            block = self._read(points[:, lo : lo + step])
            features[:, lo : lo + step], density_raw[:, lo : lo + step] = block.features, block.density_raw
        return FieldOutput(features=features, density_raw=density_raw)

    def _read(self, points: torch.Tensor) -> FieldOutput:
        """Points (B, n, 3) -> FieldOutput, all at once; no density outside the planes' cube."""
        features = self.texels.mean_at(points)  # (B, n, C) mean plane features
        if self.point_term is not None:
            features = features + self.point_term(points)
        out = self.decoder.decode(features)
        half_side = self.texels.half_side if self.half_side is None else self.half_side
        outside = points.abs().amax(-1, keepdim=True) > half_side  # (B, n, 1): its largest |coordinate| beyond
        return FieldOutput(features=out.features, density_raw=out.density_raw.masked_fill(outside, EMPTY_RAW))


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


@dataclass(frozen=True)
class _RayResult:
    """What the renderer keeps of each ray (its intervals only when asked for)."""

    features: torch.Tensor  # (B, n, F) composited features, background included
    depth: torch.Tensor  # (B, n) distance along the ray
    opacity: torch.Tensor  # (B, n)
    weights: torch.Tensor | None = None  # (B, n, K) interval weights
    midpoints: torch.Tensor | None = None  # (B, n, K) their midpoints


def _rows(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Rays ``index`` (B, k) of x (B, n, ...) -> (B, k, ...); all of them when ``index`` is None."""
    return x if index is None else x.gather(1, _expand_index(index, x))


def _expand_index(index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Ray indices (B, k) expanded over the trailing dimensions of x (B, n, ...)."""
    return index.reshape(*index.shape, *[1] * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])


def _put_rows(whole: torch.Tensor, index: torch.Tensor | None, use: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """``whole`` (B, n, ...) with its rays ``index`` (B, k) replaced by ``part`` (B, k, ...) where ``use`` (B, k) holds.

    ``index`` None: ``part`` holds every ray (and ``use`` is all true).
    """
    if index is None:
        return part
    keep = use.reshape(*use.shape, *[1] * (whole.ndim - 2))
    return whole.scatter(1, _expand_index(index, whole), torch.where(keep, part, _rows(whole, index)))


def _padded_intervals(m: March, intervals: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A march's interval weights and midpoints (B, n, K) padded to ``intervals``: zero weight at its last midpoint."""
    extra = intervals - m.weights.shape[-1]
    last = m.midpoints[..., -1:]
    return F.pad(m.weights, (0, extra)), torch.cat([m.midpoints, last.expand(*last.shape[:-1], extra)], -1)


def _render_rays(
    field: Field, rays: Rays, coarse_offsets: torch.Tensor, fine_offsets: torch.Tensor, cfg: RenderConfig,
    keep_intervals: bool,
) -> _RayResult:
    """Coarse pass, fine pass on the rays that are not empty, merged union and compositing for rays (B, n).

    Features are weighed where they were computed (coarse samples of every ray, fine samples of
    the refined rays): only the per-sample weights travel between the merged order and the
    samples' own, never the (B, n, S+M, F) features.
    """
    depths = stratified_depths(cfg.ray_start, cfg.ray_end, coarse_offsets)  # (B, n, S)
    coarse = _evaluate(field, rays, depths)  # (B, n, S, F), (B, n, S)
    first = march(coarse.density_raw, depths, density_bias=cfg.density_bias)  # every ray's result if it is empty
    s, m = depths.shape[-1], fine_offsets.shape[-1]
    coarse_weights, depth, opacity = first.sample_weights, first.depth, first.opacity  # (B, n, S), (B, n), (B, n)
    weights, midpoints = _padded_intervals(first, s + m - 1) if keep_intervals else (None, None)
    refine = first.opacity.detach() > cfg.empty_opacity  # (B, n)
    k = int(refine.sum(1).max()) if m > 0 else 0
    if k == refine.shape[1]:  # every ray refined: no selection
        index, use = None, refine
    elif k > 0:
        index = torch.argsort((~refine).to(torch.uint8), dim=1, stable=True)[:, :k]  # (B, k) rays to refine first
        use = _rows(refine, index)  # (B, k) False: padding, a camera with fewer rays to refine than k
    if k > 0:
        sub_depths = _rows(depths, index)  # (B, k, S)
        with torch.no_grad():  # the fine depths carry no gradient (EG3D, NeRF)
            fine_depths = importance_depths(sub_depths, _rows(first.weights, index), _rows(fine_offsets, index))
            order = merge_order(sub_depths, fine_depths)  # (B, k, S+M): both sorted, merged without a sort
        sub_rays = Rays(origins=_rows(rays.origins, index), directions=_rows(rays.directions, index),
                        z_per_t=_rows(rays.z_per_t, index))
        fine = _evaluate(field, sub_rays, fine_depths)  # (B, k, M, F), (B, k, M)
        raw = torch.cat([_rows(coarse.density_raw, index), fine.density_raw], -1).gather(-1, order)  # (B, k, S+M)
        second = march(raw, torch.cat([sub_depths, fine_depths], -1).gather(-1, order), density_bias=cfg.density_bias)
        own_order = torch.zeros_like(second.sample_weights).scatter(-1, order, second.sample_weights)  # coarse | fine
        sub_coarse_weights, fine_weights = own_order.split([s, m], -1)  # (B, k, S), (B, k, M)
        coarse_weights = _put_rows(coarse_weights, index, use, sub_coarse_weights)
        depth, opacity = _put_rows(depth, index, use, second.depth), _put_rows(opacity, index, use, second.opacity)
        if keep_intervals:
            weights = _put_rows(weights, index, use, second.weights)
            midpoints = _put_rows(midpoints, index, use, second.midpoints)
    features = weighted_features(coarse_weights, coarse.features)  # (B, n, F)
    if k > 0:
        fine_features = weighted_features(torch.where(use[..., None], fine_weights, 0.0), fine.features)  # (B, k, F)
        features = features + fine_features if index is None else features.scatter_add(
            1, _expand_index(index, features), fine_features)
    if cfg.white_background:
        features = features + (1 - opacity)[..., None]
    return _RayResult(features=features, depth=depth, opacity=opacity, weights=weights, midpoints=midpoints)


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

    step = n_rays if torch.is_grad_enabled() else max(1, cfg.chunk_rays // b)  # autograd keeps every chunk anyway
    chunks = []
    for lo in range(0, n_rays, step):
        part = slice(lo, lo + step)
        chunk = Rays(origins=rays.origins[:, part], directions=rays.directions[:, part], z_per_t=rays.z_per_t[:, part])
        chunks.append(_render_rays(field, chunk, coarse_offsets[:, part], fine_offsets[:, part], cfg, return_weights))

    features = torch.cat([c.features for c in chunks], 1)  # (B, R*R, F)
    depth = torch.cat([c.depth for c in chunks], 1) * rays.z_per_t[..., 0]  # (B, R*R) z-depth
    opacity = torch.cat([c.opacity for c in chunks], 1)  # (B, R*R)
    image = (2 * features - 1).reshape(b, res, res, -1).permute(0, 3, 1, 2)  # (B, R*R, F) -> (B, F, R, R), channels-last
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
    point_term: PointTerm | None = None,
    half_side: float | None = None,
) -> RenderOutput:
    """Render triplanes (B or 1, 3, C, P, P) through ``decoder`` for cameras (B, 25).

    A triplane of batch 1 is shared by all B cameras (one face, many views) without copying.
    ``eg3d_compatible`` reads the planes with EG3D's projection (triplane.py) for weights trained
    with it (EG3D, Live3D). ``training`` jitters the samples with ``generator``. ``point_term``
    adds a per-point feature to the planes' mean (the source's pixels, models/pixel_features.py).
    ``half_side``: the field is empty beyond the cube [-half_side, half_side]^3 (default: the planes'
    outermost texel centres, ``PlaneTexels.half_side``).
    """
    texels = PlaneTexels.from_planes(planes, cfg.box_warp, eg3d_compatible)
    field = TriplaneField(texels=texels, decoder=decoder, point_term=point_term, block_points=cfg.block_points,
                          half_side=half_side)
    return render_field(
        field, cameras, cfg, resolution=resolution, generator=generator, training=training, return_weights=return_weights
    )
