"""Occlusion seen from the source camera (gazegen/models/occlusion.py): the visibility ramp against points placed at
known depths on the source camera's rays, the pixel features' reads of hidden points, and the model's source depth."""

import dataclasses

import pytest
import torch

from gazegen.config import ConfigError
from gazegen.models.livegaze import LiveGaze
from gazegen.models.occlusion import visibility
from gazegen.models.pixel_features import EyeZone, PixelFeatures
from gazegen.rendering.rays import camera_rays
from test_pixel_features import EYE, S, cameras, column_ramp, tiny

M = 0.03  # the margin, world units


def points_at_depth(camera: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Points (1, S*S, 3) on the camera's pixel rays at z-depths z (S*S,): the oracle of their depth is their making."""
    rays = camera_rays(camera, S)  # unit directions and the z-depth per unit distance along each
    return rays.origins + (z[None, :, None] / rays.z_per_t) * rays.directions


@pytest.mark.parametrize("pose_deg", [(0.0, 0.0), (10.0, -25.0)])
def test_visibility_follows_the_ramp_behind_the_seen_surface(pose_deg):
    """A surface the camera sees at z-depth 2.7 (left half of the image) and 2.9 (right half): points in front of it or
    up to M behind are visible, 2M or more behind are not, linear between (points at pixel centres, so each reads
    its own pixel of the depth map exactly)."""
    camera = cameras(pose_deg)
    seen = torch.full((1, 1, S, S), 2.7, dtype=torch.float64)
    seen[..., S // 2 :] = 2.9
    surface = seen.reshape(-1)  # (S*S,) row-major, as the rays
    for behind, want in ((-0.2, 1.0), (0.0, 1.0), (M, 1.0), (1.25 * M, 0.75), (1.5 * M, 0.5), (2 * M, 0.0), (0.3, 0.0)):
        got = visibility(points_at_depth(camera, surface + behind), camera, seen, M)
        torch.testing.assert_close(got, torch.full_like(got, want), atol=1e-9, rtol=0)


def test_hidden_points_read_nothing_and_visible_ones_read_as_without_occlusion():
    camera = cameras((5.0, 15.0))
    branch = PixelFeatures(1, 2, 2, EyeZone(EYE, 0.0), occlusion=M).double()
    with torch.no_grad():
        branch.proj.bias.fill_(0.25)  # the bias is a read too: hidden points must not get it either
    source = branch(column_ramp(), camera)
    depth = torch.full((1, 1, S, S), 2.7, dtype=torch.float64)
    free = branch.read(source, points_at_depth(camera, torch.full((S * S,), 2.6, dtype=torch.float64)))  # no depth yet
    weighed = dataclasses.replace(source, depth=depth)
    front = branch.read(weighed, points_at_depth(camera, torch.full((S * S,), 2.6, dtype=torch.float64)))
    hidden = branch.read(weighed, points_at_depth(camera, torch.full((S * S,), 2.7 + 2 * M, dtype=torch.float64)))
    torch.testing.assert_close(front, free, atol=0, rtol=0)
    assert free.abs().amax() > 0.2
    assert hidden.abs().amax() == 0


def test_the_model_renders_the_source_depth_once_per_source_and_checks_its_config():
    torch.manual_seed(0)
    cfg = tiny(pixel_channels=4, detail_hidden=4, occlusion_margin=M)
    model = LiveGaze(cfg).eval()
    side = cfg.image_resolution
    image = torch.rand(2, 3, side, side) * 2 - 1
    camera = cameras((0.0, 0.0), (0.0, 20.0)).float()
    with torch.no_grad():
        features = model.encode(image, camera)
        half = cfg.render.neural_resolution // 2
        assert features.depth.shape == (2, 1, half, half)
        assert features.pixels.depth is features.depth
        # every depth is on a ray's sampled range (a head) or the far value (none): z-depth at most 2 x ray_end
        assert bool(((features.depth >= cfg.render.ray_start * 0.9) & (features.depth <= 2 * cfg.render.ray_end)).all())
        out = model.render(model.redirect(features, torch.zeros(2, 2)), camera, source=features)
    assert torch.isfinite(out.image).all()
    with pytest.raises(ConfigError, match="occlusion_margin"):
        tiny(pixel_channels=0, detail_hidden=0, occlusion_margin=M)
