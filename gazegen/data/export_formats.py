"""The two published layouts `gazegen export` writes, one identity at a time.

ETH-XGaze (``xgaze``), what the official baseline's ``GazeDataset`` (xucong-zhang/ETH-XGaze,
data_loader.py) opens: ``DEST/train_test_split.json`` (``{"train": [...], "test": [...]}``, file
names) and ``DEST/<split>/subjectXXXX.h5``, read with ``h5py.File(..., "r", swmr=True)``;
``face_patch[i]`` is flipped BGR -> RGB and ``face_gaze[i]`` is the label. Keys (N images):

    face_patch       (N, H, W, 3) uint8 BGR
    face_gaze        (N, 2) float32 gaze (pitch, yaw) radians, normalised camera
    face_head_pose   (N, 2) float32 head pose (pitch, yaw) radians, normalised camera
    face_mat_norm    (N, 3, 3) float32 rotation from the capture camera into the normalised one
    frame_index      (N, 1) int32 one (source, gaze) pair of the identity; its views share it
    cam_index        (N, 1) int32 the view of the synthesis grid (0-based)
and gazegen's store keys beside them, so gazegen's own readers open the files as a training
store: ``pitchyaw_head`` (gaze in the head frame), ``head_rotation`` (N, 3, 3) float32, ``camera``
(N, 25), ``depth`` (N, H, W) float32 mm, the store attributes (``format``, normalisation) and
``row_id`` (provenance).

``face_mat_norm`` keeps ETH-XGaze's meaning, ``g_norm = face_mat_norm @ g_capture``: the capture
camera of a rendered image is its source's photo camera, so it is the shards' ``face_mat_norm``
(photo -> the source's normalised camera) followed by the view turn (the source's normalised
camera -> this image's): ``R_head(face_head_pose) @ R_head(source_head_pose).T @ face_mat_norm``;
``face_mat_norm.T`` takes a prediction back into the photo's camera (as gazegen/data/parquet.py
``gaze_in_photo`` does for a row), and it is the identity for a source that was already a
normalised crop seen without a view turn. ``head_rotation`` is ``R_head(face_head_pose)``, the
head frame -> this image's normalised camera (no roll, gazegen/geometry.py), so
``head_rotation @ vector(pitchyaw_head) = vector(face_gaze)``.

GazeHub (``gazehub``), the layout of Cheng et al.'s benchmark as GazeTR and L2CS-Net read it:
``DEST/Image/<split>/subjectXXXX/000000.jpg`` (BGR as cv2 writes it) and one space-separated
label file per identity, ``DEST/Label/<split>/subjectXXXX.label``, joined at the end into
``DEST/Label/<split>.label``. The first line is the header::

    face gaze head origin cam_index frame_index normmat

``face`` is the image path relative to ``Image/<split>``; ``gaze`` and ``head`` are
``pitch,yaw`` in radians (the values of ``face_gaze`` / ``face_head_pose``, pitch first, as
GazeHub's ETH-XGaze conversion copies them from the h5 files); ``origin`` is the
row id (percent-encoded, so it holds no space); ``normmat`` is ``face_mat_norm``'s 9 numbers,
row-major, comma-separated (the GazeHub readers, GazeTR's ``Decode_ETH`` among them, read columns by
position: ``face gaze head origin`` first, the normalisation matrix seventh). Test-split files keep
the gaze column (the labels are known).

Every output is written under a temporary name and renamed when complete: an h5 file, a
GazeHub image folder then its label file (which alone marks the identity done).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cv2
import h5py
import numpy as np

from gazegen import geometry
from gazegen.config import ExportConfig, NormalisationConfig
from gazegen.data.store import CAM_INDEX_BASE, NORMALISATION_ATTRS, SPLIT_FILE, STORE_FORMAT, STORE_VERSION

EXPORT_FORMAT = "gazegen-export"
GAZEHUB_HEADER = "face gaze head origin cam_index frame_index normmat"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Identity:
    """One output subject: the rows of one source file (or folder)."""

    key: str  # the source file (or folder), relative to the synthesis inputs
    name: str  # output name, "subject0000"
    split: str  # "train" or "test"
    rows: int


@dataclass(frozen=True)
class RowBatch:
    """Decoded rows of one identity, in the order they are written."""

    image: np.ndarray  # (N, H, W, 3) uint8 RGB
    depth: np.ndarray | None  # (N, H, W) float32 millimetres, 0 = no surface
    gaze: np.ndarray  # (N, 2) float32 pitch/yaw, normalised camera
    head_pose: np.ndarray  # (N, 2) float32 pitch/yaw, normalised camera
    gaze_head: np.ndarray  # (N, 2) float32 pitch/yaw, head frame
    camera: np.ndarray  # (N, 25) float32 EG3D camera
    source_head_pose: np.ndarray  # (N, 2) float32 pitch/yaw, the source's normalised camera (before the view turn)
    source_mat_norm: np.ndarray  # (N, 3, 3) float32 the source photo's camera -> the source's normalised camera
    frame_index: np.ndarray  # (N,) int64
    cam_index: np.ndarray  # (N,) int64
    row_id: list[str]

    @property
    def head_rotation(self) -> np.ndarray:
        """(N, 3, 3) float32 R_head: the head frame -> each image's normalised camera (module docstring)."""
        return geometry.head_pose_to_rotation(self.head_pose.astype(np.float64)).astype(np.float32)

    @property
    def face_mat_norm(self) -> np.ndarray:
        """(N, 3, 3) float32 the source photo's camera -> each image's normalised camera (module docstring)."""
        turn = geometry.head_pose_to_rotation(self.head_pose.astype(np.float64)) @ np.swapaxes(
            geometry.head_pose_to_rotation(self.source_head_pose.astype(np.float64)), -1, -2)  # source camera -> this one
        return (turn @ self.source_mat_norm.astype(np.float64)).astype(np.float32)


def remove(path: Path) -> None:
    """Deletes a file or a folder; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- ETH-XGaze h5


class XGazeWriter:
    """``DEST/<split>/<name>.h5`` via ``<name>.h5.tmp``; ``close`` renames it into place."""

    def __init__(self, dest: Path, identity: Identity, norm: NormalisationConfig, attrs: dict[str, str]) -> None:
        self.path = self.final_path(dest, identity)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._file = h5py.File(self._tmp, "w")
        self._count = 0
        self._file.attrs.update({"format": STORE_FORMAT, "version": STORE_VERSION, "subject": identity.name,
                                 "cam_index_base": CAM_INDEX_BASE, "source_identity": identity.key,
                                 "export_format": EXPORT_FORMAT, **attrs})
        self._file.attrs.update({k: getattr(norm, k) for k in NORMALISATION_ATTRS})

    @staticmethod
    def final_path(dest: Path, identity: Identity) -> Path:
        return dest / identity.split / f"{identity.name}.h5"

    @classmethod
    def done(cls, dest: Path, identity: Identity) -> bool:
        return cls.final_path(dest, identity).is_file()

    def _append(self, key: str, value: np.ndarray) -> None:
        if key not in self._file:
            image = key in ("face_patch", "depth")
            # images and depth: one row per chunk, deflate (built into every HDF5); labels: 256 rows a chunk
            self._file.create_dataset(key, shape=(0, *value.shape[1:]), maxshape=(None, *value.shape[1:]), dtype=value.dtype,
                                      chunks=(1 if image else 256, *value.shape[1:]), compression="gzip" if image else None,
                                      compression_opts=1 if image else None)
        ds = self._file[key]
        ds.resize(self._count + len(value), axis=0)
        ds[self._count:] = value

    def write(self, batch: RowBatch) -> None:
        columns = {
            "face_patch": np.ascontiguousarray(batch.image[..., ::-1]),  # RGB -> BGR
            "face_gaze": batch.gaze.astype(np.float32),
            "face_head_pose": batch.head_pose.astype(np.float32),
            "face_mat_norm": batch.face_mat_norm,
            "frame_index": batch.frame_index.astype(np.int32)[:, None],
            "cam_index": (batch.cam_index + CAM_INDEX_BASE).astype(np.int32)[:, None],
            "pitchyaw_head": batch.gaze_head.astype(np.float32),
            "head_rotation": batch.head_rotation,
            "camera": batch.camera.astype(np.float32),
            "row_id": np.array(batch.row_id, dtype=h5py.string_dtype()),
        }
        if batch.depth is not None:
            columns["depth"] = batch.depth.astype(np.float32)
        for key, value in columns.items():
            self._append(key, value)
        self._count += len(batch.row_id)

    def close(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def finish_xgaze(dest: Path, identities: list[Identity]) -> None:
    """``train_test_split.json``: file names per split, as ETH-XGaze's."""
    split = {s: sorted(f"{i.name}.h5" for i in identities if i.split == s) for s in ("train", "test")}
    write_text_atomic(dest / SPLIT_FILE, json.dumps(split, indent=1))


# --------------------------------------------------------------------------- GazeHub


def _pair(values: np.ndarray) -> str:
    return ",".join(f"{float(v):.9g}" for v in values)  # 9 significant digits: float32 round-trips


class GazeHubWriter:
    """Images into ``Image/<split>/<name>.tmp/``, renamed to ``<name>/``; then ``Label/<split>/<name>.label``."""

    def __init__(self, dest: Path, identity: Identity, cfg: ExportConfig) -> None:
        self.identity, self.cfg = identity, cfg
        self.image_dir = dest / "Image" / identity.split / identity.name
        self.label_path = self.final_path(dest, identity)
        self._tmp = self.image_dir.with_name(identity.name + TMP_SUFFIX)
        for stale in (self._tmp, self.image_dir):  # an earlier, unfinished attempt
            remove(stale)
        self._tmp.mkdir(parents=True)
        self._lines = [GAZEHUB_HEADER]
        self._params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality] if cfg.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]

    @staticmethod
    def final_path(dest: Path, identity: Identity) -> Path:
        return dest / "Label" / identity.split / f"{identity.name}.label"

    @classmethod
    def done(cls, dest: Path, identity: Identity) -> bool:
        return cls.final_path(dest, identity).is_file()

    def write(self, batch: RowBatch) -> None:
        mats = batch.face_mat_norm.reshape(-1, 9)
        for i, row_id in enumerate(batch.row_id):
            name = f"{len(self._lines) - 1:06d}.{self.cfg.image_format}"
            if not cv2.imwrite(str(self._tmp / name), np.ascontiguousarray(batch.image[i, ..., ::-1]), self._params):
                raise OSError(f"{self._tmp / name}: OpenCV could not write the image")
            self._lines.append(" ".join([
                f"{self.identity.name}/{name}", _pair(batch.gaze[i]), _pair(batch.head_pose[i]), quote(row_id, safe="/#-_.:"),
                str(int(batch.cam_index[i])), str(int(batch.frame_index[i])), _pair(mats[i]),
            ]))

    def close(self) -> None:
        os.replace(self._tmp, self.image_dir)
        write_text_atomic(self.label_path, "\n".join(self._lines) + "\n")

    def abort(self) -> None:
        remove(self._tmp)


def finish_gazehub(dest: Path, identities: list[Identity]) -> None:
    """``Label/<split>.label``: the identities' label files joined under one header."""
    for split in ("train", "test"):
        members = sorted((i for i in identities if i.split == split), key=lambda i: i.name)
        if not members:
            continue
        lines = [GAZEHUB_HEADER]
        for identity in members:
            lines += GazeHubWriter.final_path(dest, identity).read_text().splitlines()[1:]
        write_text_atomic(dest / "Label" / f"{split}.label", "\n".join(lines) + "\n")
