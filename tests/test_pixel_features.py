"""Pixel-aligned source features (gazegen/models/pixel_features.py): where each point reads, the eyes left out,
and a model that gains the branch (or source detail, the other grown branch) renders what it rendered before."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera
from gazegen.models.livegaze import LiveGaze
from gazegen.models.pixel_features import EyeZone, PixelFeatures, SourcePixels
from gazegen.rendering.rays import camera_rays
from gazegen.train.errors import TrainingError
from gazegen.train.init_weights import load_grown

S = 16  # source image side
EYE = (0.088, 0.0, 0.0)


def column_reader(eye_radius: float = 0.0, eye_falloff: float = 0.5) -> PixelFeatures:
    """A branch whose output channel 0 is the source's red channel (its features are [1 feature, R, G, B])."""
    branch = PixelFeatures(1, 2, 2, EyeZone(EYE, eye_radius, eye_falloff)).double()
    with torch.no_grad():
        branch.proj.weight.zero_()
        branch.proj.bias.zero_()
        branch.proj.weight[0, 1] = 1.0
    return branch


def column_ramp() -> torch.Tensor:
    """(1, 3, S, S) image whose red value at pixel centre (row i, column j) is j."""
    image = torch.zeros(1, 3, S, S, dtype=torch.float64)
    image[0, 0] = torch.arange(S, dtype=torch.float64)[None, :].expand(S, S)
    return image


def tiny(**changes) -> ModelConfig:
    base = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    return dataclasses.replace(base, eg3d_plane_axes=False, coord_channels=False, **changes)


def cameras(*poses_deg: tuple[float, float]) -> torch.Tensor:
    return head_pose_to_camera(torch.from_numpy(np.radians(poses_deg)), NormalisationConfig())  # (B, 25) float64


@pytest.mark.parametrize("pose_deg", [(0.0, 0.0), (10.0, -25.0)])
def test_a_point_on_a_pixels_ray_reads_that_pixel(pose_deg):
    """The oracle is the ray of each pixel centre (rendering/rays.py): any point on it reads that pixel's value."""
    camera = cameras(pose_deg)
    branch = column_reader()
    source = branch(column_ramp(), camera)
    rays = camera_rays(camera, S)  # (1, S*S, 3) through the pixel centres, row-major
    for t in (2.4, 2.7, 3.1):
        points = rays.origins + t * rays.directions  # (1, S*S, 3)
        read = branch.read(source, points)[0, :, 0].reshape(S, S)  # (S, S) red at each pixel's ray
        torch.testing.assert_close(read, column_ramp()[0, 0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("falloff", [0.5, 0.2])
def test_points_near_either_eye_read_nothing(falloff):
    """Weight 0 within the radius of either eye centre, rising linearly to 1 at (1 + falloff) radii (the closed form)."""
    r = 0.06
    branch = column_reader(eye_radius=r, eye_falloff=falloff)
    camera = cameras((0.0, 0.0))
    source = SourcePixels(map=torch.ones(1, 2, S, S, dtype=torch.float64), camera=camera)  # as read: through proj
    for eye in (torch.tensor(EYE), torch.tensor(EYE) * torch.tensor([-1.0, 1.0, 1.0])):
        out = torch.tensor([0.0, 0.6, 0.8])  # a unit direction away from the eye
        distances = torch.tensor([0.0, 0.5 * r, r, 1.1 * r, 1.25 * r, 1.4 * r, 1.5 * r, 2.0 * r])
        points = (eye[None] + distances[:, None] * out[None]).double()[None]  # (1, 8, 3)
        want = ((distances - r) / (falloff * r)).clamp(0, 1).double()
        read = branch.read(source, points)[0, :, 0]  # the map is 1 everywhere in view: the read is the weight
        torch.testing.assert_close(read, want, atol=1e-6, rtol=0)  # the eye centre is stored in float32


def test_one_source_serves_many_point_sets():
    branch = column_reader()
    camera = cameras((5.0, 10.0))
    source = branch(column_ramp(), camera)
    points = torch.rand(3, 50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    shared = branch.read(source, points)  # (3, 50, 2)
    each = branch.read(SourcePixels(map=source.map.expand(3, -1, -1, -1), camera=camera.expand(3, -1)), points)
    torch.testing.assert_close(shared, each)


# The branches a model may gain beyond its init checkpoint (train/init_weights.GROWN), each with its zero-initialised
# output layer: pixel-aligned features (this module), source detail (models/source_detail.py), the source's
# surface bands (models/source_surface.py) and the mean planes (models/mean_planes.py; one tensor, both its "weight"
# and its "bias").
BRANCHES = {"pixels": ({"pixel_channels": 4}, lambda m: m.pixels.proj),
            "detail": ({"detail_hidden": 4}, lambda m: m.detail.mix[-1]),
            "surface": ({"surface_bands": 4}, lambda m: m.surface.proj),
            "mean": ({"mean_planes": True}, lambda m: SimpleNamespace(weight=m.mean.planes, bias=m.mean.planes))}


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_a_model_gains_the_branch_without_changing_what_it_renders(branch):
    """A checkpoint without the branch loads into a model with it (the new branch named) and renders the same."""
    changes, output = BRANCHES[branch]
    torch.manual_seed(0)
    before = LiveGaze(tiny()).eval()
    torch.manual_seed(1)
    after = LiveGaze(tiny(**changes)).eval()
    assert load_grown(after, before.state_dict(), Path("prior")) == [branch]
    s = before.cfg.image_resolution
    image = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(2)) * 2 - 1
    source, target = cameras((0.0, 0.0), (5.0, -10.0)).float(), cameras((-5.0, 20.0), (0.0, 0.0)).float()
    gaze = torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    with torch.no_grad():
        a, b = before(image, gaze, target, source), after(image, gaze, target, source)
    for name in ("image", "image_raw", "depth", "alpha"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with torch.no_grad():  # and the branch does reach the render once its output is not zero
        output(after).bias.fill_(0.5)
        assert not torch.equal(after(image, gaze, target, source).image, a.image)


def test_weights_of_another_architecture_are_refused_naming_the_file():
    torch.manual_seed(0)
    state = LiveGaze(tiny()).state_dict()
    del state["decoder.net.0.bias"]
    with pytest.raises(TrainingError, match=r"runs/x: .*decoder.net.0.bias"):
        load_grown(LiveGaze(tiny(pixel_channels=4)), state, Path("runs/x"))
    wider = LiveGaze(tiny(pixel_channels=4))
    with pytest.raises(TrainingError, match=r"runs/y: its weights do not fit"):
        load_grown(LiveGaze(tiny(pixel_channels=4, sr_channels=(8,))), wider.state_dict(), Path("runs/y"))


@pytest.mark.parametrize("branch", ["detail", "pixels", "surface"])  # the branches that read the source at render time
def test_render_needs_the_source_and_one_source_serves_many_views(branch):
    changes, output = BRANCHES[branch]
    torch.manual_seed(0)
    model = LiveGaze(tiny(**changes)).eval()
    with torch.no_grad():
        output(model).weight.normal_(0, 0.5)
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
    for name in ("image", "depth", "alpha"):
        torch.testing.assert_close(getattr(together, name), torch.cat([getattr(o, name) for o in single]),
                                   rtol=1e-5, atol=1e-5)


# Grown branches that learn at their own rate (train/optim.py PARTS): the optimiser group, its rate key, the module.
RATES = {"surface": ({"surface_bands": 3, "lift_samples": 2}, "lr_surface", lambda m: m.surface),
         "mean_planes": ({"mean_planes": True}, "lr_mean_planes", lambda m: m.mean)}


@pytest.mark.parametrize("group", sorted(RATES))
def test_a_grown_branch_learns_at_its_own_rate(group):
    """Every parameter of the branch, and only those, in its own optimiser group at its own rate."""
    from gazegen.config import OptimConfig
    from gazegen.train.optim import build_optimizer

    changes, key, module = RATES[group]
    model = LiveGaze(tiny(**changes))
    optim = load_config(OptimConfig, None, ["lr_encoder=1e-4", "lr_renderer=2e-4", "lr_gaze=3e-4", f"{key}=7e-3"])
    groups = {g["name"]: g for g in build_optimizer(model, optim).param_groups}
    assert groups[group]["lr"] == 7e-3
    assert {id(p) for p in groups[group]["params"]} == {id(p) for p in module(model).parameters()}
    assert all(g["lr"] != 7e-3 for name, g in groups.items() if name != group)
