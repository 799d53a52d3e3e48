"""Readers of published gaze h5 files, all yielding `Sample` (RGB uint8, masks {0, 1}, radians).

Three layouts, told apart by `detect_format`:

``eth-xgaze``  the official normalised patches (``subjectXXXX.h5``): ``face_patch`` (N, 224|448,
    224|448, 3) uint8 **BGR**, ``face_gaze`` and ``face_head_pose`` (N, 2) pitch/yaw radians in the
    normalised camera, ``face_mat_norm`` (N, 3, 3), ``frame_index`` and ``cam_index`` (N, 1),
    ``facial_landmarks`` (N, 68, 2) when present (the normalisation scripts write it; loaders of
    the released 224 px files list no such key, cf. VIPL-TAL-GAZE/GAZE2021 issue #7).
    Normalisation: focal 960 with 600 mm at 224 px or 300 mm at 448 px (config).
``gazenerf``   GazeNeRF's 512 px files (flat ``xgaze_subjectXXXX.h5``): ``face_patch`` BGR,
    ``head_mask`` / ``left_eye_mask`` / ``right_eye_mask`` 0/255, ``facial_landmarks``,
    ``frame_index`` and ``cam_index`` (uint8), ``face_head_pose``, the gaze in the head frame
    ``pitchyaw_head`` and a 3DMM fit (``latent_codes``, ``w2c_Rmat``, ``w2c_Tvec``, ``c2w_Rmat``,
    ``c2w_Tvec``, ``inmat``, ``inv_inmat``: kept in ``Sample.extras``). ``pitchyaw`` is a screen
    point, not a gaze, and ``pitchyaw_3d`` is the raw 3D gaze target: both are ignored.
``gazegen-store``  our own store (gazegen/data/store.py), told by its ``format`` attribute.

What each layout must hold (keys, shapes, dtypes, finite radian labels) is checked before reading
(gazegen/data/h5_layout.py); the readers here turn the rows into Samples.

What the public code establishes (sources: xucong-zhang/ETH-XGaze ``normalization_example.py``;
X-Shi/Data-Normalization-Gaze-Estimation ``ETH-XGaze_data_normalization/nor_eye_face.py``;
AlessandroRuzzi/GazeNeRF ``dataset_pre_processing.py``, ``utils/gaze_estimation_utils.py``,
``pre_processing/data_process.py``, ``datasets/eth_xgaze.py``):

* ``face_gaze`` = (asin(-g_y), atan2(-g_x, -g_z)) of the normalised gaze vector: our
  ``vector_to_pitchyaw``. ``face_head_pose`` = (asin(z_y), atan2(z_x, z_z)) of the z column of
  the normalised head rotation ``R @ hR``: what geometry.py states. The normalisation builds its
  x axis from the head's x axis, so the normalised head rotation has no roll and equals our
  ``head_pose_to_rotation(face_head_pose)``; hence ``gaze_head = gaze_camera_to_head(face_gaze,
  R_head)`` is exactly the gaze in ETH-XGaze's face-model frame (x right, y down, z into the
  head: OpenCV-aligned, our head frame). Tested against a re-derivation of that pipeline.
* GazeNeRF's ``pitchyaw_head``: v = hR^T (target - face_centre) in the same face-model frame,
  then pitch = asin(+v_y), yaw = atan2(-v_x, -v_z): the **pitch sign is flipped** relative to
  ETH-XGaze and to us, the yaw is the same. So ours = (-pitch, yaw) (``GAZENERF_PITCH_SIGN``).
  Caveat: GazeNeRF computes that face centre from rows 0-5 of the full 50-point face model
  instead of the six landmarks the normalisation uses, an origin ~41 mm away (towards the
  subject's right brow): its head-frame gaze differs from the one behind ``face_gaze`` by a few
  degrees (~2-5 at 0.5-1 m target distance). This cannot be corrected from the file (no raw
  head translation); the camera gaze we derive inherits it.
* GazeNeRF's normalisation is focal 1600 at 512 px with **680 mm** (data_process.py), not the
  950 mm of LiveGaze's store; both give the same 25-number camera (focal / size), only the mm
  scale differs: PUBLISHED_NORMALISATIONS["gazenerf512"].
* ``cam_index``: every public producer writes the 0-based camera of ``camXX.JPG`` (0..17), and
  GazeNeRF's loaders treat 0 as camera 0. But third-party readers of the released official
  files subtract 1 (e.g. xucong-zhang/ETH-XGaze issue #17), so the released files may be
  1-based. Not established: for ETH-XGaze files the base is inferred per file (a 0 means
  0-based, an 18 means 1-based), or passed explicitly; with neither value present 0 is
  assumed and a warning logged. GazeNeRF files are 0-based; stores carry ``cam_index_base``.
* GazeNeRF stores ``frame_index`` as uint8 in ascending frame order, so it wraps at 256: the
  reader unwraps it (+256 at each decrease).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import h5py
import numpy as np

from gazegen import geometry
from gazegen.config import PUBLISHED_NORMALISATIONS, NormalisationConfig
from gazegen.data.h5_layout import GAZENERF, MASKS, REQUIRED, STORE, XGAZE, label_problems, layout_problems
from gazegen.data.sample import Sample
from gazegen.errors import GazegenError

log = logging.getLogger(__name__)

GAZENERF_PITCH_SIGN = -1.0  # GazeNeRF pitch = asin(+v_y); ours (ETH-XGaze) = asin(-v_y)
XGAZE_CAMERAS = 18
GAZENERF_EXTRAS = ("latent_codes", "w2c_Rmat", "w2c_Tvec", "c2w_Rmat", "c2w_Tvec", "inmat", "inv_inmat")


class DataError(GazegenError, ValueError):
    """A data file is unreadable or wrong; the message names the file, the key and the problem."""


class GazeWithheldError(DataError):
    """An ETH-XGaze file with every published key but its gaze labels (the benchmark's test split)."""


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None


def _format_of(f: h5py.File, path: Path) -> str:
    if f.attrs.get("format") == STORE:
        return STORE
    if "face_gaze" in f:
        return XGAZE
    if "pitchyaw_head" in f:
        return GAZENERF
    if all(k in f for k in REQUIRED[XGAZE] if k != "face_gaze"):
        raise GazeWithheldError(f"{path}: an ETH-XGaze file without gaze labels (no key 'face_gaze'), as the benchmark's test "
                        "split is: nothing to train or evaluate on; its release root converts the train split and skips these")
    raise DataError(f"{path}: unknown layout: no `format` attribute and neither key 'face_gaze' (ETH-XGaze) nor "
                    f"'pitchyaw_head' (GazeNeRF); keys present: {sorted(f.keys())}")


def detect_format(path: str | Path) -> str:
    """``"eth-xgaze"``, ``"gazenerf"`` or ``"gazegen-store"``; DataError for anything else."""
    path = Path(path)
    with _open(path) as f:
        return _format_of(f, path)


def gaze_withheld(path: str | Path) -> bool:
    """An ETH-XGaze file with every published key but the gaze: the benchmark's test split, whose
    labels are withheld (scored on its leaderboard)."""
    path = Path(path)
    try:
        detect_format(path)
    except GazeWithheldError:
        return True
    return False


def file_component(name: str, limit: int = 120) -> str:
    """A name read from data (an h5 ``subject`` attribute) as one safe file-name component: characters
    other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, as do leading dots (no ``..``,
    no hidden files); at most ``limit`` characters; ``_`` for an empty name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name))[:limit]
    return re.sub(r"^\.", "_", safe) or "_"


def subject_name(path: Path) -> str:
    """``xgaze_subject0003.h5`` (GazeNeRF) and ``subject0003.h5`` both name ``subject0003``."""
    return path.stem.removeprefix("xgaze_")


def _cam_index_base(path: Path, cams: np.ndarray) -> int:
    """ETH-XGaze files: 0-based if a 0 appears, 1-based if an 18 does (see the module docstring)."""
    if len(cams) and (cams.min() < 0 or cams.max() > XGAZE_CAMERAS):
        raise DataError(f"{path}: key 'cam_index' holds {cams.min()}..{cams.max()}, outside 0..{XGAZE_CAMERAS}")
    has0, has18 = bool((cams == 0).any()), bool((cams == XGAZE_CAMERAS).any())
    if has0 and has18:
        raise DataError(f"{path}: key 'cam_index' holds both 0 and {XGAZE_CAMERAS}: more than {XGAZE_CAMERAS} cameras")
    if not (has0 or has18):
        _warn_unknown_base(path)
    return 1 if has18 else 0


@functools.cache
def _warn_unknown_base(path: Path) -> None:
    """Once per file and process (``prepare`` opens every file twice: to plan, then to convert)."""
    log.warning("%s: cam_index base cannot be told (neither 0 nor %d occurs); assuming 0-based", path, XGAZE_CAMERAS)


def _unwrap_uint8(index: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """GazeNeRF's uint8 frame_index wraps at 256; rows are in ascending frame order."""
    if dtype != np.uint8 or len(index) < 2:
        return index
    return index + 256 * np.concatenate([[0], np.cumsum(np.diff(index) < 0)])


@dataclass(frozen=True)
class Labels:
    """All labels of one subject file (small: read eagerly). Radians, camera frame unless said."""

    gaze: np.ndarray  # (N, 2) float32
    head_pose: np.ndarray  # (N, 2) float32
    gaze_head: np.ndarray  # (N, 2) float32, head frame
    camera: np.ndarray  # (N, 25) float32 EG3D camera
    frame_index: np.ndarray  # (N,) int64
    cam_index: np.ndarray  # (N,) int64, 0-based


class SubjectReader:
    """Lazy random access to one subject file: labels at open, images and masks row by row.

    ``reader[i]`` and ``reader.read(start, stop)`` give Samples; iterating reads ``chunk`` rows at
    a time, so a 448 px subject is never in memory at once. ``strict=False`` keeps files with
    NaN or degree-valued labels open (their problems are in ``.problems``); layout problems
    always raise. Use as a context manager, or call ``close``.
    """

    format: ClassVar[str] = ""
    masks: ClassVar[tuple[str, ...]] = ()
    extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path, normalisation: NormalisationConfig | None = None, *,
                 cam_index_base: int | None = None, strict: bool = True, chunk: int = 32):
        self.path = Path(path)
        self.chunk = chunk
        self._file = _open(self.path)
        try:
            problems = layout_problems(self._file, self.path, self.format)
            if problems:
                raise DataError("\n".join(problems))
            self.resolution = int(self._file["face_patch"].shape[1])
            self.normalisation = self._normalisation(normalisation)
            if self.normalisation.resolution != self.resolution:
                raise DataError(f"{self.path}: key 'face_patch' has {self.resolution} px images but the normalisation "
                                f"is for {self.normalisation.resolution} px")
            self.problems: list[str] = []
            self.labels = self._labels(cam_index_base)
            if strict and self.problems:
                raise DataError("\n".join(self.problems))
        except BaseException:
            self._file.close()
            raise

    # -- hooks -------------------------------------------------------------------------------

    def _normalisation(self, given: NormalisationConfig | None) -> NormalisationConfig:
        raise NotImplementedError

    def _labels(self, cam_index_base: int | None) -> Labels:
        raise NotImplementedError

    # -- helpers for the hooks ---------------------------------------------------------------

    def _angles(self, key: str) -> np.ndarray:
        values = np.asarray(self._file[key][...], dtype=np.float64)
        self.problems += label_problems(self.path, key, values)
        return values

    def _indices(self, key: str) -> tuple[np.ndarray, np.dtype]:
        ds = self._file[key]
        return np.asarray(ds[...]).reshape(len(ds)).astype(np.int64), ds.dtype

    def _from_head_pose(self, gaze: np.ndarray | None, gaze_head: np.ndarray | None, head_pose: np.ndarray,
                        frames: np.ndarray, cams: np.ndarray) -> Labels:
        rot = geometry.head_pose_to_rotation(head_pose)
        if gaze is None:
            gaze = geometry.gaze_head_to_camera(gaze_head, rot)
        else:
            gaze_head = geometry.gaze_camera_to_head(gaze, rot)
        camera = geometry.head_pose_to_camera(head_pose, self.normalisation)
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        return Labels(f32(gaze), f32(head_pose), f32(gaze_head), f32(camera), frames, cams)

    # -- reading ------------------------------------------------------------------------------

    @property
    def subject(self) -> str:
        return subject_name(self.path)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._file.keys())

    def dataset(self, key: str) -> h5py.Dataset:
        """The raw h5 dataset ``key`` (for checks that scan it in chunks)."""
        return self._file[key]

    def __len__(self) -> int:
        return len(self.labels.gaze)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.path}: row {index} out of range for {n} images")
        index %= n
        return self.read(index, index + 1)[0]

    def read(self, start: int, stop: int) -> list[Sample]:
        """Samples of rows [start, stop), read from the file in one slice per key."""
        start = max(0, start)
        f, lab, rows = self._file, self.labels, slice(start, max(start, min(stop, len(self))))
        try:  # a damaged chunk fails here, in h5py's filters: name the file and the rows
            images = np.ascontiguousarray(f["face_patch"][rows][..., ::-1])  # BGR -> RGB
            masks = {MASKS[k]: (f[k][rows] > 127).astype(np.uint8) for k in self.masks if k in f}
            landmarks = np.asarray(f["facial_landmarks"][rows], dtype=np.float32) if "facial_landmarks" in f else None
            mats = np.asarray(f["face_mat_norm"][rows], dtype=np.float32) if "face_mat_norm" in f else None
            depth = np.asarray(f["depth"][rows], dtype=np.float32) if self.format == STORE and "depth" in f else None
            extras = {k: f[k][rows] for k in self.extras if k in f}
        except OSError as e:
            raise DataError(f"{self.path}: rows {rows.start}-{rows.stop - 1} cannot be read ({e}): the file is damaged") from None
        out = []
        for j, i in enumerate(range(rows.start, rows.stop)):
            out.append(Sample(
                image=images[j], gaze=lab.gaze[i].copy(), head_pose=lab.head_pose[i].copy(),
                gaze_head=lab.gaze_head[i].copy(), camera=lab.camera[i].copy(), normalisation=self.normalisation,
                subject=self.subject, frame_index=int(lab.frame_index[i]), cam_index=int(lab.cam_index[i]),
                **{name: m[j] for name, m in masks.items()},
                depth=None if depth is None else depth[j],
                landmarks=None if landmarks is None else landmarks[j],
                face_mat_norm=None if mats is None else mats[j],
                extras={k: np.array(v[j]) for k, v in extras.items()},
            ))
        return out

    def batches(self, size: int | None = None) -> Iterator[list[Sample]]:
        size = size or self.chunk
        for start in range(0, len(self), size):
            yield self.read(start, start + size)

    def __iter__(self) -> Iterator[Sample]:
        for batch in self.batches():
            yield from batch

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SubjectReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class XGazeReader(SubjectReader):
    """Official ETH-XGaze patches; ``gaze_head`` from face_gaze and the roll-free head rotation."""

    format = XGAZE

    def _normalisation(self, given: NormalisationConfig | None) -> NormalisationConfig:
        name = f"xgaze{self.resolution}"
        if given is None and name not in PUBLISHED_NORMALISATIONS:
            raise DataError(f"{self.path}: key 'face_patch' has {self.resolution} px images; the published ETH-XGaze "
                            "patches are 224 or 448 px: pass the normalisation explicitly")
        return given or PUBLISHED_NORMALISATIONS[name]

    def _labels(self, cam_index_base: int | None) -> Labels:
        gaze, head_pose = self._angles("face_gaze"), self._angles("face_head_pose")
        frames, _ = self._indices("frame_index")
        cams, _ = self._indices("cam_index")
        base = _cam_index_base(self.path, cams) if cam_index_base is None else cam_index_base
        return self._from_head_pose(gaze, None, head_pose, frames, cams - base)


class GazeNeRFReader(SubjectReader):
    """GazeNeRF's 512 px files; the camera-frame gaze from pitchyaw_head (pitch sign flipped)."""

    format = GAZENERF
    masks = tuple(MASKS)
    extras = GAZENERF_EXTRAS

    def _normalisation(self, given: NormalisationConfig | None) -> NormalisationConfig:
        if given is not None:
            return given
        if self.resolution != 512:
            raise DataError(f"{self.path}: key 'face_patch' has {self.resolution} px images; GazeNeRF's files are "
                            "512 px: pass the normalisation explicitly")
        return PUBLISHED_NORMALISATIONS["gazenerf512"]

    def _labels(self, cam_index_base: int | None) -> Labels:
        gaze_head = self._angles("pitchyaw_head") * np.array([GAZENERF_PITCH_SIGN, 1.0])
        head_pose = self._angles("face_head_pose")
        frames, frame_dtype = self._indices("frame_index")
        cams, _ = self._indices("cam_index")
        base = 0 if cam_index_base is None else cam_index_base
        return self._from_head_pose(None, gaze_head, head_pose, _unwrap_uint8(frames, frame_dtype), cams - base)


class StoreReader(SubjectReader):
    """Our training store: reads back exactly what SubjectWriter wrote."""

    format = STORE
    masks = tuple(MASKS)

    def _normalisation(self, given: NormalisationConfig | None) -> NormalisationConfig:
        attrs = self._file.attrs
        missing = [k for k in ("focal", "distance_mm", "resolution", "radius") if k not in attrs]
        if missing:
            raise DataError(f"{self.path}: store attributes {missing} are missing")
        framing = {"eye_above_centre_mm": float(attrs["eye_above_centre_mm"])} if "eye_above_centre_mm" in attrs else {}
        norm = NormalisationConfig(focal=float(attrs["focal"]), distance_mm=float(attrs["distance_mm"]),
                                   resolution=int(attrs["resolution"]), radius=float(attrs["radius"]), **framing)
        if given is not None and given != norm:
            raise DataError(f"{self.path}: the file's normalisation {norm} differs from the one given, {given}")
        return norm

    def _labels(self, cam_index_base: int | None) -> Labels:
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        gaze, head_pose, gaze_head = (f32(self._angles(k)) for k in ("face_gaze", "face_head_pose", "pitchyaw_head"))
        camera = np.asarray(self._file["camera"][...], dtype=np.float32)
        self.problems += label_problems(self.path, "camera", camera)
        frames, _ = self._indices("frame_index")
        cams, _ = self._indices("cam_index")
        base = int(self._file.attrs.get("cam_index_base", 0)) if cam_index_base is None else cam_index_base
        return Labels(gaze, head_pose, gaze_head, camera, frames, cams - base)

    @property
    def subject(self) -> str:
        return str(self._file.attrs.get("subject", subject_name(self.path)))


READERS: dict[str, type[SubjectReader]] = {XGAZE: XGazeReader, GAZENERF: GazeNeRFReader, STORE: StoreReader}


def open_subject(path: str | Path, normalisation: NormalisationConfig | None = None, **kwargs) -> SubjectReader:
    """The reader for ``path``'s layout (see ``SubjectReader`` for the keyword arguments)."""
    return READERS[detect_format(path)](path, normalisation, **kwargs)


def iter_samples(path: str | Path, normalisation: NormalisationConfig | None = None, **kwargs) -> Iterator[Sample]:
    """Every Sample of one subject file, read lazily."""
    with open_subject(path, normalisation, **kwargs) as reader:
        yield from reader
