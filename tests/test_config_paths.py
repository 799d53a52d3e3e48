"""Config files named on the command line (gazegen/config/loader.py ``find_config``): the commands'
default presets (`gazegen train`'s configs/train/demo.toml, `gazegen bench`'s configs/model/tiny.toml)
and the documented ones work from any folder, a user's own file of the same name wins, and a
path found nowhere keeps its "config file not found".

Every test runs in an empty folder (``monkeypatch.chdir(tmp_path)``); the oracle is the preset
loaded by its absolute path under CONFIG_DIR.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gazegen.cli import app
from gazegen.config import CONFIG_DIR, ConfigError, ModelConfig, TrainConfig, find_config, load_config, to_dict
from gazegen.config import loader

runner = CliRunner()


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_relative_preset_missing_here_is_read_from_the_repositorys_configs(elsewhere):
    tiny = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    assert find_config("configs/model/tiny.toml") == CONFIG_DIR / "model" / "tiny.toml"
    assert load_config(ModelConfig, "configs/model/tiny.toml") == tiny
    assert load_config(ModelConfig, "model/tiny.toml") == tiny
    assert load_config(TrainConfig, "configs/train/demo.toml") == load_config(TrainConfig, CONFIG_DIR / "train" / "demo.toml")


def test_a_users_own_file_wins_and_a_missing_one_is_not_found(elsewhere, monkeypatch):
    own = elsewhere / "configs" / "model" / "tiny.toml"
    own.parent.mkdir(parents=True)
    text = (CONFIG_DIR / "model" / "tiny.toml").read_text()
    assert text.count("\nhigh_hidden = 8\n") == 1
    own.write_text(text.replace("\nhigh_hidden = 8\n", "\nhigh_hidden = 4\n"))
    assert find_config("configs/model/tiny.toml").resolve() == own.resolve()
    assert load_config(ModelConfig, "configs/model/tiny.toml").high_hidden == 4
    for missing in ("configs/model/huge.toml", "huge.toml", str(elsewhere / "model" / "tiny.toml")):
        with pytest.raises(ConfigError, match=f"^{missing}: config file not found$"):
            load_config(ModelConfig, missing)
    monkeypatch.setattr(loader, "CONFIG_DIR", elsewhere / "installed-without-configs")
    with pytest.raises(ConfigError, match="^configs/train/demo.toml: config file not found$"):
        load_config(TrainConfig, "configs/train/demo.toml")


def test_the_commands_defaults_work_from_another_folder(elsewhere, monkeypatch):
    """`gazegen train` gets past its default config to the data (the store named is not one);
    `gazegen bench`'s default preset reaches the benchmark as the repository's tiny preset."""
    result = runner.invoke(app, ["train", "--data", str(elsewhere / "nostore"), "--out", str(elsewhere / "run")])
    assert result.exit_code == 2 and "config file not found" not in result.output
    assert f"error: {elsewhere / 'nostore'}: no such file or folder" in result.output  # as estimator and evaluate say

    import gazegen.benchmark

    def preset_only(preset, *args, **kwargs):  # the model preset the command would measure, not the measurement
        return to_dict(load_config(ModelConfig, preset))

    monkeypatch.setattr(gazegen.benchmark, "bench_model", preset_only)
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(to_dict(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"))))
