"""The EG3D-style renderer (gazegen/rendering/) against closed forms: analytic fields, known points, exact sums."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from gazegen import geometry as g
from gazegen.config import NormalisationConfig, RenderConfig
from gazegen.rendering.compositing import composite, density_activation, weighted_features
from gazegen.rendering.decoder import SOFTPLUS_CLAMP, FieldOutput, TriplaneDecoder, softplus_
from gazegen.rendering.ray_sampler import importance_depths, merge_order, sample_pdf, smooth_weights, stratified_depths
from gazegen.rendering.rays import camera_rays
from gazegen.rendering.renderer import render_field, render_triplane
from gazegen.rendering.triplane import (EG3D_PLANE_AXES, PLANE_AXES, X, Y, Z, PlaneTexels, project_to_planes,
                                       sample_planes)

NORM = NormalisationConfig()  # camera 2.7 world units from the origin, focal 1600 / 512 px
SOLID, EMPTY = 1e4, -100.0  # raw densities: opaque within any sample spacing; softplus(-101) ~ 1e-44


def cameras(poses: list[tuple[float, float]], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, 25) cameras looking at the origin from head poses (pitch, yaw)."""
    return g.head_pose_to_camera(torch.tensor(poses, dtype=dtype), NORM)


def raw_for_sigma(sigma: float, bias: float) -> float:
    """The raw density whose activation softplus(raw + bias) is sigma."""
    return math.log(math.expm1(sigma)) - bias


def constant_features(points: torch.Tensor, value: float = 0.75, channels: int = 4) -> torch.Tensor:
    return torch.full((*points.shape[:-1], channels), value, dtype=points.dtype)


def sphere_field(radius: float):
    def field(points: torch.Tensor) -> FieldOutput:  # (B, N, 3)
        inside = points.norm(dim=-1, keepdim=True) < radius  # (B, N, 1)
        raw = torch.where(inside, SOLID, EMPTY).to(points.dtype)
        return FieldOutput(features=constant_features(points), density_raw=raw)

    return field


def halfspace_field(normal: torch.Tensor):
    """Solid where normal . p < 0: the plane through the origin with that normal."""

    def field(points: torch.Tensor) -> FieldOutput:
        raw = torch.where((points @ normal)[..., None] < 0, SOLID, EMPTY).to(points.dtype)
        return FieldOutput(features=constant_features(points), density_raw=raw)

    return field


def uniform_field(raw: float):
    def field(points: torch.Tensor) -> FieldOutput:
        return FieldOutput(features=constant_features(points), density_raw=torch.full_like(points[..., :1], raw))

    return field


# --------------------------------------------------------------------------- triplane sampling


def linear_planes(size: int, coefficients: list[tuple[float, float, float]]) -> torch.Tensor:
    """(1, 3, 1, P, P) planes whose plane k holds a*u + b*v + c at each texel centre (u: column, v: row)."""
    centres = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1  # grid coordinate of texel centres
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # (P, P): rows are v, columns are u
    planes = torch.stack([a * u + b * v + c for a, b, c in coefficients])  # (3, P, P)
    return planes[None, :, None]


COEFFICIENTS = [(1.0, 10.0, 100.0), (2.0, 20.0, 200.0), (3.0, 30.0, 300.0)]


@pytest.mark.parametrize("eg3d_compatible", [False, True])
def test_planes_read_a_known_point_exactly(eg3d_compatible):
    box_warp = 0.8
    planes = linear_planes(8, COEFFICIENTS)
    point = torch.tensor([[[0.1, 0.2, -0.15]]], dtype=torch.float64)  # grid coordinates (0.25, 0.5, -0.375)
    qx, qy, qz = 0.25, 0.5, -0.375
    out = sample_planes(planes, point, box_warp, eg3d_compatible=eg3d_compatible)[0, :, 0, 0]  # (3,)
    third = (3 * qz + 30 * qx + 300) if eg3d_compatible else (3 * qz + 30 * qy + 300)  # ZX (EG3D) or ZY
    expected = [1 * qx + 10 * qy + 100, 2 * qx + 20 * qz + 200, third]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_planes_linear_everywhere_inside_and_zero_outside():
    size, box_warp = 8, 1.3
    planes = linear_planes(size, COEFFICIENTS)
    q = (torch.rand(1, 500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * (1 - 1 / size)
    out = sample_planes(planes, q * box_warp / 2, box_warp)[0, :, :, 0]  # (3, N)
    for k, ((a, b, c), (u, v)) in enumerate(zip(COEFFICIENTS, PLANE_AXES)):
        np.testing.assert_allclose(out[k].numpy(), (a * q[0, :, u] + b * q[0, :, v] + c).numpy(), atol=1e-10)
    far = torch.tensor([[[0.0, 0.0, 1.0 + 1.0 / size + 1e-6], [-2.0, 2.5, 3.0]]], dtype=torch.float64)
    outside = sample_planes(planes, far * box_warp / 2, box_warp)  # beyond the half-texel border: zeros
    assert outside[0, [1, 2], 0].abs().max() == 0 and outside[0, :, 1].abs().max() == 0
    assert outside[0, 0, 0, 0] != 0  # plane 0 (XY) does not see z: the first point is inside it


def test_eg3d_axes_match_eg3d_plane_matrices():
    """EG3D projects with inv(M_k) for M_0 = I, M_1 = [[1,0,0],[0,0,1],[0,1,0]], M_2 = [[0,0,1],[1,0,0],[0,1,0]]."""
    matrices = torch.tensor(
        [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]],
        dtype=torch.float64,
    )
    points = torch.randn(2, 50, 3, dtype=torch.float64)
    eg3d = torch.stack([(points @ torch.linalg.inv(m))[..., :2] for m in matrices], 1)  # (B, 3, N, 2)
    torch.testing.assert_close(project_to_planes(points, 2.0, eg3d_compatible=True), eg3d, rtol=0, atol=1e-12)
    assert EG3D_PLANE_AXES[2] == (Z, X) and PLANE_AXES == ((X, Y), (X, Z), (Z, Y))
    assert {frozenset(p) for p in PLANE_AXES} == {frozenset((X, Y)), frozenset((X, Z)), frozenset((Y, Z))}


def test_planes_batch_pairs_and_broadcast():
    gen = torch.Generator().manual_seed(1)
    planes = torch.randn(2, 3, 5, 6, 6, generator=gen)
    points = torch.rand(2, 40, 3, generator=gen) - 0.5
    both = sample_planes(planes, points, 1.0)  # (2, 3, 40, 5)
    for i in range(2):
        torch.testing.assert_close(both[i : i + 1], sample_planes(planes[i : i + 1], points[i : i + 1], 1.0), rtol=0, atol=0)
    shared = sample_planes(planes[:1], points, 1.0)  # one triplane, two point sets
    torch.testing.assert_close(shared, sample_planes(planes[:1].expand(2, -1, -1, -1, -1), points, 1.0), rtol=0, atol=0)


@pytest.mark.parametrize("top", [SOFTPLUS_CLAMP, 1000.0])  # 1000: beyond the clamp (the clamped path)
def test_softplus_in_place_equals_the_closed_form(top):
    """softplus_ against numpy's log(1 + e^x) (np.logaddexp(0, x)), in float64 and float32, up to and beyond its clamp."""
    x = np.concatenate([np.linspace(-60.0, top, 20001), [0.0, top]])
    exact = np.logaddexp(0.0, x)  # (M,)
    for dtype, atol, rtol in ((torch.float64, 1e-15, 1e-15), (torch.float32, 1.2e-7, 1.2e-7)):
        got = softplus_(torch.tensor(x, dtype=dtype)).double().numpy()
        np.testing.assert_allclose(got, exact, rtol=rtol, atol=atol)
    assert exact.max() > (900 if top > SOFTPLUS_CLAMP else 79)  # the clamp's side is exercised beyond it


def test_softplus_in_place_keeps_a_nan():
    x = torch.tensor([0.0, float("nan"), 1.0])
    assert torch.isnan(softplus_(x)[1]) and torch.isfinite(x[[0, 2]]).all()


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: the first layer's outputs exceed SOFTPLUS_CLAMP (clamped path)
def test_decoder_without_autograd_equals_the_module(scale):
    """decode's in-place path (no autograd) against running ``net`` under autograd, both in float64."""
    torch.manual_seed(12)
    decoder = TriplaneDecoder(6, 9, 4).double()
    mean = torch.randn(2, 50, 6, dtype=torch.float64) * scale
    with torch.no_grad():
        assert bool(decoder.net[0](mean).max() <= SOFTPLUS_CLAMP) == (scale == 1.0)
        fast = decoder.decode(mean)
    plain = decoder.decode(mean.clone().requires_grad_(True))  # grad enabled: the module as written
    with torch.no_grad():
        hidden_max = decoder.net[0](mean).max()
    # torch's softplus returns x itself above 20, off by log(1 + e^-x) <= e^-20 = 2.1e-9 (softplus_ is not)
    atol = 1e-13 if hidden_max < 20 else 1e-9
    assert (hidden_max < 20) == (scale == 1.0)
    torch.testing.assert_close(fast.features, plain.features.detach(), rtol=0, atol=atol)
    torch.testing.assert_close(fast.density_raw, plain.density_raw.detach(), rtol=0, atol=atol * 10)
    assert fast.features.shape == (2, 50, 4) and fast.density_raw.shape == (2, 50, 1)


def test_decoder_gradients_match_finite_differences():
    """decode under autograd (features sliced after the sigmoid) against finite differences, float64."""
    torch.manual_seed(13)
    decoder = TriplaneDecoder(4, 6, 3).double()
    mean = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)

    def outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = decoder.decode(x)
        return out.features, out.density_raw

    assert torch.autograd.gradcheck(outputs, (mean,), eps=1e-6, atol=1e-8)


def test_decoder_names_and_formula():
    torch.manual_seed(0)
    decoder = TriplaneDecoder(in_channels=6, hidden=8, feature_channels=5)
    assert {k: tuple(v.shape) for k, v in decoder.state_dict().items()} == {
        "net.0.weight": (8, 6),
        "net.0.bias": (8,),
        "net.2.weight": (6, 8),
        "net.2.bias": (6,),
    }
    x = torch.randn(2, 3, 7, 6)
    out = decoder(x)
    h = torch.nn.functional.softplus(x.mean(1) @ decoder.net[0].weight.T + decoder.net[0].bias)
    y = h @ decoder.net[2].weight.T + decoder.net[2].bias  # (2, 7, 6)
    torch.testing.assert_close(out.density_raw, y[..., :1])
    torch.testing.assert_close(out.features, torch.sigmoid(y[..., 1:]) * 1.002 - 0.001)
    torch.testing.assert_close(decoder(x[:, [2, 0, 1]]).features, out.features)  # mean: plane order is irrelevant
    assert TriplaneDecoder.from_config(RenderConfig(plane_channels=6)).net[2].out_features == 33


# --------------------------------------------------------------------------- rays


def test_rays_agree_with_project():
    res = 24
    cams = cameras([(0.0, 0.0), (0.3, -0.4), (-0.2, 0.6)])
    rays = camera_rays(cams, res)  # (B, R*R, 3)
    # a point on the ray of pixel (i, j) projects to its centre (j + 0.5, i + 0.5)
    uv = g.project(rays.origins + 2.6 * rays.directions, cams, res)  # (B, R*R, 2)
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    centres = torch.stack([j, i], -1).reshape(1, -1, 2).double() + 0.5
    torch.testing.assert_close(uv, centres.expand_as(uv), rtol=0, atol=1e-9)
    # a world point lies within half a pixel diagonal of the ray of the pixel it projects into
    points = (torch.rand(3, 200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 0.5) * 0.4
    uv = g.project(points, cams, res)
    assert ((uv >= 0) & (uv < res)).all()  # all in view
    index = uv[..., 1].floor().long() * res + uv[..., 0].floor().long()  # (B, N) row-major ray index
    o = rays.origins.gather(1, index[..., None].expand(-1, -1, 3))
    d = rays.directions.gather(1, index[..., None].expand(-1, -1, 3))
    distance = torch.linalg.cross(points - o, d).norm(dim=-1)
    z = g.world_to_camera_points(points, cams)[..., 2]
    pixel = z / (NORM.focal / NORM.resolution * res)  # world size of a pixel at depth z
    assert (distance <= pixel * math.sqrt(0.5) + 1e-12).all()
    assert distance.max() > 0.3 * pixel.max()  # not trivially zero: points are off the centres


# --------------------------------------------------------------------------- compositing


def test_uniform_density_closed_forms():
    sigma, near, far, bias = 1.7, 2.25, 3.3, -1.0
    gen = torch.Generator().manual_seed(3)
    inner = torch.sort(torch.rand(2, 3, 30, dtype=torch.float64, generator=gen) * (far - near) + near, -1).values
    ends = torch.ones(2, 3, 1, dtype=torch.float64)
    depths = torch.cat([near * ends, inner, far * ends], -1)  # (2, 3, 32) from near to far, uneven spacing
    raw = torch.full_like(depths, raw_for_sigma(sigma, bias))
    features = torch.full((*depths.shape, 2), 0.6, dtype=torch.float64)
    out = composite(features, raw, depths, density_bias=bias)
    torch.testing.assert_close(density_activation(raw, bias), torch.full_like(raw, sigma), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.transmittance, torch.exp(-sigma * (depths[..., :-1] - near)), rtol=0, atol=1e-12)
    opacity = 1 - math.exp(-sigma * (far - near))
    torch.testing.assert_close(out.opacity, torch.full_like(out.opacity, opacity), rtol=0, atol=1e-12)
    deltas = depths[..., 1:] - depths[..., :-1]
    weights = torch.exp(-sigma * (depths[..., :-1] - near)) * -torch.expm1(-sigma * deltas)  # T_i * alpha_i
    torch.testing.assert_close(out.weights, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.features, 0.6 * out.opacity[..., None].expand(-1, -1, 2), rtol=0, atol=1e-12)
    white = composite(features, raw, depths, density_bias=bias, white_background=True)
    torch.testing.assert_close(white.features, out.features + 1 - out.opacity[..., None], rtol=0, atol=1e-12)


def test_weighted_features_in_the_weights_dtype():
    """bfloat16 features (a decoder under autocast) are summed in the float32 weights' precision: an exact sum here."""
    weights = torch.tensor([[[0.25, 0.5, 0.125]]])  # (1, 1, 3) float32
    features = torch.tensor([[[[1.0, -2.0], [0.5, 4.0], [8.0, 0.25]]]], dtype=torch.bfloat16)  # (1, 1, 3, 2)
    out = weighted_features(weights, features)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[0.25 + 0.25 + 1.0, -0.5 + 2.0 + 0.03125]]]), rtol=0, atol=0)


def test_uniform_density_expected_depth_continuous_limit():
    """E[t | stop] for constant sigma over [a, a + L]: a + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L))."""
    sigma, near, far, bias = 2.5, 2.25, 3.3, -1.0
    depths = torch.linspace(near, far, 4001, dtype=torch.float64)[None, None]  # (1, 1, S)
    raw = torch.full_like(depths, raw_for_sigma(sigma, bias))
    out = composite(torch.zeros(*depths.shape, 1, dtype=torch.float64), raw, depths, density_bias=bias)
    length = far - near
    expected = near + 1 / sigma - length * math.exp(-sigma * length) / (1 - math.exp(-sigma * length))
    assert abs(out.depth.item() - expected) < 1e-6


# --------------------------------------------------------------------------- ray sampling


def test_stratified_depths_stay_in_their_strata():
    offsets = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.25, 0.999, 0.5]])
    depths = stratified_depths(2.0, 3.0, offsets)
    torch.testing.assert_close(depths, torch.tensor([[2.125, 2.375, 2.625, 2.875], [2.0, 2.3125, 2.74975, 2.875]]))


def test_sample_pdf_closed_forms():
    bins = torch.tensor([[0.0, 1.0, 2.0, 4.0]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)  # cdf 0, 0.25, 0.75, 1
    u = torch.tensor([[0.0, 0.125, 0.5, 0.8, 0.999]], dtype=torch.float64)
    expected = torch.tensor([[0.0, 0.5, 1.5, 2.4, 3.992]], dtype=torch.float64)
    torch.testing.assert_close(sample_pdf(bins, weights, u), expected, rtol=0, atol=1e-12)
    # a delta weight puts every sample in its bin, at bin start + u * width
    gen = torch.Generator().manual_seed(4)
    bins = torch.sort(torch.rand(5, 17, dtype=torch.float64, generator=gen), -1).values
    k = torch.tensor([0, 3, 8, 15, 9])
    weights = torch.nn.functional.one_hot(k, 16).double()
    u = torch.rand(5, 64, dtype=torch.float64, generator=gen)
    lo, hi = bins.gather(1, k[:, None]), bins.gather(1, k[:, None] + 1)
    torch.testing.assert_close(sample_pdf(bins, weights, u), lo + u * (hi - lo), rtol=0, atol=1e-12)


def test_importance_samples_follow_smoothed_delta_weight():
    s, m, k, pad = 32, 64, 13, 0.01
    depths = torch.linspace(2.25, 3.3, s, dtype=torch.float64)[None, None]  # (1, 1, S)
    weights = torch.zeros(1, 1, s - 1, dtype=torch.float64)
    weights[..., k] = 0.9
    smoothed = torch.full((s - 1,), pad, dtype=torch.float64)
    smoothed[[k - 1, k, k + 1]] += torch.tensor([0.45, 0.9, 0.45], dtype=torch.float64)  # max-pool 2, mean-pool 2
    torch.testing.assert_close(smooth_weights(weights, pad)[0, 0], smoothed, rtol=0, atol=1e-12)
    fine = importance_depths(depths, weights, torch.full((1, 1, m), 0.5, dtype=torch.float64), padding=pad)[0, 0]
    # with u_j = (j + 0.5) / M, bin i receives exactly the u's between its CDF levels
    cdf = np.concatenate([[0.0], np.cumsum(smoothed.numpy()) / smoothed.sum().item()])
    u = (np.arange(m) + 0.5) / m
    expected = np.histogram(u, bins=cdf)[0]
    counts = np.histogram(fine.numpy(), bins=depths[0, 0].numpy())[0]
    np.testing.assert_array_equal(counts, expected)
    assert counts[k] >= 0.4 * m  # the bin of the delta holds ~ (0.9 + pad) / (1.8 + 31 pad) of the samples
    assert (fine[1:] >= fine[:-1]).all()


# --------------------------------------------------------------------------- analytic scenes


def sphere_hits(cams: torch.Tensor, res: int, radius: float):
    """Ray distance t to the sphere at the origin, the rays' closest approach, and rays."""
    rays = camera_rays(cams, res)
    b = (rays.origins * rays.directions).sum(-1)  # (B, R*R): o . d
    closest = (rays.origins.norm(dim=-1) ** 2 - b**2).clamp_min(0).sqrt()  # distance of the ray from the centre
    t = -b - (radius**2 - closest**2).clamp_min(0).sqrt()
    return t, closest, rays


@pytest.mark.parametrize("samples_fine", [0, 24])
def test_sphere_renders_analytic_depth_and_silhouette(samples_fine):
    res, radius = 32, 0.3
    cfg = RenderConfig(neural_resolution=res, samples_coarse=24, samples_fine=samples_fine, chunk_rays=500)
    cams = cameras([(0.0, 0.0), (0.2, -0.3)])
    out = render_field(sphere_field(radius), cams, cfg)
    t, closest, rays = sphere_hits(cams, res, radius)

    # depth: z of the first hit along the camera axis, both from z_per_t and from world_to_camera_points
    hit_z = g.world_to_camera_points(rays.origins + t[..., None] * rays.directions, cams)[..., 2]  # (B, R*R)
    torch.testing.assert_close(hit_z, t * rays.z_per_t[..., 0], rtol=0, atol=1e-12)
    pixel = 2.7 / (NORM.focal / NORM.resolution * res)  # world size of a pixel at the sphere
    inside = closest < radius - 1.5 * pixel
    spacing = (cfg.ray_end - cfg.ray_start) / cfg.samples_coarse
    error = (out.depth.reshape(2, -1) - hit_z)[inside].abs().max().item()
    assert error <= (spacing / 2 if samples_fine == 0 else spacing / 16), error  # the fine pass beats half a stratum 8x

    # silhouette: the projection of the sphere's tangent circle bounds the opaque disc
    centre = g.project(torch.zeros(2, 1, 3, dtype=torch.float64), cams, res)  # (B, 1, 2)
    position = cams[:, :16].reshape(2, 4, 4)[:, :3, 3]  # (B, 3) camera centres
    dist = position.norm(dim=-1, keepdim=True)
    axis = position / dist
    e1 = torch.linalg.cross(axis, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64).expand(2, 3))
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(axis, e1)
    phi = torch.linspace(0, 2 * math.pi, 64, dtype=torch.float64)[None, :, None]
    ring = radius**2 / dist[:, None] * axis[:, None] + radius * (1 - radius**2 / dist[:, None] ** 2).sqrt() * (
        phi.cos() * e1[:, None] + phi.sin() * e2[:, None]
    )  # (B, 64, 3) points where the view rays graze the sphere
    rho = (g.project(ring, cams, res) - centre).norm(dim=-1)  # (B, 64) the silhouette is a circle
    assert (rho.max(1).values - rho.min(1).values).max() < 1e-9
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    pixels = torch.stack([j, i], -1).reshape(1, -1, 2).double() + 0.5  # (1, R*R, 2) pixel centres (u, v)
    from_centre = (pixels - centre).norm(dim=-1)  # (B, R*R)
    alpha = out.alpha.reshape(2, -1)
    assert (alpha[from_centre < rho[:, :1] - 1] > 1 - 1e-9).all()
    assert (alpha[from_centre > rho[:, :1] + 1] < 1e-9).all()
    assert (from_centre < rho[:, :1] - 1).sum() > 400  # the disc covers a good part of the image
    # features: constant 0.75 inside -> 2 * 0.75 - 1 on the opaque disc, -1 (black) off it
    red = out.rgb.reshape(2, 3, -1)[:, 0]  # (B, R*R)
    assert ((red[from_centre < rho[:, :1] - 1] - 0.5).abs() < 1e-9).all()
    assert ((red[from_centre > rho[:, :1] + 1] + 1.0).abs() < 1e-9).all()


def test_plane_renders_analytic_depth():
    res = 16
    cfg = RenderConfig(neural_resolution=res, samples_coarse=24, samples_fine=24)
    cams = cameras([(0.1, 0.25), (-0.15, -0.1)])
    normal = torch.tensor([0.2, -0.1, 1.0], dtype=torch.float64)
    normal = normal / normal.norm()
    out = render_field(halfspace_field(normal), cams, cfg)
    rays = camera_rays(cams, res)
    t = -(rays.origins @ normal) / (rays.directions @ normal)  # (B, R*R) ray-plane intersection
    spacing = (cfg.ray_end - cfg.ray_start) / cfg.samples_coarse
    assert ((t > cfg.ray_start + spacing) & (t < cfg.ray_end - spacing)).all()  # the plane lies within range
    z = g.world_to_camera_points(rays.origins + t[..., None] * rays.directions, cams)[..., 2]
    assert (out.depth.reshape(2, -1) - z).abs().max() < spacing / 8
    assert (out.alpha > 1 - 1e-9).all()


def test_uniform_density_full_render_and_background():
    sigma, bias, res = 0.8, -1.0, 6
    cfg = RenderConfig(neural_resolution=res, samples_coarse=10, samples_fine=7, density_bias=bias)
    cams = cameras([(0.0, 0.3)])
    out = render_field(uniform_field(raw_for_sigma(sigma, bias)), cams, cfg)
    spacing = (cfg.ray_end - cfg.ray_start) / cfg.samples_coarse  # samples span [near + w/2, far - w/2]
    expected = 1 - math.exp(-sigma * (cfg.ray_end - cfg.ray_start - spacing))
    torch.testing.assert_close(out.alpha, torch.full_like(out.alpha, expected), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.features, torch.full((1, 4, res, res), 2 * 0.75 * expected - 1, dtype=torch.float64))
    empty = uniform_field(EMPTY)
    black = render_field(empty, cams, cfg)
    white = render_field(empty, cams, dataclasses.replace(cfg, white_background=True))
    assert ((black.rgb + 1).abs() < 1e-9).all() and ((white.rgb - 1).abs() < 1e-9).all()
    far_z = (cfg.ray_end - spacing / 2) * camera_rays(cams, res).z_per_t.reshape(1, 1, res, res)  # the last sample
    torch.testing.assert_close(black.depth, far_z, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- triplane renders


def tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    cfg = RenderConfig(
        neural_resolution=10, samples_coarse=8, samples_fine=8, plane_resolution=16, plane_channels=8,
        decoder_hidden=16, feature_channels=6,
    )
    planes = torch.randn(1, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
    decoder = TriplaneDecoder.from_config(cfg)
    return cfg, planes, decoder, cameras([(0.0, 0.0), (0.3, -0.5), (-0.2, 0.4)], torch.float32)


def assert_same_render(a, b, atol=1e-6):
    for name in ("features", "rgb", "depth", "alpha", "weights", "sample_depths"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=atol, msg=name)


def test_many_cameras_equal_one_by_one():
    cfg, planes, decoder, cams = tiny_setup()
    with torch.no_grad():
        together = render_triplane(planes, decoder, cams, cfg, return_weights=True)
        expanded = render_triplane(planes.expand(3, -1, -1, -1, -1), decoder, cams, cfg, return_weights=True)
        alone = [render_triplane(planes, decoder, cams[i : i + 1], cfg, return_weights=True) for i in range(3)]
    assert together.features.shape == (3, 6, 10, 10) and together.depth.shape == (3, 1, 10, 10)
    assert 0.05 < together.alpha.mean() < 0.95  # a non-trivial field
    assert_same_render(together, expanded)
    for i, one in enumerate(alone):
        for name in ("features", "depth", "alpha", "weights"):
            mine = getattr(together, name)[i : i + 1]
            torch.testing.assert_close(mine, getattr(one, name), rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("training", [False, True])
def test_chunked_equals_unchunked(training):
    cfg, planes, decoder, cams = tiny_setup(1)
    small = dataclasses.replace(cfg, chunk_rays=7)  # 2 rays per camera per chunk, 50 chunks
    with torch.no_grad():
        runs = [
            render_triplane(
                planes, decoder, cams, c, training=training, generator=torch.Generator().manual_seed(5), return_weights=True
            )
            for c in (cfg, small)
        ]
    assert_same_render(*runs)


@pytest.mark.parametrize("shared_planes", [True, False])
def test_blocked_field_equals_the_whole(shared_planes):
    """block_points (field read in blocks without autograd) changes nothing, also with a per-point term."""
    cfg, planes, decoder, cams = tiny_setup(8)
    planes, decoder, cams = planes.double(), decoder.double(), cams.double()
    if not shared_planes:
        planes = planes.expand(3, -1, -1, -1, -1) * torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)[:, None, None, None, None]

    def term(points: torch.Tensor) -> torch.Tensor:  # (B, N, 3) -> (B, N, C): a smooth per-point feature
        return torch.sin(3 * points).sum(-1, keepdim=True).expand(-1, -1, cfg.plane_channels)

    with torch.no_grad():
        runs = [render_triplane(planes, decoder, cams, dataclasses.replace(cfg, block_points=k), return_weights=True,
                                point_term=term) for k in (0, 7, 100, 10**6)]
    for run in runs[1:]:
        assert_same_render(runs[0], run, atol=1e-12)
    assert runs[0].features.std() > 0.01 and 0.05 < runs[0].alpha.mean() < 0.95  # a non-trivial field


def test_training_jitters_and_gradients_flow():
    cfg, planes, decoder, cams = tiny_setup(2)
    planes.requires_grad_(True)
    eval_out = render_triplane(planes, decoder, cams, cfg)
    train_out = render_triplane(planes, decoder, cams, cfg, training=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(eval_out.depth, train_out.depth)
    (train_out.features.mean() + train_out.depth.mean()).backward()
    assert torch.isfinite(planes.grad).all() and planes.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())


def test_eg3d_flag_changes_only_the_third_plane():
    cfg, planes, decoder, cams = tiny_setup(3)
    with torch.no_grad():
        default = render_triplane(planes, decoder, cams, cfg)
        eg3d = render_triplane(planes, decoder, cams, cfg, eg3d_compatible=True)
        planes_no_third = planes.clone()
        planes_no_third[:, 2] = 0
        a = render_triplane(planes_no_third, decoder, cams, cfg)
        b = render_triplane(planes_no_third, decoder, cams, cfg, eg3d_compatible=True)
    assert not torch.allclose(default.features, eg3d.features)
    assert_same_render(a, b, atol=0)


# --------------------------------------------------------------------------- fast paths against the plain ones


@pytest.mark.parametrize("texel_rows", [False, True])
@pytest.mark.parametrize("batches", [(1, 1), (1, 3), (3, 3)])
@pytest.mark.parametrize("eg3d_compatible", [False, True])
def test_fused_plane_mean_equals_sampling_then_mean(batches, eg3d_compatible, texel_rows):
    """One weighted texel sum per point equals grid_sample on each plane then the mean, values and plane gradients."""
    bp, b = batches
    gen = torch.Generator().manual_seed(6)
    planes = torch.randn(bp, 3, 5, 12, 12, dtype=torch.float64, generator=gen).requires_grad_(True)
    points = (torch.rand(b, 300, 3, dtype=torch.float64, generator=gen) - 0.5) * 1.2 * 0.9  # some outside the box
    weights = torch.randn(b, 300, 5, dtype=torch.float64, generator=gen)
    plain = sample_planes(planes, points, 0.9, eg3d_compatible=eg3d_compatible).mean(1)  # (B, N, C)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), planes)
    fused = PlaneTexels.from_planes(planes, 0.9, eg3d_compatible, texel_rows=texel_rows).mean_at(points)
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), planes)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=0, atol=1e-12)
    assert (plain == 0).all(-1).any() and plain.abs().max() > 0.5  # points outside read zeros, inside do not


def test_merge_order_equals_a_stable_sort():
    gen = torch.Generator().manual_seed(7)
    first = torch.sort(torch.rand(4, 9, 11, generator=gen), -1).values
    second = torch.sort(torch.cat([torch.rand(4, 9, 6, generator=gen), first[..., 2:5]], -1), -1).values  # with ties
    order = merge_order(first, second)
    union = torch.cat([first, second], -1)
    torch.testing.assert_close(order, torch.sort(union, dim=-1, stable=True).indices, rtol=0, atol=0)
    assert (union.gather(-1, order).diff(dim=-1) >= 0).all()


class CountingField:
    """A field that counts the points it is asked about."""

    def __init__(self, field):
        self.field, self.points = field, 0

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        self.points += points.shape[0] * points.shape[1]
        return self.field(points)


def test_empty_rays_get_no_fine_samples_and_keep_their_coarse_result():
    res, s, m = 24, 16, 24
    cfg = RenderConfig(neural_resolution=res, samples_coarse=s, samples_fine=m, chunk_rays=100)
    cams = cameras([(0.0, 0.0), (0.2, -0.3)])
    counting = CountingField(sphere_field(0.3))
    out = render_field(counting, cams, cfg)
    coarse_only = render_field(sphere_field(0.3), cams, dataclasses.replace(cfg, samples_fine=0))
    empty = coarse_only.alpha <= cfg.empty_opacity  # (B, 1, R, R) rays whose coarse samples find nothing
    assert 0.2 < empty.float().mean() < 0.8
    # every ray is sampled S times, and only the others M more times (per camera: padded to the camera refining most)
    refined = (~empty).reshape(2, -1).sum(1)  # (B,)
    assert counting.points == 2 * res * res * s + 2 * int(refined.max()) * m
    for name in ("features", "alpha", "depth"):
        a, b = getattr(out, name), getattr(coarse_only, name)
        mask = empty.expand_as(a)
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=0, msg=name)
    refine_all = render_field(sphere_field(0.3), cams, dataclasses.replace(cfg, empty_opacity=0.0))
    torch.testing.assert_close(out.features[~empty.expand_as(out.features)],
                               refine_all.features[~empty.expand_as(out.features)], rtol=0, atol=0)
    assert (out.alpha[~empty] > 1 - 1e-9).all()


def test_triplane_render_equals_the_unfused_field_with_gradients():
    """render_triplane (fused plane reads, merged samples) against render_field on sample_planes + decoder."""
    cfg, planes, decoder, cams = tiny_setup(4)
    cfg = dataclasses.replace(cfg, empty_opacity=0.0)  # every ray refined: the same samples as the plain field
    planes = planes.double().requires_grad_(True)
    decoder = decoder.double()

    half = cfg.box_warp / 2 * (1 - 1 / cfg.plane_resolution)  # the outermost texel centres: empty beyond

    def plain(points: torch.Tensor) -> FieldOutput:
        out = decoder(sample_planes(planes, points, cfg.box_warp, eg3d_compatible=True))
        inside = (points.abs() <= half).all(-1, keepdim=True)
        return FieldOutput(features=out.features, density_raw=torch.where(inside, out.density_raw, -1e4))

    runs = []
    for render in (lambda: render_field(plain, cams.double(), cfg, training=True, generator=torch.Generator().manual_seed(1)),
                   lambda: render_triplane(planes, decoder, cams.double(), cfg, training=True, eg3d_compatible=True,
                                           generator=torch.Generator().manual_seed(1))):
        out = render()
        (grad,) = torch.autograd.grad(out.features.square().mean() + out.depth.mean(), planes)
        runs.append((out, grad))
    (a, grad_a), (b, grad_b) = runs
    for name in ("features", "depth", "alpha"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=1e-10)
    assert grad_a.abs().max() > 1e-4


def test_a_triplane_field_is_empty_beyond_its_outermost_texel_centres():
    """Only the side plane ZY holds features, so beside the cube (|x| large) a point still reads a third of them from
    ZY, and zeros from XY and XZ. The field is the decoder's inside the cube of texel centres (P = 8, box 1: +-7/16)
    and has no density beyond, on every axis and in the half-texel shell; its features are the decoder's everywhere."""
    from gazegen.rendering.renderer import EMPTY_RAW, TriplaneField

    torch.manual_seed(0)
    planes = torch.zeros(1, 3, 4, 8, 8)
    planes[0, 2] = torch.rand(4, 8, 8) + 1  # ZY only
    decoder = TriplaneDecoder(4, 8, 3).eval()
    texels = PlaneTexels.from_planes(planes, box_warp=1.0)
    assert texels.half_side == 7 / 16
    inside = [[0.0, 0.1, 0.0], [7 / 16, 0.1, 0.0], [-7 / 16, -7 / 16, 7 / 16], [0.3, 0.2, -0.4]]
    outside = [[7 / 16 + 1e-4, 0.1, 0.0], [0.49, 0.1, 0.0], [0.6, 0.1, 0.0], [-2.0, 0.1, 0.0], [0.0, 0.1, -0.47],
               [0.0, 0.45, 0.0]]
    points = torch.tensor([inside + outside])
    with torch.no_grad():
        got = TriplaneField(texels=texels, decoder=decoder)(points)
        expected = decoder.decode(texels.mean_at(points))
    n = len(inside)
    torch.testing.assert_close(got.density_raw[:, :n], expected.density_raw[:, :n], rtol=0, atol=0)
    assert (got.density_raw[:, n:] == EMPTY_RAW).all()
    assert (density_activation(got.density_raw[:, n:], -1.0) == 0).all()  # exactly no density
    assert (density_activation(expected.density_raw[:, n:n + 4], -1.0) > 0.1).all()  # what the partial read gave there
    torch.testing.assert_close(got.features, expected.features, rtol=0, atol=0)
