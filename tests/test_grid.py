"""The synthesis grid: typed ranges checked at load, radians, full grids, sampled grids, determinism."""

import numpy as np
import pytest

from gazegen.config import CONFIG_DIR, ConfigError, GridAxes, GridSpec, PitchRange, YawRange, load_synth_config
from gazegen.config.synth import RANGE_AXES
from gazegen.pipelines.grid import plan_source, pose_problem, rendered_poses, rows_per_source, turns_views

RANGES = {"pitch": "-30:30:3", "yaw": "-40:40:2", "view_pitch": "0:10:2", "view_yaw": "-20:20:3"}


def spec(axes="pitch,yaw,view", sample=0, seed=0):
    swept = {k: v for k, v in RANGES.items() if RANGE_AXES[k] in axes.split(",")}  # a range of an axis not swept is refused
    return load_synth_config(None, grid=axes, sample=sample, seed=seed, **swept).grid_spec


def test_range_values_in_radians_both_ends_included():
    np.testing.assert_allclose(PitchRange.from_text("-30:30:5").values(), np.radians([-30, -15, 0, 15, 30]))
    np.testing.assert_allclose(YawRange.from_text("7:7:1").values(), np.radians([7.0]))
    for bad in ["1:2", "a:b:c", "0:10:0", "0:10:1"]:
        with pytest.raises(ConfigError, match="pitch"):
            load_synth_config(None, pitch=bad)
    with pytest.raises(ConfigError, match="grid"):
        load_synth_config(None, grid="pitch,roll")


@pytest.mark.parametrize(
    ("key", "text", "why"),
    [("pitch", "10:-10:3", "start must not exceed stop"), ("yaw", "-20:20:0", "count must be >= 1"),
     ("view_pitch", "a:10:2", "expected start:stop:count"), ("view_yaw", "-10:ten:2", "expected start:stop:count"),
     ("pitch", "-10:10:2.5", "expected start:stop:count"),
     ("pitch", "1e400:0:2", r"degrees must lie in \(-90, 90\)")],  # inf: out of range, not merely past the stop
)  # fmt: skip
def test_a_bad_range_is_a_config_error_naming_its_key_at_load(key, text, why):
    option = "--" + key.replace("_", "-")  # the typed flag is named as the user typed it
    with pytest.raises(ConfigError, match=f"^command line: {option}: .*{why}"):
        load_synth_config(None, **{key: text})
    typed = f"{key}={text!r}".replace("'", '"')
    with pytest.raises(ConfigError, match=f"^command line: --set {typed}: .*{why}"):  # --set and TOML keys are checked the same way
        load_synth_config(None, [typed])


def test_degrees_become_radians_in_closed_form():
    """start + i (stop - start) / (count - 1) degrees, times pi / 180, for every grid value and draw."""
    axis = YawRange.from_text("-45:135:7")
    i = np.arange(7)
    np.testing.assert_allclose(axis.values(), (-45 + i * 30) * np.pi / 180, rtol=0, atol=1e-15)
    assert axis.bounds() == pytest.approx((-np.pi / 4, 3 * np.pi / 4), abs=1e-15)
    draws = axis.draw(np.random.default_rng(0), 1000)
    assert draws.min() >= -np.pi / 4 and draws.max() <= 3 * np.pi / 4
    cfg = load_synth_config(None, grid="pitch,view", pitch="-60:60:5", view_pitch="-20:40:4")
    plan = plan_source(cfg.grid_spec, "a", np.array([0.3, -0.2]))
    np.testing.assert_allclose(np.unique(plan.gazes[:, 0]), np.arange(-60, 61, 30) * np.pi / 180, atol=1e-15)
    np.testing.assert_allclose(plan.gazes[:, 1], -0.2)  # yaw not swept: the source's
    np.testing.assert_allclose(np.unique(plan.views[:, 0]), np.arange(-20, 41, 20) * np.pi / 180, atol=1e-15)
    assert cfg.grid_spec.view_pitch_bounds() == pytest.approx((-np.pi / 9, 2 * np.pi / 9), abs=1e-15)


@pytest.mark.parametrize(
    ("axes", "sample"), [("pitch,yaw,view", 0), ("yaw", 0), ("view", 0), ("pitch,view", 0), ("pitch,yaw,view", 7), ("yaw", 3)]
)
def test_rows_per_source_is_what_the_plans_yield(axes, sample):
    """Counted from the plans' arrays of several sources (known and unknown gaze): every row pair is distinct."""
    expected = rows_per_source(spec(axes, sample=sample))
    for source_id, gaze in [("a", None), ("b", np.array([0.1, -0.3])), ("c/d.png#000003", np.array([-0.2, 0.0]))]:
        plan = plan_source(spec(axes, sample=sample), source_id, gaze)
        pairs = {(int(g), int(v)) for g, v in plan.pairs}
        assert len(pairs) == len(plan.pairs) == expected
        assert plan.pairs[:, 0].max() < len(plan.gazes) and plan.pairs[:, 1].max() < len(plan.views)
        if not sample:  # the full grid: every gaze with every view, nothing else
            assert pairs == {(g, v) for g in range(len(plan.gazes)) for v in range(len(plan.views))}


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
    with pytest.raises(ConfigError, match=r"pitch: -90:10:3: degrees must lie in \(-90, 90\)"):
        load_synth_config(None, pitch="-90:10:3")
    with pytest.raises(ConfigError, match="--view-pitch"):
        load_synth_config(None, view_pitch="0:95:2")
    with pytest.raises(ConfigError, match=r"yaw: .*\[-180, 180\]"):
        load_synth_config(None, yaw="-200:0:2")
    with pytest.raises(ConfigError, match="--view-yaw"):
        load_synth_config(None, view_yaw="nan:0:2")
    wide = GridSpec(GridAxes(("view",)), PitchRange(0.0, 0.0, 1), YawRange(-180.0, 180.0, 3), PitchRange(-89.9, 10.0, 2),
                    YawRange(-180.0, 180.0, 2))  # fmt: skip
    assert wide.view_pitch_bounds() == pytest.approx((np.radians(-89.9), np.radians(10)))
    assert spec("pitch,yaw").view_pitch_bounds() == (0.0, 0.0)  # views not swept: no offsets


def test_ranges_are_recorded_as_written():
    cfg = load_synth_config(None, grid="pitch, yaw,view", pitch="-7.5:7.5:3", view_yaw="-30:30:5")
    assert (str(cfg.grid), str(cfg.pitch), str(cfg.view_yaw)) == ("pitch,yaw,view", "-7.5:7.5:3", "-30:30:5")


def test_an_axis_named_twice_and_a_range_whose_values_repeat_are_refused():
    """`--grid view,view` and `--pitch 0:0:2` (two steps from 0 to 0) would render the same rows twice."""
    with pytest.raises(ConfigError, match=r"^command line: --grid: 'view,view': view named more than once"):
        load_synth_config(None, grid="view,view")
    with pytest.raises(ValueError, match="pitch, view named more than once"):
        GridAxes.from_text("pitch,view,yaw,view,pitch")
    with pytest.raises(ConfigError, match=r"^command line: --pitch: 0:0:2: its 2 values repeat"):
        load_synth_config(None, pitch="0:0:2")
    with pytest.raises(ConfigError, match=r"^command line: --set view_yaw='5:5:3': its 3 values repeat"):
        load_synth_config(None, ["view_yaw='5:5:3'"])
    for good in ("0:0:1", "-1e-3:1e-3:3", "-30:30:61"):  # one value; distinct values however close
        values = np.degrees(PitchRange.from_text(good).values())
        assert len(np.unique(values)) == len(values) == int(good.split(":")[2])


def test_a_range_typed_for_an_axis_the_grid_does_not_sweep_is_refused():
    """`--grid yaw --pitch ... --view-yaw ...` would drop --pitch and --view-yaw without a word."""
    with pytest.raises(ConfigError) as refused:
        load_synth_config(None, grid="yaw", pitch="-10:10:3", yaw="-10:10:2", view_yaw="-20:20:3")
    assert str(refused.value) == ("command line: --pitch -10:10:3, --view-yaw -20:20:3: --grid yaw does not sweep pitch or view, "
                                  "so these options would be ignored: add the axes to --grid or leave the options out")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^command line: --set view_pitch=\"0:10:2\": --grid pitch does not sweep view, so this option"):
        load_synth_config(None, ['view_pitch="0:10:2"'], grid="pitch")
    with pytest.raises(ConfigError, match=r"^command line: --yaw -5:5:2: the grid 'pitch' does not sweep yaw"):
        load_synth_config(None, ["grid='pitch'"], yaw="-5:5:2")
    # a preset's ranges may cover the axes its user leaves out; so may the defaults
    cfg = load_synth_config(CONFIG_DIR / "synth" / "demo.toml", grid="yaw", yaw="-10:10:2")
    assert str(cfg.grid) == "yaw" and str(cfg.pitch) == "-20:20:3"
    assert str(load_synth_config(None, grid="pitch,view", pitch="-5:5:2", view_pitch="0:10:2").grid) == "pitch,view"


def test_turns_views_means_a_non_zero_view_offset():
    assert turns_views(spec()) and turns_views(spec("view"))
    assert not turns_views(spec("pitch,yaw"))
    assert not turns_views(load_synth_config(None, grid="pitch,view", view_yaw="0:0:1").grid_spec)  # view swept, offsets 0
    assert turns_views(load_synth_config(None, grid="view", view_pitch="0:10:2", view_yaw="0:0:1").grid_spec)


def test_head_pitch_plus_view_pitch_stays_inside_90_degrees_and_yaw_wraps():
    bounds = (np.radians(-10), np.radians(20))
    assert pose_problem(np.radians([60.0, 0.0]), bounds) == ""
    assert "reaches 90.0 deg" in pose_problem(np.radians([70.0, 0.0]), bounds)
    assert "reaches 95.0 deg" in pose_problem(np.radians([-85.0, 0.0]), bounds)
    poses = rendered_poses(np.radians([10.0, 170.0]), np.radians([[0.0, 20.0], [5.0, -20.0]]))
    np.testing.assert_allclose(np.degrees(poses), [[10.0, -170.0], [15.0, 150.0]])  # 190 deg is -170 deg
