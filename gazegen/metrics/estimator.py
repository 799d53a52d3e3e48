"""The reference gaze estimator: a compact ResNet from a face image to gaze and head pose.

It is the judge of redirection accuracy (``gazegen evaluate`` runs it on redirected images and
compares with the targets' labels) and the first consumer of the synthesis Parquet shards.

    image (B, 3, H, W) in [-1, 1] ──resize to S──> face trunk: stem (3x3/2, [max-pool/2]), stages of
        basic blocks, global average pool ──> face features ──linear──> head pose (B, 2)
    [eye branch] S x S image + head pose ──> two eye patches (gazegen/metrics/eye_patches.py) ──> eye
        trunk: stem (3x3/1), stages, global average pool ──> eye features (one trunk, both eyes)
    face features [+ both eyes' features] ──linear──> gaze (B, 2)

Why the eye branch: in a 128 px procedural head (0.42 px per mm of face) the iris spans 2-3 pixels,
and a face trunk that halves the image twice before its first block keeps less than one; gaze is
what it reads worst. The eye patches resample each eye, where the head pose puts it, at
``eyes.pixels / eyes.window_mm`` pixels per millimetre (0.67 by default) before any striding.

Labels are (pitch, yaw) radians in the image's normalised camera frame (gazegen/geometry.py),
the frame of the store's ``face_gaze`` / ``face_head_pose`` and the shards' ``gaze`` /
``head_pose``. GroupNorm instead of BatchNorm: the estimator is trained with small batches and
evaluated one redirected image at a time, and its output must not depend on the batch.

Its checkpoints are gazegen's one format (gazegen/checkpoint.py: ``save_pretrained``,
``load_pretrained(directory, GazeEstimator)``): ``config.json`` with class "GazeEstimator", format
version 2 and an ``EstimatorNetConfig``, and ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.config import EstimatorNetConfig
from gazegen.metrics.eye_patches import eye_patches


@dataclass(frozen=True)
class GazeEstimate:
    """Predicted labels of B images, radians, (pitch, yaw) in the image's normalised camera."""

    gaze: torch.Tensor  # (B, 2)
    head_pose: torch.Tensor  # (B, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a residual (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        nn.init.zeros_(self.norm2.weight)  # each block starts as the identity (Goyal et al. 2017)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class Trunk(nn.Module):
    """3x3 stem (stride ``stem_stride``, then a 3x3/2 max-pool with ``pool``) and stages of basic blocks.

    Stage i has ``width * 2^i`` channels and stride 2 from the second stage on; ``channels`` is the
    last stage's width.
    """

    def __init__(self, width: int, blocks: tuple[int, ...], groups: int, *, stem_stride: int, pool: bool) -> None:
        super().__init__()
        stem = [nn.Conv2d(3, width, 3, stem_stride, 1, bias=False), nn.GroupNorm(groups, width), nn.ReLU()]
        self.stem = nn.Sequential(*stem, *([nn.MaxPool2d(3, 2, 1)] if pool else []))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages += [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, groups) for j in range(n)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))  # (B, 3, h, w) -> (B, channels), globally pooled


def _zero_linear(cin: int, cout: int) -> nn.Linear:
    layer = nn.Linear(cin, cout)
    nn.init.zeros_(layer.weight)  # starts by predicting (0, 0): looking at the camera, facing it
    nn.init.zeros_(layer.bias)
    return layer


class GazeEstimator(nn.Module):
    """Face image -> gaze and head pose; built from an ``EstimatorNetConfig``.

    Head pose comes from the face features; gaze from the face features and, with an eye branch,
    the features of the two eye patches cut where the predicted head pose puts the eyes (the head
    pose is detached there: the crop positions are not trained through).
    """

    config_class = EstimatorNetConfig  # a checkpoint rebuilds it as GazeEstimator(config) (gazegen/checkpoint.py)
    format_version = 2  # of its checkpoints; 2: separate head-pose and gaze layers, optional eye branch

    def __init__(self, cfg: EstimatorNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.face = Trunk(cfg.width, cfg.blocks, cfg.norm_groups, stem_stride=2, pool=cfg.stem_pool)
        self.eyes = None
        gaze_in = self.face.channels
        if cfg.eyes.width:
            self.eyes = Trunk(cfg.eyes.width, cfg.eyes.blocks, cfg.norm_groups, stem_stride=1, pool=False)
            gaze_in += 2 * self.eyes.channels
        self.head_pose = _zero_linear(self.face.channels, 2)
        self.gaze = _zero_linear(gaze_in, 2)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], any H, W -> (B, 3, S, S) float at the network's resolution."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        x = image.float()
        s = self.cfg.resolution
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, image: torch.Tensor) -> GazeEstimate:
        x = self.prepare(image)  # (B, 3, S, S)
        face = self.face(x)  # (B, C)
        head_pose = self.head_pose(face)  # (B, 2)
        features = face
        if self.eyes is not None:
            patches = eye_patches(x, head_pose.detach(), self.cfg.eyes)  # (B, 2, 3, h, w)
            eyes = self.eyes(patches.flatten(0, 1)).unflatten(0, (len(x), 2))  # (B, 2, E)
            features = torch.cat([face, eyes.flatten(1)], 1)  # (B, C + 2E)
        return GazeEstimate(gaze=self.gaze(features), head_pose=head_pose)

