"""The mean planes (gazegen/models/mean_planes.py) and the mean-head depth baseline (evaluation/depth_baseline.py).

Growing the planes onto a checkpoint and their optimiser group: tests/test_pixel_features.py (BRANCHES, RATES)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, RigConfig, SynthHeadsConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.evaluation.depth_baseline import mean_head_depth, median_by_camera
from gazegen.geometry import head_pose_to_camera
from gazegen.models.livegaze import LiveGaze
from gazegen.models.mean_planes import MeanPlanes
from gazegen.train.data import TripletDataset, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.subjects import read_subject


def test_inside_the_cube_the_mean_planes_are_added_to_every_sources_planes():
    """A model with M renders source planes T as T + M's centre rendered without M, over M's domain (the renderer
    empties points beyond the planes' outermost texel centres), for every source and view; M's margin (zero here) is
    where the source planes' zero padding was."""
    from gazegen.rendering.renderer import render_triplane

    margin = 2
    base = dataclasses.replace(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"), eg3d_plane_axes=False)
    torch.manual_seed(0)
    with_mean = LiveGaze(dataclasses.replace(base, mean_planes=True, mean_planes_margin=margin)).eval()
    without = LiveGaze(base).eval()
    without.load_state_dict({k: v for k, v in with_mean.state_dict().items() if not k.startswith("mean.")})
    p = base.render.plane_resolution
    centre = torch.randn(3, base.render.plane_channels, p, p, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with_mean.mean.planes.zero_()[:, :, margin:-margin, margin:-margin] = centre
    assert with_mean.mean.planes.shape[-1] == p + 2 * margin
    planes = torch.randn(2, 3, base.render.plane_channels, p, p, generator=torch.Generator().manual_seed(2))
    views = head_pose_to_camera(torch.tensor([[0.0, 0.0], [0.2, -0.3]], dtype=torch.float64), NormalisationConfig()).float()
    with torch.no_grad():
        a = with_mean._volume(planes, views, None, None, training=False)
        b = render_triplane(planes + centre, without.decoder, views, base.render, half_side=with_mean.mean.texels().half_side)
    for name in ("features", "depth", "alpha"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-4)


def test_the_render_reads_the_mean_and_source_planes_as_one_and_equals_reading_them_apart():
    """LiveGaze reads M + T padded by the margin once (MeanPlanes.around); the oracle reads T over its cube and M over
    its own, apart, and adds the two per point (render_triplane's point_term). M random everywhere, margin included."""
    from gazegen.rendering.renderer import render_triplane

    model = _tiny_with_mean(3).eval()
    base = model.cfg
    with torch.no_grad():
        model.mean.planes.copy_(torch.randn(model.mean.planes.shape, generator=torch.Generator().manual_seed(1)) * 4)
        model.decoder.net[2].bias[0] = 3.0  # denser: some rays turn opaque, others stay clear
    p = base.render.plane_resolution
    planes = torch.randn(2, 3, base.render.plane_channels, p, p, generator=torch.Generator().manual_seed(2)) * 4
    views = head_pose_to_camera(torch.tensor([[0.0, 0.0], [0.3, -0.5]], dtype=torch.float64), NormalisationConfig()).float()
    with torch.no_grad():
        got = model._volume(planes, views, None, None, training=False)
        apart = render_triplane(planes, model.decoder, views, base.render, eg3d_compatible=base.eg3d_plane_axes,
                                point_term=model.mean.texels().mean_at, half_side=model.mean.texels().half_side)
    assert apart.alpha.max() - apart.alpha.min() > 0.2  # some rays more opaque than others: the planes matter
    for name in ("features", "depth", "alpha"):
        torch.testing.assert_close(getattr(got, name), getattr(apart, name), rtol=1e-4, atol=1e-4)


def test_beyond_the_cube_a_point_reads_the_margin_texels_of_its_three_planes():
    """Margin 2 around 4 texels over a unit cube: 8 texels of 0.25 over [-1, 1]; texel j's centre is 0.25 j - 0.875.
    The point (0.625, -0.875, 0.875), beyond the cube, sits on texel centres: XY reads (row 0, col 6), XZ (row 7,
    col 6), ZY (row 0, col 7) (gazegen/rendering/triplane.py: plane k reads its (u, v) = (column, row) axes)."""
    mean = MeanPlanes(channels=2, resolution=4, box_warp=1.0, margin=2)
    assert mean.extent == 2.0
    with torch.no_grad():
        mean.planes.copy_(torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)))
    m = mean.planes.detach()
    point = torch.tensor([[[0.625, -0.875, 0.875]]])
    expected = (m[0, :, 0, 6] + m[1, :, 7, 6] + m[2, :, 0, 7]) / 3
    torch.testing.assert_close(mean.texels().mean_at(point)[0, 0], expected)  # in training: grid_sample per plane
    with torch.no_grad():  # rendering: texel rows
        torch.testing.assert_close(mean.texels().mean_at(point)[0, 0], expected)
    beyond = mean.texels().mean_at(torch.tensor([[[1.2, 0.0, 0.0]]]))  # past the margin too: zeros on XY and XZ, ZY at (z, y) = 0
    torch.testing.assert_close(beyond[0, 0], m[2, :, 3:5, 3:5].mean((1, 2)) / 3)


def test_the_median_by_camera_ignores_invalid_pixels_and_fills_what_no_map_has():
    nan = float("nan")
    depth = torch.tensor([[1.0, 5.0], [2.0, 6.0], [9.0, nan], [4.0, 7.0], [3.0, 8.0]]).reshape(5, 1, 1, 2)
    valid = ~torch.isnan(depth)
    valid[2, 0, 0, 0] = False  # camera 0's third map: 9 is not valid
    cams = torch.tensor([0, 0, 0, 1, 1])
    out = median_by_camera(torch.nan_to_num(depth), valid, cams, views=2)  # (2, 1, 1, 2)
    # camera 0: pixel 0 has {1, 2} (torch's median of an even count is the lower one), pixel 1 {5, 6};
    # camera 1: {3, 4} and {7, 8}
    assert out.flatten().tolist() == [1.0, 5.0, 3.0, 7.0]
    valid[:3, 0, 0, 1] = False  # camera 0 never sees pixel 1: it takes the median of all camera 0's values ({1, 2})
    assert median_by_camera(torch.nan_to_num(depth), valid, cams, views=2)[0].flatten().tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="camera 2"):
        median_by_camera(torch.nan_to_num(depth), valid, cams, views=3)


def test_the_mean_head_of_one_subject_is_that_subjects_depth(tmp_path):
    """With one subject and one row per camera, each camera's median is that row's own depth (where valid)."""
    heads = SynthHeadsConfig(subjects=1, test_subjects=0, resolution=64, gazes=2, seed=3, rig=RigConfig(views=2))
    store = synthesize_store(tmp_path / "heads", heads, workers=1)
    subject = read_subject(next(store.glob("*/*.h5")))
    data = TripletDataset([subject], TripletSizes(64, 64, 32), DatasetDepth())
    head = mean_head_depth(data, per_camera=1)  # (2, 1, 32, 32)
    assert head.shape == (2, 1, 32, 32)
    for cam in range(2):
        row = int(np.flatnonzero(subject.labels.cam_index == cam)[0])
        item = data.load(0, row, row)
        valid = item.depth_valid[0]
        assert valid.float().mean() > 0.2  # the head fills a good part of the frame
        assert torch.equal(head[cam][valid], item.depth_prior[0][valid])


def _tiny_with_mean(margin: int) -> LiveGaze:
    base = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    torch.manual_seed(0)
    return LiveGaze(dataclasses.replace(base, mean_planes=True, mean_planes_margin=margin))


def test_empty_margin_loss_is_the_mean_density_of_the_shell():
    """With every decoder weight zero and the density output's bias b, every point's raw density is b: the loss is
    softplus(b + density_bias) exactly, whatever the points; a model without mean planes is refused."""
    from gazegen.train.losses import empty_margin_loss

    model = _tiny_with_mean(4)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.decoder.net[2].bias[0] = 2.0
    expected = np.log1p(np.exp(2.0 + model.cfg.render.density_bias))
    assert float(empty_margin_loss(model, 256).detach()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="mean planes"):
        empty_margin_loss(LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), 16)


def test_empty_margin_loss_with_the_sources_reads_them_beside_the_mean_planes():
    """margin_sources: at the same shell points, the density of the decoder at the mean of M's three plane reads plus
    T's (each triplane of the batch, read apart with sample_planes; T reads zeros beyond its own cube on a plane only
    where one of its two axes leaves it), averaged over points and triplanes."""
    from gazegen.rendering.compositing import density_activation
    from gazegen.rendering.triplane import sample_planes
    from gazegen.train.losses import empty_margin_loss, shell_points

    model = _tiny_with_mean(3)
    r = model.cfg.render
    with torch.no_grad():
        model.mean.planes.copy_(torch.randn(model.mean.planes.shape, generator=torch.Generator().manual_seed(1)))
    planes = torch.randn(2, 3, r.plane_channels, r.plane_resolution, r.plane_resolution,
                         generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    got = empty_margin_loss(model, 300, planes)
    torch.manual_seed(5)
    shell = shell_points(300, r.box_warp / 2, model.mean.extent / 2)[None].expand(2, -1, -1)  # (2, n, 3)
    axes = model.cfg.eg3d_plane_axes
    features = (sample_planes(model.mean.planes[None], shell, model.mean.extent, eg3d_compatible=axes).mean(1)
                + sample_planes(planes, shell, r.box_warp, eg3d_compatible=axes).mean(1))  # (2, n, C)
    with torch.no_grad():
        expected = density_activation(model.decoder(features[:, None].expand(-1, 3, -1, -1)).density_raw,
                                      r.density_bias).mean()
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-6)
    source_part = sample_planes(planes, shell, r.box_warp, eg3d_compatible=axes).mean(1)  # (2, n, C)
    assert source_part.abs().amax() > 0.1  # beyond the cube the sources' planes still count (a plane whose axes stay in)


def test_shell_points_lie_between_the_cubes_uniformly():
    """Every point lies beyond the inner cube and within the outer one; uniform in the shell, the share of points
    beyond half-side a is (outer^3 - a^3) / (outer^3 - inner^3) (closed form, 4 sigma of the binomial)."""
    from gazegen.train.losses import shell_points

    torch.manual_seed(0)
    inner, outer, n = 0.5, 0.6875, 20000
    pts = shell_points(n, inner, outer)
    side = pts.abs().amax(-1)
    assert len(pts) > 0.95 * n and len(pts) <= n
    assert bool((side > inner).all()) and bool((side <= outer).all())
    a = 0.6
    share = (outer**3 - a**3) / (outer**3 - inner**3)
    assert abs(float((side > a).float().mean()) - share) < 4 * np.sqrt(share * (1 - share) / len(pts))


@pytest.fixture(scope="module")
def one_head(tmp_path_factory):
    heads = SynthHeadsConfig(subjects=1, test_subjects=0, resolution=64, gazes=1, seed=5, rig=RigConfig(views=2))
    return synthesize_store(tmp_path_factory.mktemp("margin") / "heads", heads, workers=1)


def test_margin_weight_adds_the_weighted_term_to_the_total(one_head):
    """forward_backward with loss.margin_weight w: the total is the objective without it plus w x the logged term."""
    from gazegen.config import TrainConfig
    from gazegen.train.losses import LiveGazeLoss
    from gazegen.train.trainer import forward_backward
    from small_sets import own_camera_batch

    store = one_head
    totals = {}
    for w in (0.0, 0.5):
        cfg = load_config(TrainConfig, None, ["model=model/tiny.toml", "loss.perceptual=false", f"loss.margin_weight={w}",
                                              "model_overrides=['mean_planes=true', 'mean_planes_margin=4']"])
        batch = own_camera_batch(store, cfg.model_config())
        model = _tiny_with_mean(4).train()
        torch.manual_seed(3)
        terms = forward_backward(model, batch, LiveGazeLoss(cfg.loss), 0.0)[0]
        totals[w] = {k: float(v.detach()) for k, v in vars(terms).items()}
    assert totals[0.0]["margin"] == 0.0
    assert totals[0.5]["margin"] > 0.0
    assert totals[0.5]["total"] == pytest.approx(totals[0.0]["total"] + 0.5 * totals[0.5]["margin"], rel=1e-5)


def test_margin_sources_reads_the_batchs_own_triplanes(one_head):
    """forward_backward with loss.margin_sources: the logged term is empty_margin_loss over the triplanes the forward
    rendered (LiveGazeOutput.triplane), the same points drawn (the oracle recomputes both from the same seed)."""
    from gazegen.config import TrainConfig
    from gazegen.train.losses import LiveGazeLoss, empty_margin_loss
    from gazegen.train.trainer import forward_backward
    from small_sets import own_camera_batch

    store = one_head
    cfg = load_config(TrainConfig, None, ["model=model/tiny.toml", "loss.perceptual=false", "loss.margin_weight=0.5",
                                          "loss.margin_sources=true", "model_overrides=['mean_planes=true', 'mean_planes_margin=4']"])
    batch = own_camera_batch(store, cfg.model_config())
    model = _tiny_with_mean(4).train()
    torch.manual_seed(3)
    logged = float(forward_backward(model, batch, LiveGazeLoss(cfg.loss), 0.0)[0].margin.detach())
    torch.manual_seed(3)  # the forward's jitter, then the shell's points, as in the step
    with torch.no_grad():
        out = model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        expected = float(empty_margin_loss(model, cfg.loss.margin_points, out.triplane))
        torch.manual_seed(3)
        model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        alone = float(empty_margin_loss(model, cfg.loss.margin_points))
    assert logged == pytest.approx(expected, rel=1e-4)
    assert logged != pytest.approx(alone, rel=1e-3)
