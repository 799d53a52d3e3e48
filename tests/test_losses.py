"""The training objective: each term against a hand computation on tiny tensors, the weighted
total, gradients, and the VGG16 perceptual network found through the weights registry."""

import dataclasses
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from gazegen import weights as W
from gazegen.config import ConfigError, LossConfig, load_config
from gazegen.metrics.vgg import VGG16Features
from gazegen.train.losses import LiveGazeLoss, LossOutput, depth_loss, masked_l1_loss, perceptual_loss


def tiny_batch():
    """Two 3x2x2 images; the generated one differs from the target at known pixels."""
    target = torch.zeros(2, 3, 2, 2)
    image = torch.zeros(2, 3, 2, 2)
    image[0, :, 0, 0] = 0.6  # inside face and eyes of image 0
    image[0, :, 0, 1] = -0.3  # inside the face only
    image[0, :, 1, 1] = 5.0  # outside every mask: must not count
    image[1, 0, 1, 0] = 0.9  # image 1: one channel, inside the face
    face = torch.tensor([[[1, 1], [1, 0]], [[1, 1], [1, 1]]], dtype=torch.float32)  # (B, H, W)
    eyes = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)  # image 1: no eyes
    return image.requires_grad_(), target, face, eyes


class Pool2(torch.nn.Module):
    """A tiny 'feature extractor': the image and its 2x2 average pool."""

    def forward(self, x):
        return {"full": x, "pooled": F.avg_pool2d(x, 2)}


def test_masked_l1_by_hand():
    image, target, face, eyes = tiny_batch()
    # image 0: face pixels (0,0), (0,1), (1,0) x 3 channels: (0.6 * 3 + 0.3 * 3 + 0) / 9 = 0.3
    # image 1: 4 face pixels x 3 channels: 0.9 / 12 = 0.075
    assert masked_l1_loss(image, target, face).item() == pytest.approx((0.3 + 0.075) / 2)
    # eyes: image 0 only (image 1's mask is empty and leaves the batch mean): 0.6
    assert masked_l1_loss(image, target, eyes).item() == pytest.approx(0.6)
    # every mask empty: 0, not NaN, and the graph still backpropagates zeros
    empty = masked_l1_loss(image, target, torch.zeros_like(eyes))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(image.grad, torch.zeros_like(image))


def test_depth_loss_by_hand():
    depth = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)  # (B, h, w)
    prior = torch.tensor([[[1.5, 0.0], [float("nan"), 3.0]]])  # 0 and NaN: no prior there
    loss = depth_loss(depth, prior)
    assert loss.item() == pytest.approx((0.5 + 1.0) / 2)
    loss.backward()
    assert torch.allclose(depth.grad, torch.tensor([[[-0.5, 0.0], [0.0, 0.5]]]))  # sign / 2 valid pixels
    valid = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.bool)  # an explicit mask overrides the rule
    assert depth_loss(depth, prior, valid).item() == pytest.approx(0.5)


def test_depth_prior_at_another_resolution_is_area_averaged_over_valid_pixels():
    depth = torch.full((1, 1, 1, 2), 2.0)
    prior = torch.tensor([[[[1.0, 3.0, 5.0, 0.0], [1.0, 3.0, 0.0, 0.0]]]])  # (1, 1, 2, 4) -> (1, 2) blocks of 2x2
    # left block: all valid, mean 2.0 -> error 0; right block: 1 of 4 valid (< half) -> left out
    assert depth_loss(depth, prior).item() == pytest.approx(0.0)
    prior[0, 0, 1, 2] = 7.0  # right block now half valid: mean of (5, 7) = 6 -> error 4
    assert depth_loss(depth, prior).item() == pytest.approx((0.0 + 4.0) / 2)


def test_perceptual_with_an_injected_extractor_by_hand():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 4, 4, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 4, 4, generator=g)
    expected = (image - target).abs().mean() + (F.avg_pool2d(image, 2) - F.avg_pool2d(target, 2)).abs().mean()
    loss = perceptual_loss(Pool2(), image, target)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert image.grad.abs().sum() > 0


def test_total_is_the_weighted_sum_and_gradients_flow():
    image, target, face, eyes = tiny_batch()
    depth = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]] * 2, requires_grad=True)
    prior = torch.full((2, 2, 2), 2.0, requires_grad=True)
    out = LiveGazeLoss(LossConfig(), extractor=Pool2())(image, target, face, eyes, depth, prior)
    assert isinstance(out, LossOutput)
    face_l1, eye_l1 = (0.3 + 0.075) / 2, 0.6
    depth_l1 = (1 + 0 + 1 + 2) / 4
    percept = perceptual_loss(Pool2(), image, target).item()
    assert out.face.item() == pytest.approx(face_l1) and out.eyes.item() == pytest.approx(eye_l1)
    assert out.reconstruction.item() == pytest.approx(1 * face_l1 + 2 * eye_l1)  # paper: 1 x face + 2 x eyes
    assert out.depth.item() == pytest.approx(depth_l1) and out.perceptual.item() == pytest.approx(percept)
    assert out.total.item() == pytest.approx(1 * (face_l1 + 2 * eye_l1) + 1 * depth_l1 + 0.8 * percept)
    out.total.backward()
    assert image.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0
    assert prior.grad is None  # the prior is a target, not optimised
    assert set(out.scalars()) == {f"loss/{k}" for k in ("total", "reconstruction", "face", "eyes", "depth", "perceptual", "margin")}
    assert out.margin.item() == 0.0  # the mean planes' margin term is the trainer's (loss.margin_weight), not this loss's

    cfg = LossConfig(reconstruction_weight=0.5, depth_weight=3.0, perceptual_weight=0.0, face_weight=2.0, eye_weight=5.0)
    out = LiveGazeLoss(cfg, extractor=Pool2())(image, target, face, eyes, depth, prior)
    assert out.perceptual.item() == 0.0  # weight 0: not computed
    assert out.total.item() == pytest.approx(0.5 * (2 * face_l1 + 5 * eye_l1) + 3 * depth_l1)


def test_depth_weight_needs_a_prior():
    image, target, face, eyes = tiny_batch()
    with pytest.raises(ValueError, match="depth_weight"):
        LiveGazeLoss(LossConfig(perceptual=False))(image, target, face, eyes)
    out = LiveGazeLoss(LossConfig(perceptual=False, depth_weight=0.0))(image, target, face, eyes)
    assert out.depth.item() == 0.0 and not math.isnan(out.total.item())


def test_perceptual_uses_the_registered_vgg16(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(W.MissingWeightsError, match="vgg16-397923af.pth"):
        LiveGazeLoss(LossConfig())  # no silent random VGG
    assert LiveGazeLoss(LossConfig(perceptual=False)).extractor is None  # never loaded when off
    torch.manual_seed(0)
    vgg = VGG16Features(("relu1_2", "relu2_2"))
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg.state_dict(), path)
    data = path.read_bytes()
    spec = dataclasses.replace(W.WEIGHTS["vgg16"], sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(W.WEIGHTS, "vgg16", spec)
    loss = LiveGazeLoss(LossConfig(vgg_layers=("relu1_2", "relu2_2")))
    assert loss.extractor.layers == ("relu1_2", "relu2_2") and not loss.extractor.training
    loss.train()
    assert not loss.extractor.training  # frozen network stays in eval mode
    g = torch.Generator().manual_seed(1)
    image, target = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        fi, ft = vgg(image), vgg(target)
        expected = sum((fi[k] - ft[k]).abs().mean() for k in fi)
        assert perceptual_loss(loss.extractor, image, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_config_from_toml_overrides():
    cfg = load_config(LossConfig, None, ["eye_weight=3", "vgg_layers=['relu2_2', 'relu3_3']", "perceptual=false"])
    assert cfg.eye_weight == 3.0 and cfg.vgg_layers == ("relu2_2", "relu3_3") and not cfg.perceptual
    default = LossConfig()
    assert (default.reconstruction_weight, default.depth_weight, default.perceptual_weight) == (1.0, 1.0, 0.8)
    assert (default.face_weight, default.eye_weight) == (1.0, 2.0)
    with pytest.raises(ConfigError, match="depth_weight"):
        load_config(LossConfig, None, ["depth_weight=-1"])


def test_silhouette_and_raw_render_terms_by_hand():
    from gazegen.train.losses import silhouette_loss

    alpha = torch.tensor([[[[0.2, 1.0], [0.5, 0.0]]]])  # (B, 1, 2, 2)
    prior = torch.tensor([[[[3.0, 2.0], [0.0, 0.0]]]])  # a surface on the top row only
    assert silhouette_loss(alpha, prior).item() == pytest.approx((0.8 + 0.0 + 0.5 + 0.0) / 4)
    big = prior.repeat_interleave(2, -1).repeat_interleave(2, -2)  # (1, 1, 4, 4): the same region at twice the side
    assert silhouette_loss(alpha, big).item() == pytest.approx((0.8 + 0.5) / 4)
    image, target, face, eyes = tiny_batch()
    raw = torch.zeros(2, 3, 1, 1)
    raw[0] = 0.5  # image 0's target is 0 everywhere: |0.5 - 0| on its one raw pixel (face mask area 3/4 >= 0.5)
    on = LiveGazeLoss(dataclasses.replace(LossConfig(perceptual=False, depth_weight=0.0), raw_weight=2.0))
    off = LiveGazeLoss(LossConfig(perceptual=False, depth_weight=0.0))
    gap = on(image, target, face, eyes, image_raw=raw).face - off(image, target, face, eyes, image_raw=raw).face
    assert gap.item() == pytest.approx(2.0 * (0.5 + 0.0) / 2)  # mean over the two images of each one's raw L1
    with_alpha = LiveGazeLoss(dataclasses.replace(LossConfig(perceptual=False), alpha_weight=3.0))
    depth = torch.tensor([[[[3.0, 2.0], [1.0, 1.0]]]])
    terms = with_alpha(image[:1], target[:1], face[:1], eyes[:1], depth, prior, None, None, alpha)
    assert terms.depth.item() == pytest.approx(0.0 + 3.0 * (0.8 + 0.5) / 4)  # depth exact where valid; the silhouette
