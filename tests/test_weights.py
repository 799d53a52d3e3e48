"""Pretrained-weight registry and finder; VGG16 parameter names against torchvision's published layout."""

import dataclasses
import hashlib
import re

import pytest
import torch

from gazegen import weights as W
from gazegen.metrics.vgg import VGG16Features, load_vgg16

# torchvision's vgg16 `features`: conv layers at these indices (ReLU after each, max-pools at
# 4, 9, 16, 23, 30), so the published state dict's features.* keys are exactly these.
TORCHVISION_VGG16_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An empty $GAZEGEN_WEIGHTS and an empty torch hub dir (nothing of the real machine leaks in)."""
    env, hub = tmp_path / "weights", tmp_path / "hub"
    env.mkdir()
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv(W.ENV_VAR, str(env))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return env, hub / "checkpoints"


def fake_spec(monkeypatch, name, path):
    """Point the registry entry `name` at the hash and size of the file at `path`."""
    data = path.read_bytes()
    spec = dataclasses.replace(W.WEIGHTS[name], sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(W.WEIGHTS, name, spec)
    return spec


def test_registry_is_consistent():
    assert {"vgg16", "lpips_vgg", "fid_inception", "live3d"} <= set(W.WEIGHTS)
    for name, spec in W.WEIGHTS.items():
        assert spec.name == name and spec.url and spec.used_by
        if spec.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
            if spec.hash_prefix:  # the published name carries the hash's prefix
                assert spec.sha256.startswith(spec.hash_prefix), name
    assert W.WEIGHTS["vgg16"].filename == "vgg16-397923af.pth" and W.WEIGHTS["vgg16"].hash_prefix == "397923af"
    assert W.WEIGHTS["fid_inception"].filename == "pt_inception-2015-12-05-6726825d.pth"
    assert W.WEIGHTS["fid_inception"].hash_prefix == "6726825d"
    assert W.WEIGHTS["lpips_vgg"].filename == "vgg.pth" and W.WEIGHTS["lpips_vgg"].hash_prefix is None


def test_found_in_env_dir_before_hub_cache(dirs, monkeypatch):
    env, hub = dirs
    (env / "vgg.pth").write_bytes(b"env copy")
    (hub / "vgg.pth").write_bytes(b"hub copy")
    fake_spec(monkeypatch, "lpips_vgg", env / "vgg.pth")
    assert W.find_weight("lpips_vgg") == env / "vgg.pth"


def test_found_in_hub_cache(dirs, monkeypatch):
    _, hub = dirs
    (hub / "vgg.pth").write_bytes(b"hub copy")
    fake_spec(monkeypatch, "lpips_vgg", hub / "vgg.pth")
    assert W.find_weight("lpips_vgg") == hub / "vgg.pth"
    monkeypatch.delenv(W.ENV_VAR)  # no $GAZEGEN_WEIGHTS at all: the hub cache alone
    assert W.find_weight("lpips_vgg") == hub / "vgg.pth"


def test_env_var_takes_several_folders(dirs, tmp_path, monkeypatch):
    env, _ = dirs
    second = tmp_path / "second"
    second.mkdir()
    (second / "vgg.pth").write_bytes(b"x")
    fake_spec(monkeypatch, "lpips_vgg", second / "vgg.pth")
    monkeypatch.setenv(W.ENV_VAR, f"{env}:{second}")
    assert W.find_weight("lpips_vgg") == second / "vgg.pth"


def test_missing_names_the_file_the_folders_and_the_source(dirs):
    env, hub = dirs
    with pytest.raises(W.MissingWeightsError) as err:
        W.find_weight("fid_inception")
    msg = str(err.value)
    for needle in ("pt_inception-2015-12-05-6726825d.pth", str(env), str(hub), W.WEIGHTS["fid_inception"].url, W.ENV_VAR):
        assert needle in msg
    assert isinstance(err.value, FileNotFoundError)


def test_bad_checksum_and_bad_size_name_the_file(dirs, monkeypatch):
    env, _ = dirs
    path = env / "vgg16-397923af.pth"
    path.write_bytes(b"not the published file")
    with pytest.raises(W.WeightsChecksumError, match="vgg16-397923af.pth.*553433881") as err:  # the real entry
        W.find_weight("vgg16")
    assert err.value.what == "size"
    spec = fake_spec(monkeypatch, "vgg16", path)
    monkeypatch.setitem(W.WEIGHTS, "vgg16", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(W.WeightsChecksumError, match="vgg16-397923af.pth") as err:
        W.find_weight("vgg16")
    assert err.value.what == "sha256" and str(path) in str(err.value)
    assert W.find_weight("vgg16", verify=False) == path


def test_hash_prefix_of_the_name_is_checked_when_no_full_hash(dirs, monkeypatch):
    env, _ = dirs
    data = b"some weights"
    digest = hashlib.sha256(data).hexdigest()
    good = W.WeightSpec("good", f"net-{digest[:8]}.pth", None, None, "url", "test")
    bad = W.WeightSpec("bad", "net-deadbeef.pth", None, None, "url", "test")
    unverified = W.WeightSpec("unverified", "net.pth", None, None, "url", "test")
    for spec in (good, bad, unverified):
        (env / spec.filename).write_bytes(data)
        monkeypatch.setitem(W.WEIGHTS, spec.name, spec)
    assert W.find_weight("good").name == good.filename
    assert W.find_weight("unverified").name == "net.pth"
    with pytest.raises(W.WeightsChecksumError, match="net-deadbeef.pth"):
        W.find_weight("bad")


def test_report_rows(dirs, monkeypatch):
    env, _ = dirs
    (env / "vgg.pth").write_bytes(b"lin layers")
    fake_spec(monkeypatch, "lpips_vgg", env / "vgg.pth")
    (env / "vgg16-397923af.pth").write_bytes(b"truncated")
    (env / "encoder_render.pt").write_bytes(b"live3d")
    rows = {r.name: r for r in W.weights_report()}
    assert rows["lpips_vgg"].status == "ok" and rows["lpips_vgg"].path == env / "vgg.pth"
    assert rows["vgg16"].status == "bad size"
    assert rows["fid_inception"].status == "missing" and rows["fid_inception"].path is None
    assert rows["live3d"].status == "unverified"
    lines = W.format_weights_report(list(rows.values()))
    shipped = W.shipped_report()  # the repository's own checkpoints follow, under a heading, when there are any
    assert str(env) in lines[0] and len(lines) == 2 + 2 * len(rows) + (1 + 2 * len(shipped) if shipped else 0)
    assert f"{env} (no such folder)" not in lines[0]
    monkeypatch.setenv(W.ENV_VAR, str(env / "nowhere"))
    assert f"{env / 'nowhere'} (no such folder)" in W.format_weights_report([])[0]  # a mistyped $GAZEGEN_WEIGHTS shows
    fid = lines.index(next(line for line in lines if line.startswith("fid_inception")))
    assert "missing" in lines[fid] and W.WEIGHTS["fid_inception"].url in lines[fid]
    assert lines[fid + 1].split() == ["needed", "by:", *W.WEIGHTS["fid_inception"].used_by.split()]


def test_loads_pth_and_safetensors(dirs, monkeypatch):
    from safetensors.torch import save_file

    env, _ = dirs
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    torch.save(state, env / "vgg.pth")
    fake_spec(monkeypatch, "lpips_vgg", env / "vgg.pth")
    loaded = W.load_weight("lpips_vgg")
    assert loaded.keys() == state.keys() and torch.equal(loaded["a"], state["a"])
    save_file(state, str(env / "w.safetensors"))
    assert torch.equal(W.load_state_dict_file(env / "w.safetensors")["b"], state["b"])


def test_vgg16_keys_and_shapes_match_torchvision():
    expected = {}
    for i, (cout, cin) in TORCHVISION_VGG16_CONVS.items():
        expected[f"features.{i}.weight"] = (cout, cin, 3, 3)
        expected[f"features.{i}.bias"] = (cout,)
    state = VGG16Features().state_dict()
    assert list(state) == list(expected)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(v.numel() for v in state.values()) == 14_714_688  # VGG16's conv parameters


def test_load_vgg16_is_strict_and_drops_the_classifier(dirs, monkeypatch):
    env, _ = dirs
    torch.manual_seed(0)
    source = VGG16Features(("relu1_2", "relu2_2"))
    published = {**source.state_dict(), "classifier.0.weight": torch.zeros(4, 3), "classifier.0.bias": torch.zeros(4)}
    torch.save(published, env / "vgg16-397923af.pth")
    fake_spec(monkeypatch, "vgg16", env / "vgg16-397923af.pth")
    model = load_vgg16(("relu1_2", "relu2_2"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        for name, feat in source(x).items():
            assert torch.equal(model(x)[name], feat)
    del published["features.28.bias"]  # a file missing a key must not load
    torch.save(published, env / "vgg16-397923af.pth")
    fake_spec(monkeypatch, "vgg16", env / "vgg16-397923af.pth")
    with pytest.raises(RuntimeError, match="features.28.bias"):
        load_vgg16()


def test_vgg16_layers_and_normalisation():
    with pytest.raises(ValueError, match="relu9_9"):
        VGG16Features(("relu9_9",))
    model = VGG16Features(("relu3_3", "relu1_2"))
    out = model(torch.zeros(2, 3, 32, 32))
    assert list(out) == ["relu3_3", "relu1_2"]  # the requested order
    assert out["relu1_2"].shape == (2, 64, 32, 32) and out["relu3_3"].shape == (2, 256, 8, 8)
    # [-1, 1] -> ImageNet normalisation, which in [-1, 1] terms is LPIPS' ScalingLayer
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalise(x), (x - shift) / scale, atol=1e-6)


def test_lpips_linear_layers_found_in_an_installed_lpips_package(dirs, tmp_path, monkeypatch):
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "weights" / "v0.1" / "vgg.pth").write_bytes(b"bundled")
    fake_spec(monkeypatch, "lpips_vgg", package / "weights" / "v0.1" / "vgg.pth")
    found = type("Spec", (), {"submodule_search_locations": [str(package)]})()
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: found if name == "lpips" else None)
    assert W.find_weight("lpips_vgg") == package / "weights" / "v0.1" / "vgg.pth"
    assert package / "weights" / "v0.1" not in W.search_dirs("vgg16")  # only for LPIPS' own file


def test_shipped_checkpoints_are_listed_and_checked_against_their_card(tmp_path):
    from gazegen.weights import shipped_report

    good, bad, bare = tmp_path / "good", tmp_path / "bad", tmp_path / "bare"
    for folder in (good, bad, bare):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(folder.name.encode())
    digest = hashlib.sha256(b"good").hexdigest()
    (good / "MODEL_CARD.md").write_text(f"# card\\n\\nmodel.safetensors sha256: `{digest}`\\n")
    (bad / "MODEL_CARD.md").write_text(f"model.safetensors sha256: {digest}\\n")
    rows = {r.name: r.status for r in shipped_report(tmp_path)}
    assert rows == {"bad": "bad sha256", "bare": "unverified", "good": "ok"}
