"""Checkpoints (save -> load identity, clear errors), on the tiny preset; the Live3D importer: test_live3d.py."""

import json
import os
import re
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from gazegen.checkpoint import (
    CONFIG_FILE,
    TRAIN_STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_weights,
    checkpoint_hash,
    checkpoint_normalisation,
    load_checkpoint,
    load_pretrained,
    load_train_state,
    read_header,
    read_model_config,
    save_pretrained,
)
from gazegen.config import EstimatorNetConfig, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera
from gazegen.metrics.estimator import GazeEstimator
from gazegen.models.livegaze import LiveGaze
from gazegen.weights import SHIPPED_DIR

from test_model import TINY, build  # noqa: E402  (the tiny LiveGaze, seeded)


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load_config(ModelConfig, TINY)


def run(model: LiveGaze):
    g = torch.Generator().manual_seed(3)
    s = model.cfg.image_resolution
    image = torch.rand(2, 3, s, s, generator=g) * 2 - 1
    gaze = (torch.rand(2, 2, generator=g) - 0.5) * 1.2
    cameras = head_pose_to_camera((torch.rand(2, 2, generator=g) - 0.5) * 0.6, NormalisationConfig()).float()
    with torch.no_grad():
        return model(image, gaze, cameras)


@pytest.fixture()
def saved(cfg, tmp_path):
    model = build(cfg)
    with torch.no_grad():
        model.gaze_fusion.proj_out.weight.normal_(0, 0.1)  # a trained-looking gaze branch
    return model, save_pretrained(tmp_path / "ckpt", model)


# --------------------------------------------------------------------------- one format, every network


ESTIMATOR = EstimatorNetConfig(resolution=32, width=8, blocks=(1, 1))


def network(kind: str, cfg: ModelConfig) -> torch.nn.Module:
    """A LiveGaze or a GazeEstimator with non-trivial weights (the estimator's heads start at zero)."""
    torch.manual_seed(0)
    model = build(cfg) if kind == "LiveGaze" else GazeEstimator(ESTIMATOR).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("kind,version", [("LiveGaze", 1), ("GazeEstimator", 2)])
def test_every_network_round_trips_through_one_format(cfg, tmp_path, kind, version):
    model = network(kind, cfg)
    path = save_pretrained(tmp_path / "ckpt", model, metadata={"note": kind})
    header = json.loads((path / CONFIG_FILE).read_text())
    assert (header["class"], header["format_version"], header["metadata"]) == (kind, version, {"note": kind})
    cls = type(model)
    loaded = load_pretrained(path, cls)
    assert type(loaded) is cls and loaded.cfg == model.cfg and not loaded.training
    assert read_header(path, cls).metadata == {"note": kind} and read_header(path, cls).config == model.cfg
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items()) and loaded.state_dict().keys() == own.keys()
    other = GazeEstimator if cls is LiveGaze else LiveGaze
    with pytest.raises(CheckpointError, match=rf"{path / CONFIG_FILE}: class '{kind}' is not '{other.__name__}'"):
        load_pretrained(path, other)


def _wrong_class(path):
    header = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps(header | {"class": "Other"}))


def _wrong_version(path):
    header = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps(header | {"format_version": 99}))


def _truncated_weights(path):
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["LiveGaze", "GazeEstimator"])
@pytest.mark.parametrize(
    "damage,name,needle",
    [
        (_wrong_class, CONFIG_FILE, r"class 'Other' is not"),
        (_wrong_version, CONFIG_FILE, r"format_version 99 is not supported"),
        (lambda p: (p / CONFIG_FILE).unlink(), CONFIG_FILE, r"missing"),
        (lambda p: (p / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, r"missing"),
        (_truncated_weights, WEIGHTS_FILE, r"not a readable safetensors file"),
    ],
)
def test_a_damaged_checkpoint_names_its_file(cfg, tmp_path, kind, damage, name, needle):
    model = network(kind, cfg)
    path = save_pretrained(tmp_path / "ckpt", model)
    damage(path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path / name))}: {needle}"):
        load_pretrained(path, type(model))


def test_the_shipped_demo_prior_loads():
    """weights/demo-prior was written by an earlier gazegen (format 1): it must load unchanged."""
    path = SHIPPED_DIR / "demo-prior"
    header = json.loads((path / CONFIG_FILE).read_text())
    assert (header["class"], header["format_version"]) == ("LiveGaze", 1)
    model = load_checkpoint(path)
    assert model.cfg == ModelConfig.from_dict(header["config"]) and model.cfg.image_resolution == 128
    assert read_header(path, LiveGaze).metadata == header["metadata"]


# --------------------------------------------------------------------------- save / load


def test_save_load_reproduces_outputs_exactly(cfg, tmp_path):
    model = build(cfg)
    with torch.no_grad():
        model.gaze_fusion.proj_out.weight.normal_(0, 0.1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_state = {"step": 7, "optimizer": optimiser.state_dict(), "torch_rng": torch.get_rng_state()}
    path = save_pretrained(tmp_path / "ckpt", model, train_state=train_state, metadata={"epoch": 3})
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind

    loaded = load_checkpoint(path)
    assert loaded.cfg == cfg and not loaded.training
    a, b = run(model), run(loaded)
    assert all(x is y is None or torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    state = load_train_state(path)
    assert state["step"] == 7 and torch.equal(state["torch_rng"], train_state["torch_rng"])
    assert json.loads((path / CONFIG_FILE).read_text())["metadata"] == {"epoch": 3}


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_a_checkpoint_has_the_modes_of_an_ordinary_write(cfg, tmp_path, umask, folder, file):
    """Not the private 0700 / 0600 of a temporary folder and of safetensors' file: others may read what the umask lets them."""
    old = os.umask(umask)
    try:
        path = save_pretrained(tmp_path / "ckpt", build(cfg), train_state={"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == dict.fromkeys(
        [CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE], file)


def test_save_replaces_an_existing_checkpoint(cfg, tmp_path):
    path = save_pretrained(tmp_path / "ckpt", build(cfg, seed=0))
    save_pretrained(path, build(cfg, seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert torch.equal(load_checkpoint(path).decoder.net[0].weight, build(cfg, seed=1).decoder.net[0].weight)
    assert load_train_state(path) is None


def test_save_replaces_only_a_checkpoint_never_a_folder_of_other_files(cfg, tmp_path):
    """A folder holding anything but a checkpoint's files (and the caller's ``beside``) is refused before anything is
    written, and nothing in it is lost."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "photos").mkdir()
    with pytest.raises(CheckpointError, match=r"mine: holds notes\.txt, photos, which is no checkpoint's: not replaced"):
        save_pretrained(folder, build(cfg))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "photos"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left
    path = save_pretrained(tmp_path / "ckpt", build(cfg, seed=0))
    (path / "report.json").write_text("{}")  # a file its caller writes beside the checkpoint
    with pytest.raises(CheckpointError, match="holds report.json"):
        save_pretrained(path, build(cfg, seed=1))
    save_pretrained(path, build(cfg, seed=1), beside=("report.json",))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="afile: not a folder"):
        save_pretrained(tmp_path / "afile", build(cfg))


def test_truncated_weights(saved):
    _, path = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


def test_wrong_shape_names_the_tensor(saved):
    _, path = saved
    state = load_file(str(path / WEIGHTS_FILE))
    state["decoder.net.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(path / WEIGHTS_FILE))
    needle = r"model\.safetensors: tensor 'decoder\.net\.0\.weight' has shape \(3, 3\)"
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(path)


def test_missing_and_unknown_tensors(saved):
    _, path = saved
    state = load_file(str(path / WEIGHTS_FILE))
    del state["superres.style"]
    save_file(state, str(path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=r"missing tensors for .*superres\.style"):
        load_checkpoint(path)
    state["superres.style"] = torch.zeros(16)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=r"tensors unknown to .*extra\.weight"):
        load_checkpoint(path)


def test_config_and_shapes_disagree(saved):
    _, path = saved
    header = json.loads((path / CONFIG_FILE).read_text())
    header["config"]["gaze_hidden"] = 48
    (path / CONFIG_FILE).write_text(json.dumps(header))
    needle = r"tensor 'gaze_encoder\.mlp\.0\.bias' has shape \(32,\), .* expects \(48,\)"
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda h: h.update(format_version=99), r"config\.json: format_version 99 is not supported"),
        (lambda h: h.update({"class": "Other"}), r"config\.json: class 'Other' is not 'LiveGaze'"),
        (lambda h: h["config"].update(gaze_tokens=0), r"config\.json: config: .*gaze_tokens: must be in \[1, 256\], got 0"),
        (lambda h: h["config"].update(colour="red"), r"config\.json: config: .*unknown key 'colour'"),
    ],
)
def test_bad_config_json(saved, edit, needle):
    _, path = saved
    header = json.loads((path / CONFIG_FILE).read_text())
    edit(header)
    (path / CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(path)


def test_unparsable_config_json(saved):
    _, path = saved
    (path / CONFIG_FILE).write_text('{"format_version": 1,')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        read_model_config(path)


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_file(saved, name):
    _, path = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: missing"):
        load_checkpoint(path)


def test_missing_directory_and_bad_train_state(saved, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nowhere")
    _, path = saved
    (path / TRAIN_STATE_FILE).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"train_state\.pt: not a readable training state"):
        load_train_state(path)


def test_a_checkpoint_carries_its_normalisation(cfg, tmp_path):
    norm = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224)
    path = save_pretrained(tmp_path / "c", build(cfg), metadata={"step": 3}, normalisation=norm)
    assert checkpoint_normalisation(path) == norm
    assert json.loads((path / CONFIG_FILE).read_text())["metadata"]["step"] == 3
    assert checkpoint_normalisation(save_pretrained(tmp_path / "bare", build(cfg))) is None
    header = json.loads((path / CONFIG_FILE).read_text())
    header["metadata"]["normalisation"]["distance_mm"] = -1.0
    (path / CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"config.json: metadata.normalisation: .*distance_mm"):
        checkpoint_normalisation(path)


def test_the_weights_header_alone_names_the_tensors_or_the_damage(cfg, tmp_path):
    """``check_weights`` (synthesis's driver) reads the header only: the model's tensor names, or for a
    truncated file the CheckpointError that loading would raise."""
    model = build(cfg)
    path = save_pretrained(tmp_path / "ckpt", model)
    assert sorted(check_weights(path)) == sorted(model.state_dict())
    _truncated_weights(path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path / WEIGHTS_FILE))}: not a readable safetensors file"):
        check_weights(path)


def test_checkpoint_hash_covers_the_config_and_the_weights_as_the_cards_say(saved, tmp_path):
    """One sha256 over config.json then model.safetensors (hashlib on the two files' bytes, the
    oracle): not the weights file's sha256, and it moves with the config alone. The shipped cards
    that give it give the value the function computes."""
    import hashlib

    config, weights = ((tmp_path / "ckpt" / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE))
    assert checkpoint_hash(tmp_path / "ckpt") == hashlib.sha256(config + weights).hexdigest()
    assert checkpoint_hash(tmp_path / "ckpt") != hashlib.sha256(weights).hexdigest()
    (tmp_path / "ckpt" / CONFIG_FILE).write_bytes(config + b"\n")
    assert checkpoint_hash(tmp_path / "ckpt") == hashlib.sha256(config + b"\n" + weights).hexdigest()
    cards = {card.parent.name: re.search(r"checkpoint_hash: `([0-9a-f]{64})`", card.read_text())
             for card in sorted(SHIPPED_DIR.glob("*/MODEL_CARD.md"))}
    given = {name: found.group(1) for name, found in cards.items() if found}
    assert {"demo-prior", "demo-livegaze"} <= set(given)
    assert given == {name: checkpoint_hash(SHIPPED_DIR / name) for name in given}


def test_a_checkpoint_file_given_for_its_folder_names_the_folder(saved, tmp_path):
    """Once "<ckpt>/model.safetensors: checkpoint directory not found", though the file is there: now the
    path is said to be a file, and the folder holding it (the checkpoint) is the one to give."""
    _, path = saved
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path / name)
        assert str(caught.value) == f"{path / name}: a file; give the checkpoint folder (config.json + model.safetensors), e.g. {path}"
    (tmp_path / "weights.pt").write_bytes(b"x")  # some other file: its folder is no checkpoint, so none is suggested
    with pytest.raises(CheckpointError, match=r"weights\.pt: a file; give the checkpoint folder \(config\.json \+ model\.safetensors\)$"):
        read_header(tmp_path / "weights.pt", LiveGaze)


def test_synthesize_given_the_weights_file_says_so_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from gazegen.cli import app

    weights = SHIPPED_DIR / "demo-livegaze" / WEIGHTS_FILE
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(app, ["synthesize", str(weights), str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output == (f"error: {weights}: a file; give the checkpoint folder (config.json + model.safetensors), "
                             f"e.g. {weights.parent}\n")
