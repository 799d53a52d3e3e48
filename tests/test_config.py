"""Config loading: presets, overrides and validation errors that name the key."""

import pytest

from gazegen.config import CONFIG_DIR, ConfigError, ModelConfig, RenderConfig, SynthHeadsConfig, load_config, to_dict


def test_defaults_and_nested_override(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("subjects = 7\n[rig]\nviews = 9\n[gaze]\ntarget_mm = [500, 900]\n")
    cfg = load_config(SynthHeadsConfig, path, ["rig.max_yaw_deg=45", "seed=3"])
    assert (cfg.subjects, cfg.rig.views, cfg.rig.max_yaw_deg, cfg.seed) == (7, 9, 45.0, 3)
    assert cfg.gaze.target_mm == (500.0, 900.0) and isinstance(cfg.gaze.target_mm[0], float)
    assert cfg.gaze.max_yaw_deg == SynthHeadsConfig().gaze.max_yaw_deg  # untouched default
    with pytest.raises(Exception):
        cfg.subjects = 3  # frozen


def test_camera_keeps_field_of_view_at_resolution():
    cfg = load_config(SynthHeadsConfig, None, ["resolution=64"])
    assert cfg.camera.resolution == 64
    assert cfg.camera.focal / 64 == pytest.approx(cfg.normalisation.focal / cfg.normalisation.resolution)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["subjectz=3"], "command line: --set subjectz=3: unknown key 'subjectz'; known: subjects,"),
        (["rig.view=3"], "command line: --set rig.view=3: unknown key 'rig.view'; known in rig: views,"),
        (["rig.nosuch.key=3"], "command line: --set rig.nosuch.key=3: unknown key 'rig.nosuch'"),  # the override, not "defaults"
        (["subjects=0"], "command line: --set subjects=0: must be in [1, 100000], got 0"),
        (["subjects=2.5"], "command line: --set subjects=2.5: expected int, got float"),
        (["gaze.converge=1"], "command line: --set gaze.converge=1: expected bool"),
        (["gaze.target_mm=[1, 2, 3]"], "command line: --set gaze.target_mm=[1, 2, 3]: expected 2 values"),
        (["rig=3"], "command line: --set rig=3: expected a table"),
        (["gaze={target_mm=[1, 2, 3]}"], "command line: --set gaze={target_mm=[1, 2, 3]}: gaze.target_mm: expected 2 values"),
        (["subjects"], "expected key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(SynthHeadsConfig, None, overrides)
    assert needle in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("samples_coarse = = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(RenderConfig, bad)
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(RenderConfig, tmp_path / "missing.toml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("samples_coarse = 'many'")
    with pytest.raises(ConfigError, match=r"wrong.toml: samples_coarse: expected int, got str"):
        load_config(RenderConfig, wrong)


def test_file_errors_name_the_file_and_overrides_name_the_option(tmp_path):
    """A wrong value is blamed on where it was written: the file and its key, or the override as typed
    (the option's name when it was typed as one); never "defaults" or "top level"."""
    preset = tmp_path / "heads.toml"
    preset.write_text("subjects = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, preset)
    assert str(err.value) == f"{preset}: subjects: must be in [1, 100000], got 0"
    preset.write_text("nosuch = 1\n")
    with pytest.raises(ConfigError, match=rf"^{preset}: unknown key 'nosuch'; known: subjects,"):
        load_config(SynthHeadsConfig, preset)
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, None, ["nosuch.key=1"])
    assert str(err.value).startswith("command line: --set nosuch.key=1: unknown key 'nosuch'; known: ")
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, None, ["seed=-1"], names={"seed": "--seed"})
    assert str(err.value) == "command line: --seed: must be >= 0, got -1"


def test_string_override_and_to_dict():
    cfg = load_config(RenderConfig, None, ["white_background=true", "ray_end=4"])
    assert cfg.white_background is True and cfg.ray_end == 4.0
    assert to_dict(cfg)["ray_end"] == 4.0


def test_a_resumed_checkpoint_takes_the_configs_ray_batching_but_keeps_its_architecture():
    from dataclasses import replace

    from gazegen.config.model import RENDER_RUNTIME, with_runtime_render

    tiny = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    saved = replace(tiny, render=replace(tiny.render, chunk_rays=65536, empty_opacity=0.0, block_points=0, plane_channels=8))
    today = replace(tiny, render=replace(tiny.render, chunk_rays=1024, empty_opacity=0.01, block_points=512,
                                         source_background=True))
    merged = with_runtime_render(saved, today)
    r = merged.render
    assert (r.chunk_rays, r.empty_opacity, r.block_points, r.source_background) == (1024, 0.01, 512, True)
    assert merged.render.plane_channels == 8 and merged.image_resolution == saved.image_resolution
    assert set(RENDER_RUNTIME) == {"chunk_rays", "empty_opacity", "block_points", "source_background"}


@pytest.mark.parametrize("override,needle", [
    ("optim.lr_encoder=nan", "command line: --set optim.lr_encoder=nan: must be a finite number in [0.0, 1.0], got nan"),
    ("loss.depth_weight=nan", "command line: --set loss.depth_weight=nan: must be a finite number >= 0.0, got nan"),  # no upper bound
    ("loss.depth_weight=-nan", "command line: --set loss.depth_weight=-nan: must be a finite number >= 0.0, got nan"),
    ("optim.lr_encoder=inf", "command line: --set optim.lr_encoder=inf: must be a finite number in [0.0, 1.0], got inf"),
    ("loss.depth_weight=inf", "command line: --set loss.depth_weight=inf: must be a finite number >= 0.0, got inf"),  # past the open end
])
def test_nan_is_out_of_every_range(override, needle):
    """NaN compares false with every bound, and an infinity passes an open one: both are refused as a value out of
    range is, naming the override."""
    from gazegen.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert str(err.value) == needle


def test_nan_in_a_file_names_the_file_and_the_key(tmp_path):
    preset = tmp_path / "heads.toml"
    preset.write_text("[rig]\nmax_yaw_deg = nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, preset)
    assert str(err.value) == f"{preset}: rig.max_yaw_deg: must be a finite number in [0.0, 85.0], got nan"


def test_a_config_that_is_no_toml_file_is_named_in_one_line(tmp_path):
    binary = tmp_path / "subject0000.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00\x81")  # not UTF-8
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, binary)
    assert str(err.value) == f"{binary}: not a text file, so not a TOML config (give a .toml file)"
    with pytest.raises(ConfigError) as err:
        load_config(SynthHeadsConfig, tmp_path)
    assert str(err.value) == f"{tmp_path}: a folder, not a config file (give a .toml file)"
    with pytest.raises(ConfigError, match=r"x\.toml: cannot be read \(Not a directory\)"):
        load_config(SynthHeadsConfig, binary / "x.toml")  # a file on the way


def test_an_empty_model_preset_is_refused_naming_the_override():
    from gazegen.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, ["model="])
    assert str(err.value) == "command line: --set model=: empty; name a model preset (configs/model/*.toml, e.g. model/demo.toml)"
