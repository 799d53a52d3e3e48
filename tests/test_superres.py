"""Super-resolution layers (gazegen/models/superres.py) against StyleGAN2's formulas written out plainly:
the gain folded into the weights and the bias into the conv must not change what a layer computes."""

import math

import pytest
import torch
import torch.nn.functional as F

from gazegen.models.superres import ModulatedConv, ToRGB, fir_kernel


def stylegan2_layer(layer: ModulatedConv, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """SynthesisLayer without noise: modulate, demodulate, (transposed conv + FIR | conv), + bias, leaky ReLU(0.2) x sqrt 2."""
    w = layer.weight * layer.affine(style)[None, :, None, None]
    w = w / torch.sqrt(w.square().sum((1, 2, 3), keepdim=True) + 1e-8)
    if layer.up:
        y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        y = F.conv2d(y, fir_kernel(y.shape[1], y), padding=1, groups=y.shape[1])
    else:
        y = F.conv2d(x, w, padding=1)
    return F.leaky_relu(y + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)


@pytest.mark.parametrize("up", [False, True])
def test_modulated_conv_is_stylegan2s_layer(up):
    torch.manual_seed(0)
    layer = ModulatedConv(6, 5, 8, up=up).double()
    torch.nn.init.normal_(layer.bias, std=0.5)  # zero at init: give the bias's placement something to get wrong
    x, style = torch.randn(2, 6, 7, 7, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    expected = stylegan2_layer(layer, x, style)
    assert (expected < 0).any() and (expected > 0).any()  # both sides of the leaky ReLU are exercised
    torch.testing.assert_close(layer(x, style), expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the in-place activation of inference
        torch.testing.assert_close(layer(x, style), expected, rtol=1e-12, atol=1e-12)


def test_torgb_adds_its_bias_once():
    torch.manual_seed(1)
    layer = ToRGB(4, 8).double()
    torch.nn.init.normal_(layer.bias)
    x, style = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    w = layer.weight * layer.affine(style)[None, :, None, None]
    expected = torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], x) + layer.bias[None, :, None, None]
    torch.testing.assert_close(layer(x, style), expected, rtol=1e-12, atol=1e-12)
