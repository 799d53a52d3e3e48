"""The Live3D importer (gazegen/live3d.py): a checkpoint in Live3DPortrait's layout, written from its
code, initialises LiveGaze; wrong files fail naming the key; the base preset has Live3D's shapes."""

import math

import pytest
import torch

from gazegen.checkpoint import CheckpointError
from gazegen.config import CONFIG_DIR, ModelConfig, load_config
from gazegen.live3d import load_live3d, translate_live3d
from gazegen.models.livegaze import LiveGaze
from test_checkpoint import build, run

BASE = CONFIG_DIR / "model" / "base.toml"


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")


def _pairs(live: str, ours: str, params: tuple[str, ...] = ("weight", "bias")) -> dict[str, str]:
    return {f"{live}.{p}": f"{ours}.{p}" for p in params}


def _segformer_block(live: str, ours: str, sr_ratio: int) -> dict[str, str]:
    """Live3D key -> LiveGaze key for one smp mix_transformer ``Block`` (q and kv have no bias)."""
    pairs = {f"{live}.attn.{m}.weight": f"{ours}.attn.{m}.weight" for m in ("q", "kv")}
    reduction = ["attn.sr", "attn.norm"] if sr_ratio > 1 else []
    for name in ["norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2", *reduction]:
        pairs.update(_pairs(f"{live}.{name}", f"{ours}.{name}"))
    pairs.update(_pairs(f"{live}.mlp.dwconv.dwconv", f"{ours}.mlp.dwconv"))  # smp wraps it in a DWConv module
    return pairs


def live3d_layout(model: LiveGaze) -> dict:
    """The checkpoint Live3DPortrait would save for this network, written from its code.

    encoder_state_dict = EG3DInvEncoder (models/model.py): smp DeepLabV3 resnet34 depth 3 with
    BatchNorm replaced by identity and biases added (``encoder.*``, ``decoder.*``), EncoderF,
    EncoderEhigh, EncoderFinal. renderer_state_dict = TriplaneRenderer: ``const``, EG3D's
    OSGDecoder and SuperresolutionHybrid8XDC, whose FullyConnectedLayer / ToRGBLayer weights are
    stored without their run-time 1/sqrt(fan_in) gain.
    """
    cfg, ours = model.cfg, model.state_dict()
    enc: dict[str, str] = {}
    for i in range(0, 2 * (cfg.high_depth + 1), 2):  # Sequential(conv, LeakyReLU, conv, ...)
        enc.update(_pairs(f"EHigh_encoder.net.{i}", f"high_encoder.net.{i}"))
    enc.update(_pairs("encoder.conv1", "low_encoder.backbone.conv1"))
    for layer, blocks in (("layer1", cfg.backbone_blocks[0]), ("layer2", cfg.backbone_blocks[1])):
        for j in range(blocks):
            for conv in ("conv1", "conv2"):
                enc.update(_pairs(f"encoder.{layer}.{j}.{conv}", f"low_encoder.backbone.{layer}.{j}.{conv}"))
    enc.update(_pairs("encoder.layer2.0.downsample.0", "low_encoder.backbone.layer2.0.downsample"))
    for i in range(4):  # DeepLabV3Decoder = Sequential(ASPP, conv, BN, ReLU); ASPP branches Sequential(conv, BN, ReLU)
        enc.update(_pairs(f"decoder.0.convs.{i}.0", f"low_encoder.aspp.convs.{i}"))
    enc.update(_pairs("decoder.0.convs.4.1", "low_encoder.aspp.pool_conv"))  # Sequential(pool, conv, BN, ReLU)
    enc.update(_pairs("decoder.0.project.0", "low_encoder.aspp.project"))
    enc.update(_pairs("decoder.1", "low_encoder.aspp.fuse"))
    for m in ("proj", "norm"):
        enc.update(_pairs(f"F_encoder.patchembed.{m}", f"low_encoder.transformer.patch_embed.{m}"))
        enc.update(_pairs(f"Final_encoder.pathembed.{m}", f"triplane_head.transformer.patch_embed.{m}"))
    for i in range(cfg.geo_depth):
        enc.update(_segformer_block(f"F_encoder.blocks.{i}", f"low_encoder.transformer.blocks.{i}", 1))
    enc.update(_segformer_block("Final_encoder.block", "triplane_head.transformer.blocks.0", cfg.tri_sr_ratio))
    for i in (0, 3, 5):
        enc.update(_pairs(f"F_encoder.net.{i}", f"low_encoder.head.{i}"))
    for i in (0, 2):
        enc.update(_pairs(f"Final_encoder.net.{i}", f"triplane_head.net.{i}"))
    for i in (0, 2, 4, 6):
        enc.update(_pairs(f"Final_encoder.output_net.{i}", f"triplane_head.output_net.{i}"))
    encoder = {k: ours[v].clone() for k, v in enc.items()}
    encoder["encoder.layer3.0.conv1.weight"] = torch.zeros(1)  # smp builds layer3/4, never runs them
    encoder["encoder.layer4.2.conv2.bias"] = torch.zeros(1)

    gain = lambda t: t * math.sqrt(t[0].numel())  # noqa: E731  EG3D stores weight / gain
    renderer = {"const": ours["superres.style"].reshape(1, 1, -1).clone()}
    for i in (0, 2):
        renderer[f"decoder.net.{i}.weight"] = gain(ours[f"decoder.net.{i}.weight"])
        renderer[f"decoder.net.{i}.bias"] = ours[f"decoder.net.{i}.bias"].clone()
    for b in range(len(cfg.sr_channels)):
        live, mine = f"superresolution.block{b}", f"superres.blocks.{b}"
        renderer[f"{live}.resample_filter"] = torch.ones(4, 4) / 16
        for layer in ("conv0", "conv1", "torgb"):
            renderer[f"{live}.{layer}.affine.weight"] = gain(ours[f"{mine}.{layer}.affine.weight"])
            renderer[f"{live}.{layer}.affine.bias"] = ours[f"{mine}.{layer}.affine.bias"].clone()
            renderer[f"{live}.{layer}.bias"] = ours[f"{mine}.{layer}.bias"].clone()
        for layer in ("conv0", "conv1"):
            renderer[f"{live}.{layer}.weight"] = ours[f"{mine}.{layer}.weight"].clone()
            renderer[f"{live}.{layer}.noise_const"] = torch.zeros(2, 2)
            renderer[f"{live}.{layer}.noise_strength"] = torch.zeros(())
            renderer[f"{live}.{layer}.resample_filter"] = torch.ones(4, 4) / 16
        renderer[f"{live}.torgb.weight"] = gain(ours[f"{mine}.torgb.weight"])
    return {"encoder_state_dict": encoder, "renderer_state_dict": renderer, "step": 90000, "opts": {"lr": 1e-4}}


def test_live3d_checkpoint_initialises_everything_but_the_gaze_modules(cfg, tmp_path):
    source = build(cfg, seed=0)  # stands in for a trained Live3D
    path = tmp_path / "encoder_render.pt"
    torch.save(live3d_layout(source), path)

    target = build(cfg, seed=1)
    report = load_live3d(path, target)
    gaze_keys = {k for k in target.state_dict() if k.startswith(("gaze_encoder.", "gaze_fusion."))}
    assert set(report.missing) == gaze_keys and report.unexpected == ()
    assert set(report.loaded) == set(target.state_dict()) - gaze_keys
    assert "encoder:encoder.layer3.0.conv1.weight" in report.ignored
    assert "renderer:superresolution.block1.conv0.noise_strength" in report.ignored
    for key in report.loaded:
        torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key], rtol=1e-6, atol=1e-7)
    a, b = run(source), run(target)  # both gaze fusions start at zero: the same network
    torch.testing.assert_close(b.image, a.image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.depth, a.depth, rtol=1e-4, atol=1e-5)


def _save_edited(tmp_path, cfg, edit) -> object:
    checkpoint = live3d_layout(build(cfg))
    edit(checkpoint)
    path = tmp_path / "edited.pt"
    torch.save(checkpoint, path)
    return path


def test_live3d_errors(cfg, tmp_path):
    def wrong_shape(c):
        c["encoder_state_dict"]["Final_encoder.net.0.weight"] = torch.zeros(2, 2, 3, 3)

    with pytest.raises(CheckpointError, match=r"encoder:Final_encoder\.net\.0\.weight has shape \(2, 2, 3, 3\)"):
        load_live3d(_save_edited(tmp_path, cfg, wrong_shape), build(cfg))
    with pytest.raises(CheckpointError, match=r"lacks weights for triplane_head\.output_net\.6\.weight"):
        path = _save_edited(tmp_path, cfg, lambda c: c["encoder_state_dict"].pop("Final_encoder.output_net.6.weight"))
        load_live3d(path, build(cfg))

    def with_batchnorm(c):
        c["encoder_state_dict"]["encoder.bn1.running_mean"] = torch.zeros(8)

    path = _save_edited(tmp_path, cfg, with_batchnorm)
    with pytest.raises(CheckpointError, match=r"no place in LiveGaze: encoder:encoder\.bn1\.running_mean"):
        load_live3d(path, build(cfg))
    assert load_live3d(path, build(cfg), strict=False).unexpected == ("encoder:encoder.bn1.running_mean",)

    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no encoder_state_dict, renderer_state_dict"):
        load_live3d(tmp_path / "other.pt", build(cfg))
    with pytest.raises(CheckpointError, match="Live3D checkpoint not found"):
        load_live3d(tmp_path / "absent.pt", build(cfg))


def test_base_preset_has_live3d_shapes():
    """Shapes that Live3DPortrait's models/model.py and EG3D's superresolution.py imply for the base network."""
    with torch.device("meta"):
        model = LiveGaze(load_config(ModelConfig, BASE))
    checkpoint = live3d_layout(model)
    published = {
        "encoder:encoder.conv1.weight": (64, 5, 7, 7),
        "encoder:encoder.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "encoder:EHigh_encoder.net.0.weight": (64, 5, 7, 7),
        "encoder:EHigh_encoder.net.8.weight": (96, 96, 3, 3),
        "encoder:decoder.0.convs.3.0.weight": (256, 128, 3, 3),
        "encoder:decoder.0.project.0.weight": (256, 1280, 1, 1),
        "encoder:F_encoder.patchembed.proj.weight": (1024, 256, 7, 7),
        "encoder:F_encoder.blocks.4.attn.kv.weight": (2048, 1024),
        "encoder:F_encoder.blocks.4.mlp.dwconv.dwconv.weight": (2048, 1, 3, 3),
        "encoder:F_encoder.net.5.weight": (96, 128, 3, 3),
        "encoder:Final_encoder.net.0.weight": (256, 192, 3, 3),
        "encoder:Final_encoder.pathembed.proj.weight": (1024, 128, 7, 7),
        "encoder:Final_encoder.block.attn.sr.weight": (1024, 1024, 2, 2),
        "encoder:Final_encoder.output_net.0.weight": (256, 352, 3, 3),
        "encoder:Final_encoder.output_net.6.weight": (96, 128, 3, 3),
        "renderer:const": (1, 1, 512),
        "renderer:decoder.net.0.weight": (64, 32),
        "renderer:decoder.net.2.weight": (33, 64),
        "renderer:superresolution.block0.conv0.weight": (256, 32, 3, 3),
        "renderer:superresolution.block0.conv0.affine.weight": (32, 512),
        "renderer:superresolution.block1.conv1.weight": (128, 128, 3, 3),
        "renderer:superresolution.block1.torgb.weight": (3, 128, 1, 1),
    }
    for name, shape in published.items():
        section, key = name.split(":")
        assert tuple(checkpoint[f"{section}_state_dict"][key].shape) == shape, name
    found = translate_live3d(checkpoint)
    own = model.state_dict()
    assert found.unexpected == []
    assert {k: tuple(v.shape) for k, v in found.state.items()} == {k: tuple(own[k].shape) for k in found.state}
    assert set(own) - set(found.state) == {k for k in own if k.startswith(("gaze_encoder.", "gaze_fusion."))}
