"""Source detail (gazegen/models/source_detail.py): the warp is exact where it must be, the eyes are left out,
and a model that gains the branch renders what it rendered before."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera
from gazegen.models.livegaze import LiveGaze
from gazegen.models.source_detail import SourceDetail
from gazegen.rendering.rays import camera_rays
from gazegen.train.trainer import load_grown

EYE = (0.088, 0.0, 0.0)


def cameras(*poses_deg: tuple[float, float]) -> torch.Tensor:
    return torch.from_numpy(head_pose_to_camera(np.radians(poses_deg), NormalisationConfig()))  # (B, 25) float64


def tiny(**changes) -> ModelConfig:
    base = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    return dataclasses.replace(base, eg3d_plane_axes=False, coord_channels=False, **changes)


@pytest.mark.parametrize("pose_deg", [(0.0, 0.0), (10.0, -25.0)])
def test_seen_from_the_source_camera_the_warp_is_the_source_itself_at_any_depth(pose_deg):
    """A point anywhere on a pixel's ray projects back onto that pixel: warping to the source's own camera is
    the identity whatever the rendered depth (geometry.project and the rays module as the oracle)."""
    camera = cameras(pose_deg)
    side, r = 32, 8
    source = torch.rand(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    depth = 2.4 + 0.6 * torch.rand(1, 1, r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    branch = SourceDetail(4, EYE, eye_radius=0.0).double()
    warped, weight = branch.warp(depth, torch.ones(1, 1, r, r, dtype=torch.float64), camera, source, camera)
    torch.testing.assert_close(warped, source, rtol=0, atol=1e-9)
    assert torch.equal(weight, torch.ones_like(weight))


def test_pixels_whose_surface_lies_at_an_eye_read_nothing():
    camera = cameras((0.0, 0.0))
    side = 32
    rays = camera_rays(camera, side)
    branch = SourceDetail(4, EYE, eye_radius=0.06).double()
    points_depth = torch.full((1, 1, side, side), 2.7, dtype=torch.float64)  # the frontal camera's distance: the eyes' plane
    _, weight = branch.warp(points_depth, torch.ones_like(points_depth), camera,
                            torch.zeros(1, 3, side, side, dtype=torch.float64), camera)
    points = rays.origins + (points_depth.reshape(1, -1, 1) / rays.z_per_t) * rays.directions  # (1, S*S, 3)
    eyes = torch.tensor([EYE, (-EYE[0], EYE[1], EYE[2])], dtype=torch.float64)
    nearest = torch.cdist(points, eyes[None]).amin(-1).reshape(1, 1, side, side)
    assert (weight[nearest < 0.06] == 0).all() and (nearest < 0.06).any()
    assert (weight[nearest > 0.09] == 1).all() and (nearest > 0.09).any()


def test_a_model_gains_the_branch_without_changing_what_it_renders():
    torch.manual_seed(0)
    before = LiveGaze(tiny()).eval()
    torch.manual_seed(1)
    after = LiveGaze(tiny(detail_hidden=4)).eval()
    assert load_grown(after, before.state_dict(), Path("prior")) == ["detail"]
    s = before.cfg.image_resolution
    image = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(2)) * 2 - 1
    source, target = cameras((0.0, 0.0), (5.0, -10.0)).float(), cameras((-5.0, 20.0), (0.0, 0.0)).float()
    gaze = torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    with torch.no_grad():
        a, b = before(image, gaze, target, source), after(image, gaze, target, source)
        assert torch.equal(a.image, b.image)
        after.detail.mix[-1].bias.fill_(0.5)  # and the branch reaches the output once its last conv is not zero
        assert not torch.equal(after(image, gaze, target, source).image, a.image)


def test_render_needs_the_source_and_one_source_serves_many_views():
    torch.manual_seed(0)
    model = LiveGaze(tiny(detail_hidden=4)).eval()
    with torch.no_grad():
        model.detail.mix[-1].weight.normal_(0, 0.5)
    s = model.cfg.image_resolution
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(3)) * 2 - 1
    views = cameras((0.0, 0.0), (5.0, 15.0), (-5.0, -20.0)).float()
    with torch.no_grad():
        features = model.encode(image, views[:1])
        triplane = model.redirect(features, torch.zeros(1, 2))
        with pytest.raises(ValueError, match="source=features"):
            model.render(triplane, views)
        together = model.render(triplane, views, source=features)
        single = [model.render(triplane, views[i : i + 1], source=features) for i in range(3)]
    torch.testing.assert_close(together.image, torch.cat([o.image for o in single]), rtol=1e-5, atol=1e-5)
