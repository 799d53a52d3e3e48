"""The source's background behind the rendered head (gazegen/models/background.py, render.source_background)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gazegen.config import CONFIG_DIR, ModelConfig, NormalisationConfig, load_config
from gazegen.geometry import head_pose_to_camera
from gazegen.models.background import HEAD_ALPHA, MARGIN_PX, OPAQUE, background_plate, composite, fill_holes
from gazegen.models.livegaze import LiveGaze


def holes(shape: tuple[int, ...], share: float, seed: int) -> torch.Tensor:
    """(B, 1, H, W) known-pixel mask, ``share`` of it unknown, with a solid unknown block in the middle."""
    known = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > share).double()
    h, w = shape[-2:]
    known[..., h // 4 : h // 2, w // 3 : w // 2 + 3] = 0
    return known


@pytest.mark.parametrize("side", [(16, 16), (13, 21)])
def test_fill_holes_keeps_known_pixels_and_fills_a_constant_with_that_constant(side):
    known = holes((2, 1, *side), 0.3, 0)
    image = torch.randn(2, 3, *side, dtype=torch.float64)
    filled = fill_holes(image, known)
    assert torch.equal(filled[known.expand_as(image) > 0], image[known.expand_as(image) > 0])
    constant = torch.tensor([0.3, -0.7, 0.1], dtype=torch.float64)[None, :, None, None].expand(2, 3, *side)
    garbage = torch.where(known > 0, constant, torch.full_like(constant, 9.0))  # unknown pixels hold nonsense
    assert torch.allclose(fill_holes(garbage, known), constant, atol=1e-12)


def test_a_filled_hole_lies_within_the_range_of_the_known_pixels():
    known = holes((1, 1, 32, 32), 0.5, 1)
    image = torch.rand(1, 1, 32, 32, dtype=torch.float64) * 2 - 1
    filled = fill_holes(image, known)
    values = image[known > 0]
    assert filled.min() >= values.min() - 1e-12 and filled.max() <= values.max() + 1e-12  # means of known pixels only


def test_composite_is_the_view_where_opaque_and_the_plate_where_clear():
    image, plate = torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), -1.0)
    assert torch.equal(composite(image, torch.ones(1, 1, 4, 4), plate), image)
    assert torch.equal(composite(image, torch.zeros(1, 1, 4, 4), plate), plate)
    assert torch.equal(composite(image, torch.full((1, 1, 4, 4), OPAQUE), plate), image)  # half opaque: the head's
    quarter = composite(image, torch.full((1, 1, 4, 4), OPAQUE / 4), plate)  # a linear blend below
    assert torch.allclose(quarter, torch.full_like(image, 0.25 * 0.5 + 0.75 * -1.0))


def test_the_plate_is_the_source_outside_its_grown_head_and_smooth_inside():
    source = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    alpha = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    alpha[..., 6:10, 6:10] = 1.0  # the head, at half the side
    plate = background_plate(source, alpha)
    up = F.interpolate(alpha, size=(32, 32), mode="bilinear", align_corners=False)
    head = F.max_pool2d((up > HEAD_ALPHA).double(), 2 * MARGIN_PX + 1, stride=1, padding=MARGIN_PX) > 0
    assert torch.equal(plate[:, :, ~head[0, 0]], source[:, :, ~head[0, 0]])
    outside = source[:, :, ~head[0, 0]]
    assert (plate[:, :, head[0, 0]] >= outside.amin(-1, keepdim=True) - 1e-12).all()


def model_with(density_bias: float, background: bool) -> LiveGaze:
    cfg = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")
    render = dataclasses.replace(cfg.render, density_bias=density_bias, source_background=background)
    return LiveGaze(dataclasses.replace(cfg, render=render)).eval()


def inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    poses = np.radians([[0.0, 0.0], [5.0, -20.0]])
    source = torch.from_numpy(head_pose_to_camera(poses, NormalisationConfig())).float()
    target = torch.from_numpy(head_pose_to_camera(poses[::-1].copy(), NormalisationConfig())).float()
    return image, torch.zeros(2, 2), target, source


@torch.no_grad()
def test_an_empty_field_renders_the_source_image_itself():
    model = model_with(density_bias=-200.0, background=True)  # sigma = softplus(raw - 200): nothing is opaque
    image, gaze, target, source = inputs()
    out = model(image, gaze, target, source)
    assert float(out.alpha.max()) < 1e-30
    assert torch.allclose(out.image, image, atol=1e-6)  # output side = input side for tiny


@torch.no_grad()
def test_an_opaque_field_renders_as_without_the_plate():
    torch.manual_seed(1)
    plain = model_with(density_bias=200.0, background=False)
    with_plate = model_with(density_bias=200.0, background=True)
    with_plate.load_state_dict(plain.state_dict())
    image, gaze, target, source = inputs()
    expected = plain(image, gaze, target, source)
    out = with_plate(image, gaze, target, source)
    assert float(out.alpha.min()) > 1 - 1e-6
    assert torch.allclose(out.image, expected.image, atol=1e-5)


def test_the_plate_needs_the_source_camera():
    model = model_with(density_bias=-1.0, background=True)
    with pytest.raises(ValueError, match="source camera"):
        model.encode(torch.zeros(1, 3, 64, 64))
