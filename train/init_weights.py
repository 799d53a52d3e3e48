"""How a run's weights start (``TrainConfig.init``): random, Live3D's, or a gazegen checkpoint's, into a model that may have
grown branches beyond it (``GROWN``: they start as no-ops, so the model renders what the checkpoint rendered)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gazegen.checkpoint import load_state, read_header
from gazegen.live3d import load_live3d
from gazegen.models.livegaze import LiveGaze
from gazegen.train.errors import TrainingError
from gazegen.weights import SHIPPED_DIR, find_weight

GROWN = ("pixels.", "detail.", "surface.", "mean.")  # branches a model may have beyond its init checkpoint: they start as no-ops (models/pixel_features.py, source_detail.py, source_surface.py, mean_planes.py)


def own_model_hint(metadata: dict) -> str:
    """What to do when a checkpoint's weights do not fit the model: train with its own model (its run's preset and
    ``model_overrides``, from its ``metadata.train_config`` when it has one) or choose another init."""
    recorded = metadata.get("train_config") or {}
    preset = recorded.get("model") if isinstance(recorded, dict) else None
    if not isinstance(preset, str) or not preset:
        return "train with the model it was saved with (its config.json's \"config\") or choose another init"
    overrides = recorded.get("model_overrides") or []
    own = f"model = {json.dumps(preset)}" + (f", model_overrides = {json.dumps(list(overrides))}" if overrides else "")
    return f"train with its own model ({own}, as its run did) or choose another init"


def load_grown(model: LiveGaze, state: dict[str, torch.Tensor], path: Path, hint: str = "") -> list[str]:
    """Load ``state`` into ``model``, which may have branches the checkpoint lacks (``GROWN``); returns those branches.

    A grown branch starts as a no-op (its output layer is zero), so the model renders what the
    checkpoint rendered: a prior trained without pixel features continues with them. Weights of another
    architecture: TrainingError in one line (how many tensors differ, one of them, and ``hint``: what to do).
    """
    own = model.state_dict()
    differ = [k for k in state if k in own and state[k].shape != own[k].shape]
    if differ:
        key = min(differ)  # the first by name, as the weights file lists them
        raise TrainingError(f"{path}: its weights do not fit this model: {len(differ)} of its {len(state)} tensors differ "
                            f"in shape, e.g. {key} {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} in "
                            f"the model; {hint or 'train with the model it was saved with or choose another init'}")
    found = model.load_state_dict(state, strict=False)
    foreign = [k for k in found.missing_keys if not k.startswith(GROWN)] + list(found.unexpected_keys)
    if foreign:
        raise TrainingError(f"{path}: its weights do not fit this model: {', '.join(foreign[:5])} "
                            f"({len(foreign)} tensors missing or unexpected)")
    return sorted({k.split(".")[0] for k in found.missing_keys})


def initialise(model: LiveGaze, init: str) -> str:
    """Fill ``model`` from ``init`` ("" random, "live3d", a Live3D .pt or a gazegen checkpoint); says what it did."""
    if not init:
        return "random initialisation"
    path = find_weight("live3d") if init == "live3d" else Path(init)
    if not path.exists() and not path.is_absolute() and (SHIPPED_DIR.parent / path).exists():
        path = SHIPPED_DIR.parent / path  # a shipped checkpoint named from the repository root (weights/...)
    if path.is_dir():
        header = read_header(path, LiveGaze)  # a LiveGaze checkpoint of a format this version reads
        added = load_grown(model, load_state(path), path, own_model_hint(header.metadata))
        return f"initialised from checkpoint {path}" + (f" (new, starting as no-ops: {', '.join(added)})" if added else "")
    if not path.is_file():
        raise TrainingError(f"{path}: init not found (init: '', 'live3d', a Live3D .pt or a gazegen checkpoint folder)")
    found = load_live3d(path, model)
    return f"initialised from Live3D {path} ({len(found.loaded)} tensors; gaze modules new: {len(found.missing)})"
