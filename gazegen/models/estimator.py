"""The reference gaze estimator: a compact ResNet from a face image to gaze and head pose.

It is the judge of redirection accuracy (``gazegen evaluate`` runs it on redirected images and
compares with the targets' labels) and the first consumer of the synthesis Parquet shards.

    image (B, 3, H, W) in [-1, 1] ──resize to S──> stem (3x3/2, [max-pool/2]) ──> stages of basic blocks
        ──> global average pool ──> linear ──> gaze (B, 2), head pose (B, 2)

Labels are (pitch, yaw) radians in the image's normalised camera frame (gazegen/geometry.py),
the frame of the store's ``face_gaze`` / ``face_head_pose`` and the shards' ``gaze`` /
``head_pose``. GroupNorm instead of BatchNorm: the estimator is trained with small batches and
evaluated one redirected image at a time, and its output must not depend on the batch.

A checkpoint is a directory like LiveGaze's (gazegen/checkpoint.py): ``config.json``
(``{"format_version", "class": "GazeEstimator", "config": EstimatorNetConfig, "metadata"}``) and
``model.safetensors``; written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from gazegen.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from gazegen.config import ConfigError, EstimatorNetConfig, to_dict

ESTIMATOR_CLASS = "GazeEstimator"
ESTIMATOR_FORMAT_VERSION = 1


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


class GazeEstimator(nn.Module):
    """Face image -> gaze and head pose; built from an ``EstimatorNetConfig``."""

    def __init__(self, cfg: EstimatorNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.norm_groups
        stem = [nn.Conv2d(3, cfg.width, 3, 2, 1, bias=False), nn.GroupNorm(g, cfg.width), nn.ReLU()]
        self.stem = nn.Sequential(*stem, *([nn.MaxPool2d(3, 2, 1)] if cfg.stem_pool else []))
        stages, cin = [], cfg.width
        for i, n in enumerate(cfg.blocks):
            cout = cfg.width * 2**i
            stages += [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, g) for j in range(n)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, 4)  # gaze pitch, yaw, head pitch, yaw
        nn.init.zeros_(self.head.weight)  # starts by predicting (0, 0): looking at the camera
        nn.init.zeros_(self.head.bias)

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
        x = self.stages(self.stem(self.prepare(image)))  # (B, C, S / 2^k, S / 2^k)
        out = self.head(x.mean(dim=(2, 3)))  # (B, 4)
        return GazeEstimate(gaze=out[:, :2], head_pose=out[:, 2:])


# --------------------------------------------------------------------------- checkpoints


def save_estimator(directory: str | Path, model: GazeEstimator, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``directory/config.json`` + ``model.safetensors`` (atomically replaced)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        header = {"format_version": ESTIMATOR_FORMAT_VERSION, "class": ESTIMATOR_CLASS, "config": to_dict(model.cfg),
                  "metadata": metadata or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_estimator_header(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json, its format version and class checked."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (an estimator checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("class") != ESTIMATOR_CLASS:
        found = header.get("class") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"{path}: class {found!r} is not {ESTIMATOR_CLASS!r}")
    if header.get("format_version") != ESTIMATOR_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {header.get('format_version')!r} is not supported "
                              f"(this gazegen reads {ESTIMATOR_FORMAT_VERSION})")
    return header


def load_estimator(directory: str | Path, *, device: str | torch.device = "cpu") -> GazeEstimator:
    """Rebuild the estimator from its config.json and load its weights strictly (eval mode)."""
    header = read_estimator_header(directory)
    try:
        cfg = EstimatorNetConfig.from_dict(header.get("config") or {})
    except ConfigError as e:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {e}") from None
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError, with no common base
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    model = GazeEstimator(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit the network of config.json ({e})") from None
    return model.to(device).eval()
