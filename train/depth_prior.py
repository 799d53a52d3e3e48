"""The depth prior D_gt of the depth loss L_D (paper eq. 5 and 10), pluggable by name (``DepthPriorConfig.kind``).

D_gt is the depth of I_f's identity and gaze seen from I_gt's camera. I_f is fixed by I_gt's frame
and the camera is I_gt's, so a triplet's prior depends on its target row only: every source is
a function of (subject, target row).

``dataset``  the store's own ``depth`` of I_gt (exact for procedural heads: same frame = same gaze
             and identity, same camera).
``teacher``  a frozen network renders I_f at I_gt's camera (Live3D, as the paper, through
             gazegen.live3d.load_live3d, or an earlier gazegen checkpoint). Each frame is
             encoded once and rendered at the cameras of its target rows; the depths are cached in
             the run folder in the ``files`` layout (``RUN/depth_prior/``), so each triplet's prior
             is computed once per run, and a resumed run reuses them.
``files``    ``<subject>.npy`` (N, H, W) float32 in millimetres of the subject's normalised camera,
             one map per row of the subject's h5 file (any H = W), 0 where there is no depth.

Units: the store and the files hold millimetres (docs/design.md); the renderer's depth is in world
units: ``world = mm / geometry.mm_per_world_unit(normalisation)``. Non-positive or non-finite
depth is invalid; ``depth_to_world`` brings a map to the neural rendering side, averaging valid
pixels only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from gazegen import geometry
from gazegen.config import DepthPriorConfig, ModelConfig, NormalisationConfig, resolve_preset
from gazegen.data.images import image_tensor, resize_area, resize_nearest
from gazegen.data.sample import Sample
from gazegen.data.xgaze import file_component
from gazegen.errors import GazegenError

if TYPE_CHECKING:
    from gazegen.models.livegaze import LiveGaze
    from gazegen.train.subjects import SubjectRows

log = logging.getLogger(__name__)

TEACHER_CACHE = "depth_prior"  # folder of the teacher's cached depths inside a run
MANIFEST = "manifest.json"


class DepthPriorError(GazegenError, ValueError):
    """The depth prior cannot be read; the message names the file and what to change."""


def depth_to_world(depth_mm: np.ndarray | None, norm: NormalisationConfig, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) millimetres (0 = invalid) -> world-unit depth and validity, both (size, size); None -> all invalid."""
    if depth_mm is None:
        return np.zeros((size, size), np.float32), np.zeros((size, size), bool)
    depth = np.asarray(depth_mm, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    world = np.where(valid, depth, 0.0).astype(np.float32) / np.float32(geometry.mm_per_world_unit(norm))
    if depth.shape[0] == size and depth.shape[1] == size:
        return world, valid
    if depth.shape[0] < size:  # growing: no mixing of valid and invalid pixels
        return resize_nearest(world, size), resize_nearest(valid.astype(np.uint8), size).astype(bool)
    v = valid.astype(np.float32)
    num, den = resize_area(world * v, size), resize_area(v, size)
    valid = den >= 0.5
    return np.where(valid, num / np.maximum(den, 1e-12), 0.0).astype(np.float32), valid


class DepthSource(Protocol):
    """Where D_gt comes from: ``read`` gives I_gt's prior in millimetres (0 = invalid), or None for none;
    ``check`` raises DepthPriorError at setup for subjects ``read`` would fail on (in a loader worker, mid-run)."""

    kind: str

    def check(self, subjects: Sequence[SubjectRows]) -> None: ...

    def read(self, subject: SubjectRows, row: int, sample: Sample) -> np.ndarray | None: ...


class NoDepth:
    """No prior (the depth loss is off): every pixel invalid."""

    kind = "none"

    def check(self, subjects: Sequence[SubjectRows]) -> None:
        return None

    def read(self, subject: SubjectRows, row: int, sample: Sample) -> np.ndarray | None:
        return None


class DatasetDepth:
    """The store's own depth of I_gt."""

    kind = "dataset"

    @staticmethod
    def _has_depth(subject: SubjectRows) -> bool:
        if subject.samples is not None:
            return all(sample.depth is not None for sample in subject.samples)
        return "depth" in subject.keys

    @staticmethod
    def _no_depth(path: Path, others: int = 0) -> DepthPriorError:
        also = f" (nor have {others} other subject file(s))" if others else ""
        return DepthPriorError(f"{path}: no 'depth' key{also}, so depth_prior.kind = 'dataset' has nothing to read (real "
                               "ETH-XGaze stores have no depth): use depth_prior.kind = 'teacher' or 'files', or "
                               "loss.depth_weight = 0")

    def check(self, subjects: Sequence[SubjectRows]) -> None:
        lacking = [s.path for s in subjects if not self._has_depth(s)]
        if lacking:
            raise self._no_depth(lacking[0], len(lacking) - 1)

    def read(self, subject: SubjectRows, row: int, sample: Sample) -> np.ndarray | None:
        if sample.depth is None:
            raise self._no_depth(subject.path)
        return sample.depth


class FileDepth:
    """``<subject>.npy`` files of a folder, memory-mapped."""

    kind = "files"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DepthPriorError(f"{self.folder}: depth prior folder not found (depth_prior.files)")
        self._maps: dict[str, np.ndarray] = {}

    def _load(self, subject: SubjectRows) -> np.ndarray:
        """``subject``'s maps, memory-mapped; DepthPriorError when the file is missing or of another shape."""
        path = self.folder / f"{file_component(subject.subject)}.npy"
        if not path.is_file():
            raise DepthPriorError(f"{path}: missing: the depth prior needs one <subject>.npy per subject file")
        depth = np.load(path, mmap_mode="r")
        rows = len(subject.labels.gaze)
        if depth.ndim != 3 or depth.shape[0] != rows or depth.shape[1] != depth.shape[2]:
            raise DepthPriorError(f"{path}: shape {depth.shape}, expected ({rows}, H, H): one map per row of {subject.path}")
        return depth

    def _map(self, subject: SubjectRows) -> np.ndarray:
        if subject.subject not in self._maps:
            self._maps[subject.subject] = self._load(subject)
        return self._maps[subject.subject]

    def check(self, subjects: Sequence[SubjectRows]) -> None:
        for subject in subjects:
            self._load(subject)

    def read(self, subject: SubjectRows, row: int, sample: Sample) -> np.ndarray | None:
        return np.array(self._map(subject)[row], dtype=np.float32)


def depth_source(cfg: DepthPriorConfig, run_dir: Path | None = None, enabled: bool = True) -> DepthSource:
    """The source named by ``cfg.kind`` (``teacher``: the run's cache, filled by ``prepare_teacher_prior``)."""
    if not enabled:
        return NoDepth()
    if cfg.kind == "dataset":
        return DatasetDepth()
    if cfg.kind == "files":
        if not cfg.files:
            raise DepthPriorError("depth_prior.kind = 'files' needs depth_prior.files (a folder of <subject>.npy)")
        return FileDepth(cfg.files)
    if run_dir is None:
        raise DepthPriorError("depth_prior.kind = 'teacher' needs a run folder to cache the teacher's depths in")
    return FileDepth(Path(run_dir) / TEACHER_CACHE)


# --------------------------------------------------------------------------- teacher


def teacher_path(cfg: DepthPriorConfig) -> Path:
    """The teacher's file or folder (``live3d``: found in the weights registry; MissingWeightsError says where to put it)."""
    if cfg.teacher == "live3d":
        from gazegen.weights import find_weight

        return find_weight("live3d")
    path = Path(cfg.teacher)
    if not path.exists():
        raise DepthPriorError(f"{path}: teacher not found (depth_prior.teacher: 'live3d', a Live3D .pt file or a gazegen "
                              "checkpoint folder)")
    return path


def load_teacher(cfg: DepthPriorConfig, device: torch.device | str = "cpu") -> LiveGaze:
    """The frozen teacher, in eval mode: a gazegen checkpoint (its own config) or Live3D weights in ``teacher_model``."""
    from gazegen.checkpoint import load_checkpoint
    from gazegen.live3d import load_live3d
    from gazegen.config import load_config
    from gazegen.models.livegaze import LiveGaze

    path = teacher_path(cfg)
    if path.is_dir():
        model = load_checkpoint(path)
    else:
        model = LiveGaze(load_config(ModelConfig, resolve_preset(cfg.teacher_model)))
        load_live3d(path, model)  # the gaze modules stay at their initialisation: zero output, Live3D unchanged
    return model.to(device).eval().requires_grad_(False)


def _manifest(cfg: DepthPriorConfig, path: Path) -> dict:
    st = path.stat()
    return {"teacher": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "teacher_model": cfg.teacher_model, "min_alpha": cfg.teacher_min_alpha}


@torch.no_grad()
def teacher_depth(teacher: LiveGaze, subject: SubjectRows, reader, rows: np.ndarray, batch: int,
                  min_alpha: float = 0.0) -> np.ndarray:
    """(len(rows), R, R) millimetres: for each target row, the teacher's depth of its frame's I_f at its camera."""
    device = next(teacher.parameters()).device
    lab, size = subject.labels, teacher.cfg.image_resolution
    out = np.zeros((len(rows), teacher.cfg.render.neural_resolution, teacher.cfg.render.neural_resolution), np.float32)
    frames = lab.frame_index[rows]
    for frame in np.unique(frames):
        at = np.flatnonzero(frames == frame)
        frontal = subject.frontal_row(int(frame))
        image = image_tensor(reader[frontal].image, size)[None].to(device)  # (1, 3, S, S)
        gaze = torch.as_tensor(lab.gaze_head[frontal], dtype=torch.float32, device=device)[None]  # (1, 2): I_gt's gaze
        source_camera = torch.as_tensor(lab.camera[frontal], dtype=torch.float32, device=device)[None]  # (1, 25)
        features = teacher.encode(image, source_camera)
        triplane = teacher.redirect(features, gaze)  # (1, 3, C, P, P), once per frame
        for start in range(0, len(at), batch):
            chunk = at[start : start + batch]
            cameras = torch.as_tensor(lab.camera[rows[chunk]], dtype=torch.float32, device=device)  # (k, 25)
            rendered = teacher.render(triplane, cameras, source=features)
            depth = rendered.depth[:, 0].float() * subject.mm_per_unit  # (k, R, R) millimetres
            depth = torch.where(rendered.alpha[:, 0] >= min_alpha, depth, torch.zeros_like(depth))
            out[chunk] = depth.cpu().numpy()
    return out


def prepare_teacher_prior(cfg: DepthPriorConfig, subjects: Sequence[SubjectRows], run_dir: Path,
                          device: torch.device | str = "cpu") -> Path:
    """Fill ``run_dir/depth_prior/<subject>.npy`` with the teacher's depths of every target row; reuse what is there.

    A cache made by another teacher (manifest: path, size, mtime, preset, alpha cut) is discarded.
    Each file is written under a temporary name and renamed, so an interrupted run leaves no torn file.
    """
    from gazegen.data.xgaze import open_subject

    path = teacher_path(cfg)  # a missing teacher is named before anything is made
    cache = Path(run_dir) / TEACHER_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(cfg, path)
    manifest_file = cache / MANIFEST
    if manifest_file.is_file() and json.loads(manifest_file.read_text()) != manifest:
        log.warning("%s: made by another teacher; recomputing", cache)
        for old in cache.glob("*.npy"):
            old.unlink()
    manifest_file.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    todo = {s.subject: s for s in subjects if not (cache / f"{file_component(s.subject)}.npy").is_file()}
    if not todo:
        return cache
    teacher = load_teacher(cfg, device)
    log.info("depth prior: teacher %s renders %d subject(s) into %s", path, len(todo), cache)
    for s in todo.values():
        rows = np.unique(s.targets)
        with contextlib.nullcontext(s.samples) if s.samples is not None else open_subject(s.path) as reader:
            depth = teacher_depth(teacher, s, reader, rows, cfg.teacher_batch, cfg.teacher_min_alpha)
        full = np.zeros((len(s.labels.gaze), *depth.shape[1:]), np.float32)
        full[rows] = depth
        tmp = cache / f".{file_component(s.subject)}.{os.getpid()}.npy"
        np.save(tmp, full)
        os.replace(tmp, cache / f"{file_component(s.subject)}.npy")
    return cache
