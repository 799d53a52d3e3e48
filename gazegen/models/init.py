"""How a LiveGaze trained from scratch starts: variance-preserving weights.

PyTorch's default for ``nn.Conv2d`` and ``nn.Linear`` (uniform, bound ``1 / sqrt(fan_in)``) keeps
a third of the variance per layer; Live3D never meets that, because it starts from pretrained
weights. LiveGaze's path from the image to the triplane is about 15 convolutions deep, so at the
default the triplane barely depends on the source (measured on ``tiny``: the difference between the
triplanes of two random images had a standard deviation of 1e-3 against 0.06 for the planes
themselves, and a fixed batch's eye loss sat at its flat-colour value for ~80 steps). Here:

* convolutions (all followed by ReLU or LeakyReLU, apart from the last of a stack): He normal,
  ``std = gain / sqrt(fan_in)`` with LeakyReLU(0.01)'s gain; depthwise convolutions gain 1;
* linear layers of the encoders, the transformers and the gaze branch: He normal with ReLU's gain;
* the triplane decoder: EG3D's ``FullyConnectedLayer`` start, ``N(0, 1 / fan_in)``;
* biases zero. Left as built: the super-resolution (StyleGAN2's own initialisation, superres.py),
  LayerNorms, and the cross-attention's output projection (zero, so that F_app = F_h at the start).

A checkpoint (Live3D's or gazegen's) replaces all of this when loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from gazegen.models.encoders import LEAKY_SLOPE


def _he_normal_(weight: torch.Tensor, nonlinearity: str, slope: float = 0.0) -> None:
    nn.init.kaiming_normal_(weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)


def initialise_layer_(layer: nn.Module) -> None:
    """He-initialise one ``nn.Conv2d`` or ``nn.Linear`` in place (others are left alone); bias zero."""
    if isinstance(layer, nn.Conv2d):
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels
        _he_normal_(layer.weight, "linear" if depthwise else "leaky_relu", LEAKY_SLOPE)
    elif isinstance(layer, nn.Linear):
        _he_normal_(layer.weight, "relu")
    else:
        return
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def initialise_from_scratch_(
    encoders: list[nn.Module], decoder: nn.Module, keep: tuple[nn.Module, ...] = ()
) -> None:
    """He-initialise every conv and linear layer of ``encoders`` except those in ``keep``; EG3D's start for ``decoder``."""
    kept = {id(m) for k in keep for m in k.modules()}
    for part in encoders:
        for layer in part.modules():
            if id(layer) not in kept:
                initialise_layer_(layer)
    for layer in decoder.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
            nn.init.zeros_(layer.bias)
