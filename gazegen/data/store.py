"""The training store: ETH-XGaze's own layout, so the field's loaders open it unchanged.

    STORE/train_test_split.json        {"train": ["subject0000.h5", ...], "test": [...]}
    STORE/train/subject0000.h5         one file per subject
    STORE/test/subject0003.h5

Keys per file (N images), with the published names, shapes and dtypes:
    face_patch        (N, H, W, 3) uint8 BGR          (ETH-XGaze)
    face_gaze         (N, 2) float32 pitch/yaw rad    normalised camera frame
    face_head_pose    (N, 2) float32 pitch/yaw rad    normalised camera frame
    pitchyaw_head     (N, 2) float32 pitch/yaw rad    gaze in the head frame (GazeNeRF's name)
    head_mask, left_eye_mask, right_eye_mask  (N, H, W) uint8 0/255 (GazeNeRF)
    frame_index, cam_index  (N, 1) int32; cam_index is 0-based here (attribute `cam_index_base`)
    facial_landmarks  (N, 68, 2) float32, when known
and ours beside them:
    camera            (N, 25) float32 EG3D camera, renderer world units
    depth             (N, H, W) float32 millimetres of the normalised camera, 0 = background
File attributes: the normalisation (`focal`, `distance_mm`, `resolution`, `radius`), `subject`,
`format` ("gazegen-store"), `version`.
A store made by `gazegen data prepare` also holds `STORE/prepare.json`: its source and settings, so
that a rerun resumes only the same conversion (gazegen/data/prepare.py).

A subject file is written under a temporary name and renamed when complete, so a killed run
never leaves a truncated file that looks whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import cv2
import h5py
import numpy as np

from gazegen.config import NormalisationConfig
from gazegen.data.sample import Sample

STORE_FORMAT = "gazegen-store"
STORE_VERSION = 1
CAM_INDEX_BASE = 0
# the normalised camera, as file attributes; eye_above_centre_mm since it was added (older stores: ETH-XGaze's)
NORMALISATION_ATTRS = ("focal", "distance_mm", "resolution", "radius", "eye_above_centre_mm")
SPLIT_FILE = "train_test_split.json"
PREPARE_FILE = "prepare.json"  # `gazegen data prepare`'s record of its source and settings (gazegen/data/prepare.py)


def _mask_255(mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.uint8) * 255


class SubjectWriter:
    """Appends samples of one subject to ``path`` (via ``path.tmp``); ``close`` renames it into place.

    Use as a context manager; on an exception the temporary file is removed and nothing is renamed.
    """

    def __init__(self, path: str | Path, normalisation: NormalisationConfig, subject: str, chunk: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = h5py.File(self._tmp, "w")
        self._chunk = chunk
        self._norm = normalisation
        self._count = 0
        attrs = self._file.attrs
        attrs.update({"format": STORE_FORMAT, "version": STORE_VERSION, "subject": subject, "cam_index_base": CAM_INDEX_BASE})
        attrs.update({k: getattr(normalisation, k) for k in NORMALISATION_ATTRS})

    def _append(self, key: str, value: np.ndarray) -> None:
        if key not in self._file:
            self._file.create_dataset(
                key, shape=(0, *value.shape[1:]), maxshape=(None, *value.shape[1:]), dtype=value.dtype,
                # images, masks, depth: one row per chunk (random access reads one image), lzf (fast,
                # every h5py reads it); labels: chunks of `chunk` rows, uncompressed
                chunks=(1 if value.ndim >= 3 else self._chunk, *value.shape[1:]),
                compression="lzf" if value.ndim >= 3 else None,
            )
        ds = self._file[key]
        if ds.shape[0] != self._count:
            raise ValueError(f"{self.path}: key {key} has {ds.shape[0]} rows, expected {self._count}; every sample must carry the same fields")
        ds.resize(self._count + len(value), axis=0)
        ds[self._count :] = value

    def write(self, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return
        res = self._norm.resolution
        for s in samples:
            if s.image.shape != (res, res, 3) or s.image.dtype != np.uint8:
                raise ValueError(f"{self.path}: image of {s.subject} frame {s.frame_index} cam {s.cam_index} is {s.image.shape} {s.image.dtype}, expected ({res}, {res}, 3) uint8")
        columns: dict[str, np.ndarray] = {
            "face_patch": np.stack([cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR) for s in samples]),
            "face_gaze": np.stack([s.gaze for s in samples]).astype(np.float32),
            "face_head_pose": np.stack([s.head_pose for s in samples]).astype(np.float32),
            "pitchyaw_head": np.stack([s.gaze_head for s in samples]).astype(np.float32),
            "camera": np.stack([s.camera for s in samples]).astype(np.float32),
            "frame_index": np.array([[s.frame_index] for s in samples], dtype=np.int32),
            "cam_index": np.array([[s.cam_index + CAM_INDEX_BASE] for s in samples], dtype=np.int32),
        }
        optional = {
            "head_mask": lambda s: None if s.face_mask is None else _mask_255(s.face_mask),
            "left_eye_mask": lambda s: None if s.left_eye_mask is None else _mask_255(s.left_eye_mask),
            "right_eye_mask": lambda s: None if s.right_eye_mask is None else _mask_255(s.right_eye_mask),
            "depth": lambda s: None if s.depth is None else s.depth.astype(np.float32),
            "facial_landmarks": lambda s: None if s.landmarks is None else s.landmarks.astype(np.float32),
            "face_mat_norm": lambda s: None if s.face_mat_norm is None else s.face_mat_norm.astype(np.float32),
        }
        for key, get in optional.items():
            values = [get(s) for s in samples]
            if all(v is not None for v in values):
                columns[key] = np.stack(values)
            elif any(v is not None for v in values):
                raise ValueError(f"{self.path}: {key} is known for some samples and not others")
        dropped = sorted(set(self._file.keys()) - set(columns))
        if dropped:  # an earlier batch carried these fields: the file would end with short datasets
            raise ValueError(f"{self.path}: {', '.join(dropped)} known for earlier samples and not for these")
        for key, value in columns.items():
            self._append(key, value)
        self._count += len(samples)

    @property
    def rows(self) -> int:
        """Samples written so far."""
        return self._count

    def close(self) -> Path:
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close without keeping anything: the temporary file is removed, ``path`` is not written."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SubjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._file:  # aborted inside the block
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


def subject_filename(index: int) -> str:
    return f"subject{index:04d}.h5"


def write_split(store: str | Path, train: list[str], test: list[str]) -> Path:
    """Write ``train_test_split.json`` (file names, as ETH-XGaze does) atomically."""
    path = Path(store) / SPLIT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"train": sorted(train), "test": sorted(test)}, indent=1))
    os.replace(tmp, path)
    return path
