"""The staged grid (gazegen/models/staged_grid.py): every row equals one full forward; and `gazegen bench` runs on it."""

import dataclasses

import numpy as np
import pytest
import torch

from gazegen.benchmark import bench_model
from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera
from gazegen.models.livegaze import LiveGaze
from gazegen.models.staged_grid import grid_bound, staged_grid

TINY = CONFIG_DIR / "model" / "tiny.toml"
SOURCE_READING = ("pixel_channels=4", "pixel_hidden=4", "detail_hidden=4", "mean_planes=true", "render.source_background=true")


def test_every_row_equals_a_full_forward():
    """5 gazes x 3 views in calls of 4: render calls span gazes (gathered triplanes) and the last gaze block is short.
    The oracle is LiveGaze.forward, one row at a time, on a model that reads the source per point and per pixel."""
    cfg = load_config(ModelConfig, TINY, SOURCE_READING)
    torch.manual_seed(0)
    model = LiveGaze(cfg).eval()
    for branch in (model.pixels, model.detail, model.gaze_fusion.proj_out):  # zero-initialised: weighted, so they count
        for p in branch.parameters():
            torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, cfg.image_resolution, cfg.image_resolution, generator=g) * 2 - 1
    source = head_pose_to_camera(torch.tensor([[0.1, -0.2]]), NormalisationConfig()).float()
    gazes = (torch.rand(5, 2, generator=g) - 0.5) * 0.8
    cameras = head_pose_to_camera(torch.tensor([[0.0, 0.0], [0.2, 0.3], [-0.1, -0.4]]), NormalisationConfig()).float()
    gaze_of, view_of = np.repeat(np.arange(5), 3), np.tile(np.arange(3), 5)
    seen = []
    with torch.no_grad():
        features = model.encode(image, source)
        for rows, out in staged_grid(model.redirect, model.render, features, gazes, cameras, gaze_of, view_of, batch=4):
            assert len(rows) <= 4
            seen += rows.tolist()
            for k, row in enumerate(rows):
                ref = model(image, gazes[gaze_of[row], None], cameras[view_of[row], None], source)
                for name in ("image", "depth", "alpha"):
                    torch.testing.assert_close(getattr(out, name)[k], getattr(ref, name)[0], atol=1e-5, rtol=1e-5)
    assert sorted(seen) == list(range(15))


def test_bench_runs_a_preset_whose_render_reads_the_source():
    """`gazegen bench` on a model with pixel features and source detail (it once rendered without the source)."""
    result = bench_model(TINY, batch=2, repeats=1, warmup=0, grid=(2, 3), grid_repeats=1, overrides=SOURCE_READING)
    assert result["overrides"] == list(SOURCE_READING)
    assert set(result["ms_per_image"]) == {"encode", "redirect", "render", "superres", "total"}
    assert all(v > 0 for v in result["ms_per_image"].values())
    grid = result["grid"]
    assert grid["gazes"] == 2 and grid["views"] == 3 and grid["ratio"] > 0
    assert 1.0 < grid["bound"] < grid["bound_free_volume"]  # a grid never loses by the cost model; a free volume gains


def test_bench_runs_that_preset_under_bf16_autocast():
    """`gazegen bench --dtype bf16` on the same model: source detail crossed bf16 ray directions with float32 points
    (camera math now ignores autocast, gazegen/geometry.py)."""
    result = bench_model(TINY, batch=2, repeats=1, warmup=0, dtype="bf16", grid=(2, 3), grid_repeats=1, overrides=SOURCE_READING)
    assert result["dtype"] == "bf16" and all(v > 0 for v in result["ms_per_image"].values())


def test_grid_bound_is_the_cost_model_of_a_staged_grid():
    """Closed forms: a row of a G x V grid costs e/(GV) + r/V + v against e + r + v; at 5 x 5 x 3 the redirect cancels
    from the 3x condition, which holds exactly when v = 0.48 e."""
    assert grid_bound(1.0, 1.0, 1.0, 5, 5) == pytest.approx(3.0 / (1 / 25 + 1 / 5 + 1))
    assert grid_bound(2.0, 0.0, 0.0, 4, 1) == pytest.approx(4.0)  # encode only: G V rows share one encode
    for redirect in (0.0, 0.7, 5.0):
        assert grid_bound(1.0, redirect, 0.48, 25, 3) == pytest.approx(3.0)
        assert grid_bound(1.0, redirect, 0.5, 25, 3) < 3.0 < grid_bound(1.0, redirect, 0.46, 25, 3)
    # against a forward measured whole (here 4, its stages 3 apart): the numerator is that forward
    assert grid_bound(1.0, 1.0, 1.0, 5, 5, forward=4.0) == pytest.approx(4.0 / (1 / 25 + 1 / 5 + 1))
