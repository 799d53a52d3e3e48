"""Source detail (gazegen/models/source_detail.py): the warp is exact where it must be and the eyes are left out.
Growing the branch onto a checkpoint, and one source serving many views: tests/test_pixel_features.py (BRANCHES)."""

import numpy as np
import pytest
import torch

from gazegen.config import NormalisationConfig
from gazegen.geometry import head_pose_to_camera
from gazegen.models.pixel_features import EyeZone
from gazegen.models.source_detail import SourceDetail, turn
from gazegen.rendering.rays import camera_rays

EYE = (0.088, 0.0, 0.0)


def cameras(*poses_deg: tuple[float, float]) -> torch.Tensor:
    return torch.from_numpy(head_pose_to_camera(np.radians(poses_deg), NormalisationConfig()))  # (B, 25) float64


@pytest.mark.parametrize("pose_deg", [(0.0, 0.0), (10.0, -25.0)])
def test_seen_from_the_source_camera_the_warp_is_the_source_itself_at_any_depth(pose_deg):
    """A point anywhere on a pixel's ray projects back onto that pixel: warping to the source's own camera is
    the identity whatever the rendered depth (geometry.project and the rays module as the oracle)."""
    camera = cameras(pose_deg)
    side, r = 32, 8
    source = torch.rand(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    depth = 2.4 + 0.6 * torch.rand(1, 1, r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    branch = SourceDetail(4, EyeZone(EYE, 0.0)).double()
    warped, weight, v = branch.warp(depth, torch.ones(1, 1, r, r, dtype=torch.float64), camera, source, camera)
    torch.testing.assert_close(warped, source, rtol=0, atol=1e-9)
    assert torch.equal(weight, torch.ones_like(weight))
    torch.testing.assert_close(v, torch.zeros_like(v), rtol=0, atol=1e-9)  # the source's own rays: no turn


def test_pixels_whose_surface_lies_at_an_eye_read_nothing():
    camera = cameras((0.0, 0.0))
    side = 32
    rays = camera_rays(camera, side)
    branch = SourceDetail(4, EyeZone(EYE, 0.06)).double()
    points_depth = torch.full((1, 1, side, side), 2.7, dtype=torch.float64)  # the frontal camera's distance: the eyes' plane
    _, weight, _ = branch.warp(points_depth, torch.ones_like(points_depth), camera,
                            torch.zeros(1, 3, side, side, dtype=torch.float64), camera)
    points = rays.origins + (points_depth.reshape(1, -1, 1) / rays.z_per_t) * rays.directions  # (1, S*S, 3)
    eyes = torch.tensor([EYE, (-EYE[0], EYE[1], EYE[2])], dtype=torch.float64)
    nearest = torch.cdist(points, eyes[None]).amin(-1).reshape(1, 1, side, side)
    assert (weight[nearest < 0.06] == 0).all() and (nearest < 0.06).any()
    assert (weight[nearest > 0.09] == 1).all() and (nearest > 0.09).any()


@pytest.mark.parametrize("source_deg", [(0.0, 25.0), (10.0, -25.0), (-15.0, 5.0)])
def test_the_turn_is_the_angle_the_two_cameras_make_at_the_point(source_deg):
    """At the world origin (where every rig camera looks) the turn is the sine of the angle between the two camera
    centres seen from it: the cameras' positions as the oracle, not their rays."""
    view, source = cameras((0.0, 0.0)), cameras(source_deg)
    origin = torch.zeros(1, 1, 3, dtype=torch.float64)
    direction = -view[:, None, 3:12:4] / view[:, None, 3:12:4].norm(dim=-1, keepdim=True)  # view centre -> origin
    a, b = view[0, 3:12:4], source[0, 3:12:4]  # the centres: cam2world's translation column
    expected = torch.linalg.cross(a, b).norm() / (a.norm() * b.norm())
    assert float(expected) > 0.08
    torch.testing.assert_close(turn(origin, direction, source), expected.reshape(1, 1, 1, 1), rtol=0, atol=1e-12)


def test_a_full_share_through_the_source_camera_renders_the_source_itself():
    """share = 1 and no correction: the output is the warped read, which through the source's own camera is the
    source (the warp's identity above) wherever the weight is 1, and the render where it is 0 (the eyes)."""
    camera = cameras((5.0, -10.0))
    side = 32
    branch = SourceDetail(4, EyeZone(EYE, 0.06)).double()
    branch.reset_output_()
    with torch.no_grad():
        branch.blend.bias.fill_(40.0)  # tanh(40) = 1 in float64 to 1e-30
    source = torch.rand(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    render = torch.rand(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    depth = torch.full((1, 1, 8, 8), 2.7, dtype=torch.float64)
    opaque = torch.ones_like(depth)
    out = branch(render, depth, opaque, camera, source, camera)
    _, weight, _ = branch.warp(depth, opaque, camera, source, camera)
    torch.testing.assert_close(out, weight * source + (1 - weight) * render, rtol=0, atol=1e-9)
    assert (weight == 0).any() and (weight == 1).any()


def test_the_output_is_the_module_docstrings_formula():
    """h = LeakyReLU(conv3x3([image, warped * w, w]) + conv1x1(v)); output = image + tanh(conv3x3(h)) w (warped - image)
    + conv3x3(h), written with torch's convs, every weight random (the turn's 1x1 conv included)."""
    torch.manual_seed(3)
    side, r = 16, 8
    branch = SourceDetail(4, EyeZone(EYE, 0.06)).double()
    for p in branch.parameters():
        torch.nn.init.normal_(p, std=0.3)
    image = torch.rand(2, 3, side, side, dtype=torch.float64) * 2 - 1
    source = torch.rand(1, 3, side, side, dtype=torch.float64) * 2 - 1
    depth = 2.5 + 0.4 * torch.rand(2, 1, r, r, dtype=torch.float64)
    alpha = torch.rand(2, 1, r, r, dtype=torch.float64)
    views, source_camera = cameras((5.0, 20.0), (-10.0, -15.0)), cameras((0.0, 0.0))
    warped, w, v = branch.warp(depth, alpha, views, source, source_camera)
    assert v.abs().max() > 0.1  # turned views: the turn's term counts
    read, act, out = branch.mix
    h = act(read(torch.cat([image, warped * w, w], 1)) + torch.nn.functional.conv2d(v, branch.turn.weight))
    expected = image + torch.tanh(branch.blend(h)) * w * (warped - image) + out(h)
    torch.testing.assert_close(branch(image, depth, alpha, views, source, source_camera), expected, rtol=1e-12, atol=1e-12)
