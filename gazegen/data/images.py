"""Images between storage and the model: the model's value range, and resizing.

Range (docs/design.md, Conventions): uint8 RGB at the edges, float in [-1, 1] inside the model.
``to_model_range`` is ``x / 127.5 - 1`` in float32 (0 -> -1, 127.5 -> 0, 255 -> 1, exactly) on the
tensor's own device; ``from_model_range`` clamps to [-1, 1] and rounds ``(x + 1) * 127.5`` to
uint8, so uint8 -> model -> uint8 is the identity. ``to_unit`` is [-1, 1] -> [0, 1] for plots.

Resizing, one function per need (square images and maps; every resizer returns its input when it
is already ``size``):

    resize_image    pictures: cv2 INTER_AREA to shrink, INTER_CUBIC to grow
    resize_area     INTER_AREA both ways: thumbnails and the estimator's inputs, read as they were
    resize_nearest  labels (masks, depth, part ids): INTER_NEAREST, no value is invented

and ``gazegen.imaging.resize_tensor`` for float NCHW tensors (model outputs), which the models use too.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) -> float32 in [-1, 1], on ``image``'s device."""
    return image.float() / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float (any shape) in [-1, 1] (clamped) -> uint8 in [0, 255], rounded half to even."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (clamped) -> float32 in [0, 1], for pictures and change maps. Scores use
    gazegen.metrics.scores.to_unit instead: unclamped and float64, so a metric sees what the model output."""
    return (x.float().clamp(-1, 1) + 1) / 2


def _is_size(image: np.ndarray, size: int) -> bool:
    return image.shape[0] == size and image.shape[1] == size


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) or (H, W) -> (size, size, ...): INTER_AREA to shrink, INTER_CUBIC to grow."""
    if _is_size(image, size):
        return image
    shrink = image.shape[0] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) or (H, W) -> (size, size, ...) with INTER_AREA whichever the direction."""
    if _is_size(image, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_nearest(label: np.ndarray, size: int) -> np.ndarray:
    """(H, W, ...) -> (size, size, ...) with INTER_NEAREST: every output value is an input value."""
    if _is_size(label, size):
        return label
    return cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, size, size) in [-1, 1] (``resize_image``, then ``to_model_range``)."""
    return to_model_range(torch.from_numpy(np.ascontiguousarray(resize_image(image, size))).permute(2, 0, 1)).contiguous()


def mask_tensor(mask: np.ndarray | None, size: int) -> torch.Tensor:
    """{0, 1} (H, W) -> float (1, size, size) {0, 1} (area-averaged, cut at 0.5); None -> all ones."""
    if mask is None:
        return torch.ones(1, size, size)
    m = resize_area(mask.astype(np.float32), size) if mask.shape[0] != size else mask
    return torch.from_numpy((np.asarray(m) >= 0.5).astype(np.float32))[None]
