"""Plane lifting (gazegen/models/plane_lifting.py): where each texel reads the source image, in closed form."""

import dataclasses

import numpy as np
import pytest
import torch

from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera, project
from gazegen.models.livegaze import LiveGaze
from gazegen.models.plane_lifting import PlaneLifting, texel_segments
from gazegen.rendering.triplane import PLANE_AXES, sample_planes

P, K, BOX = 16, 4, 1.0


def ramp(size: int, axis: int) -> torch.Tensor:
    """(1, 1, S, S) feature map whose value at pixel centre (row i, column j) is j (axis 1) or i (axis 0)."""
    idx = torch.arange(size, dtype=torch.float64)
    grid = idx[None, :].expand(size, size) if axis == 1 else idx[:, None].expand(size, size)
    return grid[None, None].clone()


@pytest.mark.parametrize("pose_deg", [(0.0, 0.0), (12.0, -25.0)])
def test_each_texel_reads_the_source_pixel_its_points_project_to(pose_deg):
    """Bilinear reads of a linear ramp are exact: the read is the projected coordinate minus half a pixel."""
    camera = head_pose_to_camera(torch.from_numpy(np.radians([pose_deg])), NormalisationConfig())  # (1, 25) float64
    lifting = PlaneLifting(1, K, 4, 2, P, BOX, PLANE_AXES).double()
    points = texel_segments(P, K, BOX, PLANE_AXES).double().reshape(1, -1, 3)  # (1, 3*K*P*P, 3)
    uv = project(points, camera, P)[0]  # (N, 2) pixel coordinates in a P-pixel image
    inside = ((uv > 1.0) & (uv < P - 1.0)).all(-1)  # away from the zero padding at the border
    assert inside.float().mean() > 0.3
    for axis in (0, 1):
        read = lifting.read(ramp(P, axis), camera)  # (1, 3, K, P, P): C = 1
        got = read.reshape(-1)
        want = uv[:, 1 - axis] - 0.5 if axis == 0 else uv[:, 0] - 0.5
        torch.testing.assert_close(got[inside], want[inside], atol=1e-9, rtol=0)


def test_the_frontal_xy_plane_is_the_image_the_right_way_up():
    """Seen from the front, XY texel rows run up world y (sample_planes), so they read image rows bottom to top."""
    camera = head_pose_to_camera(torch.zeros(1, 2), NormalisationConfig())
    lifting = PlaneLifting(1, K, 4, 2, P, BOX, PLANE_AXES).double()
    rows = lifting.read(ramp(P, 0), camera)[0, 0, K // 2]  # (P, P) XY plane, the read nearest z = 0: image row
    cols = lifting.read(ramp(P, 1), camera)[0, 0, K // 2]
    centre = slice(P // 4, 3 * P // 4)
    rows, cols = rows[centre, centre], cols[centre, centre]  # inside the image (the cube is wider than the crop)
    assert (rows[:-1] > rows[1:]).all()  # texel row up (world y) = image row down
    assert (cols[:, 1:] > cols[:, :-1]).all()  # texel column right (world x) = image column right
    # a point on the XY plane's world axes lands where sample_planes reads it: texel (i, j) <-> (x, y) world
    texel = texel_segments(P, K, BOX, PLANE_AXES)[0, 0]  # (P, P, 3) XY texel centres at the first depth
    planes = torch.zeros(1, 3, 1, P, P)
    planes[0, 0, 0] = torch.arange(P * P, dtype=torch.float32).reshape(P, P)
    read = sample_planes(planes, texel.reshape(1, -1, 3), BOX)[0, 0, :, 0]  # (P*P,) plane 0 at its own texels
    torch.testing.assert_close(read, torch.arange(P * P, dtype=torch.float32))


def test_a_lifting_model_needs_and_uses_the_source_camera():
    cfg = dataclasses.replace(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"), lift_samples=K)
    torch.manual_seed(0)
    model = LiveGaze(cfg).eval()
    image = torch.rand(1, 3, cfg.image_resolution, cfg.image_resolution) * 2 - 1
    gaze = torch.zeros(1, 2)
    frontal = head_pose_to_camera(torch.zeros(1, 2), NormalisationConfig()).float()
    turned = head_pose_to_camera(torch.tensor([[0.0, 0.5]]), NormalisationConfig()).float()
    with pytest.raises(ValueError, match="source camera"):
        model.encode(image)
    with torch.no_grad():
        a = model.redirect(model.encode(image, frontal), gaze)
        b = model.redirect(model.encode(image, turned), gaze)
    assert a.shape == (1, 3, cfg.render.plane_channels, cfg.render.plane_resolution, cfg.render.plane_resolution)
    assert (a - b).abs().mean() > 0.1 * a.abs().mean()  # the same image from another camera lands elsewhere
