"""One checkpoint format for every network gazegen saves (LiveGaze, the gaze estimator), and the
importer of Live3D weights.

A checkpoint is a directory, in the spirit of diffusers' ``save_pretrained``:

    config.json        {"format_version": N, "class": "<network class>", "config": <its config as data>,
                        "metadata": {...}}, sorted keys; ``metadata.normalisation``, when present, is
                        the normalised camera of the images the weights were fitted to
                        (NormalisationConfig as data): synthesis frames its inputs and scales depth by
                        it, and refuses a LiveGaze checkpoint without it
    model.safetensors  every tensor of ``model.state_dict()`` under its own name
    train_state.pt     optional training state (optimiser, step, RNG states): plain containers of
                       tensors and Python scalars, read back with ``torch.load(weights_only=True)``

A network class declares how it is rebuilt: ``config_class`` (a frozen config with ``from_dict``),
``format_version`` (bumped when its state dict's layout changes) and ``cls(cfg)``; the header's
``class`` is the class's name. Today: LiveGaze (format 1, ModelConfig) and GazeEstimator (format 2,
EstimatorNetConfig). This module imports the networks, never the other way round.

It is written into a temporary sibling directory and renamed into place, so a reader sees a
whole checkpoint or none. ``load_pretrained`` rebuilds the network from the checkpoint's own
config.json and loads the weights strictly; anything missing, unreadable or inconsistent raises
``CheckpointError`` naming the file and the problem.

Live3D (Trevithick et al. 2023) has no official code or weights. ``load_live3d`` reads the
checkpoints of Live3DPortrait (github.com/Dong142857/Live3DPortrait, the public reproduction),
``torch.save`` of ``{"encoder_state_dict": EG3DInvEncoder.state_dict(), "renderer_state_dict":
TriplaneRenderer.state_dict(), ...}`` (training/coach.py ``__get_save_dict``; inference.py reads
those two keys). ``LIVE3D_KEY_RULES`` is the whole correspondence, in one place.

What that layout rests on: the key names come from the reproduction's code (models/model.py,
its copy of EG3D's superresolution.py / networks_stylegan2.py / triplane.py) and from
segmentation_models_pytorch 0.3.x (unpinned there; the checkpoints date from Dec 2023 - Jan 2024,
before smp 0.5 renamed ``DeepLabV3Decoder``'s children to ``aspp`` / ``conv``). The published
weight files themselves (Google Drive) could not be opened here, and only the "Normal" model is
mapped (its "LT" variant has other shapes). The blocks were checked numerically against the
reproduction's EG3D ``SynthesisBlock`` and smp 0.3.3's ``Block``, ``OverlapPatchEmbed`` and
``DeepLabV3Decoder`` (BatchNorm removed) to about 1e-6; the ResNet blocks against torchvision's
layout by reading only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gazegen.config import ConfigError, ModelConfig, NormalisationConfig, to_dict
from gazegen.models.livegaze import LiveGaze

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"

Network = TypeVar("Network", bound=nn.Module)  # a class with config_class, format_version, cls(cfg) and .cfg


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit; the message names the file."""


# --------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_directory(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` (renamed aside first, removed last)."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old)


def save_pretrained(
    directory: str | Path,
    model: nn.Module,
    *,
    metadata: dict[str, Any] | None = None,
    normalisation: NormalisationConfig | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally JSON-able ``metadata`` and a ``train_state``) as a checkpoint
    directory, atomically; ``normalisation`` (the camera of the images the weights fit) goes into
    ``metadata.normalisation``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        header = {
            "format_version": type(model).format_version,
            "class": type(model).__name__,
            "config": to_dict(model.cfg),
            "metadata": (metadata or {}) | ({"normalisation": to_dict(normalisation)} if normalisation else {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
        for path in tmp.iterdir():
            _fsync(path)
        _replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CheckpointHeader:
    """A checkpoint's config.json, checked against the network class it should hold."""

    path: Path  # the config.json it was read from
    config: Any  # the network's config (an instance of its config_class), validated
    metadata: dict[str, Any]  # whatever the writer recorded (run, metrics, normalisation, ...)


def _require(path: Path) -> Path:
    if not path.parent.is_dir():
        raise CheckpointError(f"{path.parent}: checkpoint directory not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    return path


def read_header(directory: str | Path, cls: type[nn.Module]) -> CheckpointHeader:
    """A checkpoint's config.json: its class must be ``cls``, its format version ``cls.format_version``;
    the config is parsed with ``cls.config_class``."""
    path = _require(Path(directory) / CONFIG_FILE)
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(header).__name__}")
    if header.get("class") != cls.__name__:
        raise CheckpointError(f"{path}: class {header.get('class')!r} is not {cls.__name__!r}")
    version = header.get("format_version")
    if version != cls.format_version:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this gazegen reads {cls.format_version})"
        )
    if not isinstance(header.get("config"), dict):
        raise CheckpointError(f"{path}: no 'config' object")
    metadata = header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata is {type(metadata).__name__}, expected an object")
    try:
        config = cls.config_class.from_dict(header["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: config: {e}") from None
    return CheckpointHeader(path, config, metadata)


def read_model_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig of a LiveGaze checkpoint (its class and format version checked)."""
    return read_header(directory, LiveGaze).config


def checkpoint_normalisation(directory: str | Path) -> NormalisationConfig | None:
    """The ``metadata.normalisation`` a LiveGaze checkpoint records (validated), or None when it has none."""
    header = read_header(directory, LiveGaze)
    recorded = header.metadata.get("normalisation")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise CheckpointError(
            f"{header.path}: metadata.normalisation is {type(recorded).__name__}, expected an object"
        )
    try:
        return NormalisationConfig.from_dict(recorded)
    except ConfigError as e:
        raise CheckpointError(f"{header.path}: metadata.normalisation: {e}") from None


def describe_keys(keys: list[str], limit: int = 8) -> str:
    """The first ``limit`` of ``keys`` and how many there are, for an error message."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_state(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError unless ``state`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing tensors for {what}: {describe_keys(missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: tensors unknown to {what}: {describe_keys(unexpected)}")
    for key, tensor in sorted(state.items()):
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, {what} expects {tuple(expected[key].shape)}"
            )


def load_pretrained(directory: str | Path, cls: type[Network], *, device: str | torch.device = "cpu") -> Network:
    """Rebuild ``cls`` from a checkpoint's config.json and load its weights strictly (eval mode)."""
    cfg = read_header(directory, cls).config
    path = _require(Path(directory) / WEIGHTS_FILE)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError (no common base) for every malformed file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    model = cls(cfg)
    _check_state(path, state, model.state_dict(), "the model built from config.json")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> LiveGaze:
    """A LiveGaze checkpoint, rebuilt and loaded (``load_pretrained`` of LiveGaze)."""
    return load_pretrained(directory, LiveGaze, device=device)


def checkpoint_hash(directory: str | Path) -> str:
    """sha256 of config.json and model.safetensors: the identity of the model weights (train_state.pt
    and any other file left out)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(Path(directory) / name, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    """A checkpoint's train_state.pt (``torch.load(weights_only=True)``), or None when it has none."""
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors share no base class
        raise CheckpointError(f"{path}: not a readable training state ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- Live3D


def _equalized_lr(t: torch.Tensor) -> torch.Tensor:
    """Fold EG3D's run-time weight gain 1/sqrt(fan_in) (lr_multiplier 1) into a stored weight."""
    return t / math.sqrt(t[0].numel())


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t


def _flatten(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)  # Live3D's const (1, 1, D) -> our style (D,)


Transform = Callable[[torch.Tensor], torch.Tensor]

# (pattern over "<section>:<Live3DPortrait key>", LiveGaze key as a re.sub template, transform).
# First full match wins. Sections: "encoder" = EG3DInvEncoder (smp 0.3 DeepLabV3 resnet34 depth 3
# with BatchNorm removed + EncoderF + EncoderEhigh + EncoderFinal), "renderer" = TriplaneRenderer
# (EG3D's OSGDecoder and SuperresolutionHybrid8XDC, and the constant w `const`).
LIVE3D_KEY_RULES: tuple[tuple[str, str, Transform], ...] = (
    (r"encoder:EHigh_encoder\.net\.(\d+)\.(weight|bias)", r"high_encoder.net.\1.\2", _copy),
    (r"encoder:encoder\.(conv1|layer[12]\.\d+\.conv[12])\.(weight|bias)", r"low_encoder.backbone.\1.\2", _copy),
    (
        r"encoder:encoder\.(layer[12]\.\d+)\.downsample\.0\.(weight|bias)",
        r"low_encoder.backbone.\1.downsample.\2",
        _copy,
    ),
    (r"encoder:decoder\.0\.convs\.([0-3])\.0\.(weight|bias)", r"low_encoder.aspp.convs.\1.\2", _copy),
    (r"encoder:decoder\.0\.convs\.4\.1\.(weight|bias)", r"low_encoder.aspp.pool_conv.\1", _copy),
    (r"encoder:decoder\.0\.project\.0\.(weight|bias)", r"low_encoder.aspp.project.\1", _copy),
    (r"encoder:decoder\.1\.(weight|bias)", r"low_encoder.aspp.fuse.\1", _copy),
    (r"encoder:F_encoder\.patchembed\.(.+)", r"low_encoder.transformer.patch_embed.\1", _copy),
    (
        r"encoder:F_encoder\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.(.+)",
        r"low_encoder.transformer.blocks.\1.mlp.dwconv.\2",
        _copy,
    ),
    (r"encoder:F_encoder\.blocks\.(.+)", r"low_encoder.transformer.blocks.\1", _copy),
    (r"encoder:F_encoder\.net\.(\d+)\.(weight|bias)", r"low_encoder.head.\1.\2", _copy),
    (r"encoder:Final_encoder\.net\.(\d+)\.(weight|bias)", r"triplane_head.net.\1.\2", _copy),
    (r"encoder:Final_encoder\.pathembed\.(.+)", r"triplane_head.transformer.patch_embed.\1", _copy),
    (
        r"encoder:Final_encoder\.block\.mlp\.dwconv\.dwconv\.(.+)",
        r"triplane_head.transformer.blocks.0.mlp.dwconv.\1",
        _copy,
    ),
    (r"encoder:Final_encoder\.block\.(.+)", r"triplane_head.transformer.blocks.0.\1", _copy),
    (r"encoder:Final_encoder\.output_net\.(\d+)\.(weight|bias)", r"triplane_head.output_net.\1.\2", _copy),
    (r"renderer:const", r"superres.style", _flatten),
    (r"renderer:decoder\.net\.([02])\.weight", r"decoder.net.\1.weight", _equalized_lr),
    (r"renderer:decoder\.net\.([02])\.bias", r"decoder.net.\1.bias", _copy),
    (
        r"renderer:superresolution\.block(\d+)\.(conv0|conv1|torgb)\.affine\.weight",
        r"superres.blocks.\1.\2.affine.weight",
        _equalized_lr,
    ),
    (r"renderer:superresolution\.block(\d+)\.torgb\.weight", r"superres.blocks.\1.torgb.weight", _equalized_lr),
    (
        r"renderer:superresolution\.block(\d+)\.(conv0|conv1|torgb)\.(weight|bias|affine\.bias)",
        r"superres.blocks.\1.\2.\3",
        _copy,
    ),
)

# Keys of Live3DPortrait checkpoints that its forward pass never uses, dropped knowingly.
LIVE3D_IGNORED: tuple[str, ...] = (
    r"encoder:encoder\.layer[34]\..+",  # ResNet stages past encoder_depth=3: built by smp 0.3, never run
    r"renderer:.*\.(noise_const|noise_strength)",  # StyleGAN2 noise: Live3D renders with noise_mode='none'
    r"renderer:.*resample_filter",  # the fixed [1, 3, 3, 1] FIR filter, rebuilt in superres.py
)

LIVE3D_SECTIONS = {"encoder": "encoder_state_dict", "renderer": "renderer_state_dict"}
GAZE_PREFIXES = ("gaze_encoder.", "gaze_fusion.")  # LiveGaze's own modules: absent from Live3D by design


@dataclass(frozen=True)
class Live3DImport:
    """What ``load_live3d`` did, by key."""

    loaded: tuple[str, ...]  # LiveGaze keys filled from the checkpoint
    missing: tuple[str, ...]  # LiveGaze keys the checkpoint does not have (the gaze modules only)
    unexpected: tuple[str, ...]  # "section:key" of the checkpoint with no place in LiveGaze (strict=False only)
    ignored: tuple[str, ...]  # "section:key" known to be unused by Live3D (LIVE3D_IGNORED)


@dataclass(frozen=True)
class Live3DTranslation:
    """A Live3DPortrait checkpoint in LiveGaze's names, before any model is involved."""

    state: dict[str, torch.Tensor]  # LiveGaze key -> tensor, transformed to LiveGaze's parametrisation
    sources: dict[str, str]  # LiveGaze key -> "section:key" it came from
    unexpected: list[str]  # "section:key" matched by no rule
    ignored: list[str]  # "section:key" matched by LIVE3D_IGNORED


def translate_live3d(checkpoint: dict[str, Any]) -> Live3DTranslation:
    """Live3DPortrait's two state dicts -> LiveGaze names and parametrisation (no model needed)."""
    out = Live3DTranslation(state={}, sources={}, unexpected=[], ignored=[])
    for section, entry in LIVE3D_SECTIONS.items():
        for key, tensor in checkpoint[entry].items():
            name = f"{section}:{key}"
            if any(re.fullmatch(p, name) for p in LIVE3D_IGNORED):
                out.ignored.append(name)
                continue
            rule = next(((p, t, f) for p, t, f in LIVE3D_KEY_RULES if re.fullmatch(p, name)), None)
            if rule is None:
                out.unexpected.append(name)
                continue
            pattern, template, transform = rule
            target = re.sub(pattern, template, name)
            out.state[target] = transform(tensor)
            out.sources[target] = name
    return out


def load_live3d(path: str | Path, model: LiveGaze, *, strict: bool = True) -> Live3DImport:
    """Initialise ``model`` from a Live3DPortrait checkpoint; only the gaze modules may stay unfilled.

    ``strict``: checkpoint keys with no place in LiveGaze (and not in LIVE3D_IGNORED) are an error;
    otherwise they are reported in ``unexpected``. The model should use ``eg3d_plane_axes`` and
    ``coord_channels`` (the base preset does) to behave as Live3D did.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Live3D checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors share no base class
        message = f"not readable with torch.load(weights_only=True) ({type(e).__name__}: {e})"
        raise CheckpointError(f"{path}: {message}") from None
    entries = checkpoint if isinstance(checkpoint, dict) else {}
    absent = [k for k in LIVE3D_SECTIONS.values() if not isinstance(entries.get(k), dict)]
    if absent:
        raise CheckpointError(f"{path}: not a Live3DPortrait checkpoint: no {', '.join(absent)} (expected both)")
    found = translate_live3d(checkpoint)
    if found.unexpected and strict:
        raise CheckpointError(f"{path}: keys with no place in LiveGaze: {describe_keys(found.unexpected)}")
    own = model.state_dict()
    for key, tensor in found.state.items():
        if key not in own:
            raise CheckpointError(f"{path}: {found.sources[key]} maps to {key}, which this LiveGaze does not have")
        if tensor.shape != own[key].shape:
            raise CheckpointError(
                f"{path}: {found.sources[key]} has shape {tuple(tensor.shape)} (as {key}); "
                f"this LiveGaze config expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(found.state))
    not_gaze = [k for k in missing if not k.startswith(GAZE_PREFIXES)]
    if not_gaze:
        gaze_only = "only the gaze modules may be missing"
        raise CheckpointError(f"{path}: lacks weights for {describe_keys(not_gaze)} ({gaze_only})")
    model.load_state_dict(found.state, strict=False)
    return Live3DImport(
        loaded=tuple(sorted(found.state)),
        missing=tuple(missing),
        unexpected=tuple(found.unexpected),
        ignored=tuple(found.ignored),
    )
