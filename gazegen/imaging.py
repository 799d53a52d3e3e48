"""Float image tensors resized: below both the data readers and the models, which both resize (the layers of
docs/design.md keep ``models/`` from importing ``data/``). The numpy resizers, one per need, are in
gazegen/data/images.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size): bilinear, antialiased when shrinking; ``x`` itself when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
