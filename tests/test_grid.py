"""The synthesis grid: ranges, full grids, sampled grids, determinism."""

import numpy as np
import pytest

from gazegen.pipelines.grid import AxisRange, GridSpec, plan_source, pose_problem, rendered_poses, rows_per_source


def spec(axes="pitch,yaw,view", sample=0, seed=0):
    return GridSpec.parse(axes, "-30:30:3", "-40:40:2", "0:10:2", "-20:20:3", sample=sample, seed=seed)


def test_range_values_in_radians_both_ends_included():
    np.testing.assert_allclose(AxisRange.parse("-30:30:5", "pitch").values(), np.radians([-30, -15, 0, 15, 30]))
    np.testing.assert_allclose(AxisRange.parse("7:7:1", "yaw").values(), np.radians([7.0]))
    for bad in ["1:2", "a:b:c", "0:10:0", "0:10:1"]:
        with pytest.raises(ValueError, match="--pitch"):
            AxisRange.parse(bad, "pitch")
    with pytest.raises(ValueError, match="--grid"):
        GridSpec.parse("pitch,roll", "0:0:1", "0:0:1", "0:0:1", "0:0:1")


def test_full_grid_is_the_product_gaze_major():
    plan = plan_source(spec(), "a", None)
    assert plan.gazes.shape == (6, 2) and plan.views.shape == (6, 2)
    assert len(plan.pairs) == rows_per_source(spec()) == 36
    assert len({tuple(p) for p in plan.pairs}) == 36
    assert (plan.pairs[:6, 0] == 0).all()  # all views of gaze 0 first
    assert {tuple(np.round(np.degrees(g), 6)) for g in plan.gazes} == {(p, y) for p in (-30, 0, 30) for y in (-40, 40)}


def test_unswept_axes_keep_the_source():
    plan = plan_source(spec("yaw"), "a", np.array([0.1, 0.2]))
    np.testing.assert_allclose(plan.gazes[:, 0], 0.1)
    np.testing.assert_allclose(plan.gazes[:, 1], np.radians([-40, 40]))
    np.testing.assert_allclose(plan.views, np.zeros((1, 2)))
    assert rows_per_source(spec("yaw")) == 2
    np.testing.assert_allclose(plan_source(spec("view"), "a", None).gazes, np.zeros((1, 2)))


def test_sampled_grid_is_deterministic_per_source_and_within_range():
    a1 = plan_source(spec(sample=50, seed=1), "src-a", None)
    a2 = plan_source(spec(sample=50, seed=1), "src-a", None)
    b = plan_source(spec(sample=50, seed=1), "src-b", None)
    np.testing.assert_array_equal(a1.gazes, a2.gazes)
    assert not np.allclose(a1.gazes, b.gazes)
    assert len(a1.pairs) == rows_per_source(spec(sample=50)) == 50
    deg = np.degrees(a1.gazes)
    assert deg[:, 0].min() >= -30 and deg[:, 0].max() <= 30 and deg[:, 1].min() >= -40 and deg[:, 1].max() <= 40
    vdeg = np.degrees(a1.views)
    assert vdeg[:, 0].min() >= 0 and vdeg[:, 0].max() <= 10 and np.abs(vdeg[:, 1]).max() <= 20


def test_ranges_are_bounded():
    with pytest.raises(ValueError, match=r"--pitch -90:10:3: degrees must lie in \(-90, 90\)"):
        GridSpec.parse("pitch", "-90:10:3", "0:0:1", "0:0:1", "0:0:1")
    with pytest.raises(ValueError, match="--view-pitch"):
        GridSpec.parse("view", "0:0:1", "0:0:1", "0:95:2", "0:0:1")
    with pytest.raises(ValueError, match=r"--yaw .*\[-180, 180\]"):
        GridSpec.parse("yaw", "0:0:1", "-200:0:2", "0:0:1", "0:0:1")
    with pytest.raises(ValueError, match="--view-yaw"):
        GridSpec.parse("view", "0:0:1", "0:0:1", "0:0:1", "nan:0:2")
    assert GridSpec.parse("view", "0:0:1", "-180:180:3", "-89.9:10:2", "-180:180:2").view_pitch_bounds() == pytest.approx(
        (np.radians(-89.9), np.radians(10)))
    assert spec("pitch,yaw").view_pitch_bounds() == (0.0, 0.0)  # views not swept: no offsets


def test_head_pitch_plus_view_pitch_stays_inside_90_degrees_and_yaw_wraps():
    bounds = (np.radians(-10), np.radians(20))
    assert pose_problem(np.radians([60.0, 0.0]), bounds) == ""
    assert "reaches 90.0 deg" in pose_problem(np.radians([70.0, 0.0]), bounds)
    assert "reaches 95.0 deg" in pose_problem(np.radians([-85.0, 0.0]), bounds)
    poses = rendered_poses(np.radians([10.0, 170.0]), np.radians([[0.0, 20.0], [5.0, -20.0]]))
    np.testing.assert_allclose(np.degrees(poses), [[10.0, -170.0], [15.0, 150.0]])  # 190 deg is -170 deg
