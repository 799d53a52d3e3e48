"""VGG16 feature extractor (Simonyan & Zisserman) with torchvision's parameter names.

``VGG16Features.features`` is an ``nn.Sequential`` laid out exactly as torchvision's
``vgg16().features`` (convs at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; ReLU after
each; max-pools at 4, 9, 16, 23, 30), so the ``features.*`` tensors of the published
``vgg16-397923af.pth`` load with strict key matching. The classifier is not built: its tensors are
dropped from the file before loading. The ReLUs are not in-place, so the returned activations are
never overwritten by later layers.

Input: images in [-1, 1] (gazegen's convention), NCHW RGB. ImageNet normalisation happens
inside: ``x01 = (x + 1) / 2``, then ``(x01 - mean) / std`` with torchvision's mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). In [-1, 1] terms this is
``(x - (2 mean - 1)) / (2 std)`` = ``(x - (-0.030, -0.088, -0.188)) / (0.458, 0.448, 0.450)``,
which is exactly LPIPS' ``ScalingLayer``, so LPIPS uses this module unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from gazegen.weights import load_weight

# Channels of the 13 convs, "M" a 2x2 max-pool (torchvision's configuration "D").
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# Index in `features` of each ReLU output, named relu<block>_<conv>.
RELU_INDEX: dict[str, int] = {
    "relu1_1": 1, "relu1_2": 3,
    "relu2_1": 6, "relu2_2": 8,
    "relu3_1": 11, "relu3_2": 13, "relu3_3": 15,
    "relu4_1": 18, "relu4_2": 20, "relu4_3": 22,
    "relu5_1": 25, "relu5_2": 27, "relu5_3": 29,
}  # fmt: skip

# Channels of each ReLU output.
RELU_CHANNELS: dict[str, int] = {name: (64, 128, 256, 512, 512)[int(name[4]) - 1] for name in RELU_INDEX}

DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_layers(layers: tuple[str, ...]) -> None:
    """ValueError naming the known layers if ``layers`` is empty or has an unknown name."""
    unknown = [name for name in layers if name not in RELU_INDEX]
    if unknown or not layers:
        raise ValueError(f"unknown VGG16 layer(s) {unknown or '(none given)'}; known: {', '.join(RELU_INDEX)}")


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """VGG16 convolutional trunk returning the activations at ``layers``.

    ``forward(x)`` takes (B, 3, H, W) images in [-1, 1] and returns ``{layer: (B, C, h, w)}`` in
    ``layers`` order; layers after the deepest requested one are not run. A freshly built module
    has random weights; use ``load_vgg16`` for the pretrained one.
    """

    def __init__(self, layers: tuple[str, ...] = DEFAULT_LAYERS):
        super().__init__()
        check_layers(layers)
        self.layers = tuple(layers)
        self.features = _make_features()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> ImageNet-normalised inputs."""
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16Features expects (B, 3, H, W) images, got {tuple(x.shape)}")
        wanted = {RELU_INDEX[name]: name for name in self.layers}
        last = max(wanted)
        out: dict[str, torch.Tensor] = {}
        h = self.normalise(x)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[wanted[i]] = h
            if i == last:
                break
        return {name: out[name] for name in self.layers}


def features_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision VGG16 state dict (the classifier dropped)."""
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_vgg16(layers: tuple[str, ...] = DEFAULT_LAYERS, *, verify: bool = True) -> VGG16Features:
    """The ImageNet-pretrained VGG16 trunk (``vgg16-397923af.pth``), frozen and in eval mode.

    Raises ``MissingWeightsError`` when the file is absent: there is no random-weight fallback.
    """
    check_layers(layers)  # before reading half a gigabyte
    state = features_state_dict(load_weight("vgg16", verify=verify))
    model = VGG16Features(layers)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
