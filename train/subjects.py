"""The subjects of a training run: which files, which rows of each, and the split by whole subjects.

``SubjectRows`` is one subject file (or one subject held in memory) with the rows that serve as
targets and as sources; its labels are the whole file's. ``split_subjects`` holds whole subjects of
a store's train split out for validation, by a seeded draw; ``mask_warning`` says what a store without
face or eye masks leaves off. Both the triplet dataset (train/data.py) and the depth priors
(train/depth_prior.py) read subjects through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazegen import geometry
from gazegen.config import NormalisationConfig, TrainDataConfig
from gazegen.data.sample import Sample
from gazegen.data.splits import store_splits
from gazegen.data.xgaze import DataError, Labels, open_subject


@dataclass(frozen=True)
class SubjectRows:
    """One subject file and the rows of it that take part (the labels are the whole file's)."""

    path: Path
    subject: str  # e.g. "subject0003"
    labels: Labels
    normalisation: NormalisationConfig
    targets: np.ndarray  # (n,) int64 rows that serve as I_gt (and I_f)
    sources: np.ndarray  # (m,) int64 rows I_s is drawn from
    samples: tuple[Sample, ...] | None = None  # the rows themselves, when the subject is held in memory (no file)
    keys: frozenset[str] = frozenset()  # the keys of its file (checked at setup: depth, masks); none when held in memory

    @property
    def mm_per_unit(self) -> float:
        return geometry.mm_per_world_unit(self.normalisation)

    def frontal_row(self, frame: int) -> int:
        """The target row of ``frame`` whose head pose is nearest (0, 0) (ties: the lowest camera)."""
        rows = self.targets[self.labels.frame_index[self.targets] == frame]
        pose = np.linalg.norm(self.labels.head_pose[rows].astype(np.float64), axis=1)
        return int(rows[np.lexsort((self.labels.cam_index[rows], pose))[0]])


def read_subject(path: Path, targets: np.ndarray | None = None, sources: np.ndarray | None = None,
                 frames_per_subject: int = 0) -> SubjectRows:
    """Labels of one subject file; rows default to every row of the first ``frames_per_subject`` frames, evenly spaced."""
    with open_subject(path) as reader:
        labels, norm, name, keys = reader.labels, reader.normalisation, reader.subject, frozenset(reader.keys)
    rows = np.arange(len(labels.gaze), dtype=np.int64)
    if frames_per_subject:
        frames = np.unique(labels.frame_index)
        keep = frames[np.unique(np.linspace(0, len(frames) - 1, min(frames_per_subject, len(frames))).round().astype(int))]
        rows = rows[np.isin(labels.frame_index, keep)]
    targets = rows if targets is None else np.asarray(targets, dtype=np.int64)
    sources = targets if sources is None else np.asarray(sources, dtype=np.int64)
    return SubjectRows(Path(path), name, labels, norm, targets, sources, keys=keys)


def subject_from_samples(samples: Sequence[Sample], targets: np.ndarray | None = None,
                         sources: np.ndarray | None = None) -> SubjectRows:
    """A subject held in memory (e.g. an evaluation's input group): rows are the samples' positions."""
    if not samples:
        raise DataError("no samples given")
    first = samples[0]
    if any(s.subject != first.subject or s.normalisation != first.normalisation for s in samples):
        raise DataError(f"samples of {first.subject}: every sample must have one subject and one normalisation")
    stack = lambda key, dtype: np.stack([np.asarray(getattr(s, key), dtype=dtype) for s in samples])  # noqa: E731
    labels = Labels(stack("gaze", np.float32), stack("head_pose", np.float32), stack("gaze_head", np.float32),
                    stack("camera", np.float32), stack("frame_index", np.int64), stack("cam_index", np.int64))
    rows = np.arange(len(samples), dtype=np.int64)
    targets = rows if targets is None else np.asarray(targets, dtype=np.int64)
    sources = targets if sources is None else np.asarray(sources, dtype=np.int64)
    return SubjectRows(Path(first.subject), first.subject, labels, first.normalisation, targets, sources, tuple(samples))


def common_normalisation(subjects: Sequence[SubjectRows]) -> NormalisationConfig:
    """The one normalised camera of ``subjects`` (recorded in checkpoints); DataError when they differ."""
    found = {s.normalisation for s in subjects}
    if len(found) != 1:
        raise DataError(f"{len(found)} normalisations among {len(subjects)} subjects ({', '.join(sorted(map(str, found)))}): "
                        "one model is fitted to one normalised camera")
    return found.pop()


EYE_MASKS = ("left_eye_mask", "right_eye_mask")  # h5 keys of the masks (GazeNeRF's names: gazegen/data/xgaze.py MASKS)
FACE_MASK = "head_mask"


def mask_warning(store: Path, subjects: Sequence[SubjectRows]) -> str | None:
    """What trains and scores without masks when subject files lack them (the official ETH-XGaze h5 files
    have none), naming the store; None when every file has them (subjects held in memory are not looked at)."""
    files = [s for s in subjects if s.samples is None]
    no_eyes = [s.path for s in files if not set(EYE_MASKS) <= s.keys]
    no_face = [s.path for s in files if FACE_MASK not in s.keys]
    off = []
    if no_eyes:
        off.append(f"{len(no_eyes)} of {len(files)} subject file(s) (e.g. {no_eyes[0].name}) have no eye masks "
                   f"({', '.join(EYE_MASKS)}): their eye term loss/eyes is 0 (loss.eye_weight does nothing) and "
                   "validation's psnr_eyes is nan")
    if no_face:
        off.append(f"{len(no_face)} of {len(files)} subject file(s) (e.g. {no_face[0].name}) have no face mask "
                   f"({FACE_MASK}): their face terms (loss/face, loss.raw_weight's) and psnr_face cover the whole image")
    return f"{store}: {'; '.join(off)}" if off else None


@dataclass(frozen=True)
class SubjectSplit:
    """Subject files by role: the split is by whole subjects."""

    train: list[Path]
    val: list[Path]
    test: list[Path]  # the store's test split (held out: benchmarks, fine-tuning, evaluation)


def split_subjects(store: Path, cfg: TrainDataConfig) -> SubjectSplit:
    """Hold ``cfg.val_subjects`` whole subjects of the train split out for validation (seeded draw)."""
    splits = store_splits(store)
    train = splits.split("train")
    if cfg.val_subjects >= len(train):
        raise DataError(f"{store}: {len(train)} training subject(s) cannot spare {cfg.val_subjects} for validation "
                        "(data.val_subjects)")
    order = np.random.default_rng([cfg.split_seed]).permutation(len(train))
    val = sorted(train[i] for i in order[: cfg.val_subjects])
    return SubjectSplit(train=[p for p in train if p not in val], val=val, test=splits.split("test"))
