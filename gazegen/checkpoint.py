"""One checkpoint format for every network gazegen saves (LiveGaze, the gaze estimator).

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
whole checkpoint or none; the directory and its files get the modes of an ordinary write under the
process umask (0755 and 0644 under umask 022), not a temporary file's private ones. ``load_pretrained``
rebuilds the network from the checkpoint's own config.json and loads the weights strictly; anything
missing, unreadable or inconsistent raises ``CheckpointError`` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gazegen.config import ConfigError, ModelConfig, NormalisationConfig, to_dict
from gazegen.errors import GazegenError
from gazegen.models.livegaze import LiveGaze

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"

Network = TypeVar("Network", bound=nn.Module)  # a class with config_class, format_version, cls(cfg) and .cfg
T = TypeVar("T")  # what a read of the weights file returns


class CheckpointError(GazegenError, ValueError):
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


def foreign_entries(directory: Path, beside: Collection[str] = ()) -> list[str]:
    """The names in the folder ``directory`` that are neither a checkpoint's files nor the caller's ``beside`` files
    (a folder named like one counts), sorted."""
    known = {CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE, *beside}
    return sorted(p.name for p in directory.iterdir() if not (p.is_file() and p.name in known))


def _check_replaceable(directory: Path, beside: Collection[str]) -> None:
    """CheckpointError when ``directory`` exists and holds anything but a checkpoint's files and the caller's ``beside``
    files: a checkpoint replaces only an earlier checkpoint, never a folder of other things."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a folder; a checkpoint is written as one")
    foreign = foreign_entries(directory, beside)
    if foreign:
        raise CheckpointError(f"{directory}: holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, which "
                              "is no checkpoint's: not replaced")


def save_pretrained(
    directory: str | Path,
    model: nn.Module,
    *,
    metadata: dict[str, Any] | None = None,
    normalisation: NormalisationConfig | None = None,
    train_state: dict[str, Any] | None = None,
    beside: Collection[str] = (),
) -> Path:
    """Write ``model`` (and optionally JSON-able ``metadata`` and a ``train_state``) as a checkpoint
    directory, atomically; ``normalisation`` (the camera of the images the weights fit) goes into
    ``metadata.normalisation``. An existing ``directory`` is replaced only when it holds nothing but
    an earlier checkpoint's files and the files named in ``beside`` (which the caller writes next to
    its checkpoints); CheckpointError otherwise, before anything is written."""
    directory = Path(directory)
    _check_replaceable(directory, beside)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # an ordinary mkdir: the umask's mode (tempfile.mkdtemp's is 0700)
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
        mode = stat.S_IMODE((tmp / CONFIG_FILE).stat().st_mode)  # written by open(): the umask's mode (safetensors writes 0600)
        for path in tmp.iterdir():
            path.chmod(mode)
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
    folder = path.parent
    if folder.is_file():  # a checkpoint's own file given (tab completion stops at model.safetensors): name its folder
        known = f", e.g. {folder.parent}" if folder.name in (CONFIG_FILE, WEIGHTS_FILE) else ""
        raise CheckpointError(f"{folder}: a file; give the checkpoint folder ({CONFIG_FILE} + {WEIGHTS_FILE}){known}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint directory not found")
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


def _read_weights(directory: str | Path, read: Callable[[str], T]) -> T:
    """``read`` of a checkpoint's weights file path; any failure of it is a CheckpointError naming the file
    (safetensors raises SafetensorError, with no common base, for every malformed file)."""
    path = _require(Path(directory) / WEIGHTS_FILE)
    try:
        return read(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _tensor_names(path: str) -> list[str]:
    with safe_open(path, framework="pt") as weights:
        return list(weights.keys())


def load_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by name, on the CPU, without building a network (to fill another architecture)."""
    return _read_weights(directory, lambda path: load_file(path, device="cpu"))


def check_weights(directory: str | Path) -> list[str]:
    """The names of a checkpoint's tensors, read from its weights file's header alone (no tensor is
    loaded): a truncated or malformed file raises the ``CheckpointError`` that ``load_state`` would.
    For a driver that only hands the checkpoint to workers (synthesis), so that a damaged file is
    reported before any work starts."""
    return _read_weights(directory, _tensor_names)


def load_pretrained(directory: str | Path, cls: type[Network], *, device: str | torch.device = "cpu") -> Network:
    """Rebuild ``cls`` from a checkpoint's config.json and load its weights strictly (eval mode)."""
    cfg = read_header(directory, cls).config
    state = load_state(directory)
    path = Path(directory) / WEIGHTS_FILE
    model = cls(cfg)
    _check_state(path, state, model.state_dict(), "the model built from config.json")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> LiveGaze:
    """A LiveGaze checkpoint, rebuilt and loaded (``load_pretrained`` of LiveGaze)."""
    return load_pretrained(directory, LiveGaze, device=device)


def checkpoint_hash(directory: str | Path) -> str:
    """One sha256 over the bytes of config.json and then model.safetensors: the identity of the
    checkpoint, its config (architecture, format, metadata) as well as its weights (train_state.pt
    and any other file left out). Synthesis records it in every row and manifest. It is not the
    sha256 of model.safetensors alone (the one a model card and `gazegen weights` give), and a
    checkpoint whose config.json changes gets another hash with the same weights; it is kept as it
    is because the manifests of earlier runs hold it."""
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
