"""Synthesis inputs, read: each source pipelines/sources.py listed becomes a model-ready face, or an error row.

By kind (pipelines/sources.py lists them):

images   Photos are detected, aligned and cropped like the training data (``--crop
         auto|always|never``, gazegen/data/faces.py): normalised from their landmarks, with the
         head pose solvePnP gives and the normalising rotation (passed-through crops: frontal,
         (0, 0), the identity); the gaze is unknown. A source without a face number takes the
         largest face; with one (faces = "all") the image's faces are detected once and cropped
         largest first, as when listed.
h5       A row with its head pose and head-frame gaze. A patch taken with another normalised
         camera than the model's is re-zoomed to the model's framing (``renormalise``); its labels
         do not change. One whose camera looks at another face centre (``eye_above_centre_mm``:
         an ETH-XGaze store given to a model of procedural heads, or the reverse) is normalised
         again, looking at the model's (``reframe``): the face moves 10 px in the demo's 128 px crop, the
         head pose turns by ~1.4 degrees, and ``face_mat_norm`` records the turn.
parquet  Rows with ``head_pose`` (and optionally ``gaze_head``) are normalised crops in the
         model's framing (e.g. gazegen's own output); rows without are read as photos.

Reading a source never raises: failures come back as ``DecodedSource`` with ``stage`` and
``reason`` set (the errors table). What a source must pass to be read (regular files, the pixel cap
checked from the header, path cells inside the input root, labels that are finite (pitch, yaw)
radians, a time limit) is pipelines/guards.py; a source with a head pitch the grid's view pitch
offsets would carry past 90 degrees fails here too (gazegen/config/grid.py, pipelines/grid.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from gazegen import geometry
from gazegen.config import CropConfig, NormalisationConfig, PhotoCameraConfig
from gazegen.data.faces import CropResult, crop_each_face, crop_faces
from gazegen.data.images import resize_image
from gazegen.data.normalise import HeadPose, NormalisedFace, normalise_with_pose, normalised_camera_matrix
from gazegen.data.parquet import read_rows
from gazegen.data.xgaze import open_subject
from gazegen.pipelines.grid import pose_problem
from gazegen.pipelines.guards import InputError, call_with_timeout, check_labels, check_rotation, decode_image, max_file_bytes, read_regular_file
from gazegen.pipelines.sources import SourceRecord, detector, image_bytes

IDENTITY = np.eye(3)
IDENTITY.flags.writeable = False


@dataclass(frozen=True)
class DecodedSource:
    """A source ready for the model, or the reason it is not."""

    image: np.ndarray | None  # (S, S, 3) uint8 RGB at the model's input size; None on failure
    head_pose: np.ndarray  # (2,) pitch/yaw radians, normalised camera frame ((0, 0) for photos)
    gaze_head: np.ndarray | None  # (2,) pitch/yaw radians, head frame; None: unknown
    face_mat_norm: np.ndarray  # (3, 3) the photo's camera -> the normalised camera (identity: already normalised)
    stage: str = ""  # "list", "decode" or "crop" on failure
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.image is not None


Reader = Callable[[Sequence[SourceRecord], "DecodeSettings"], list["DecodedSource"]]  # one file's records, read together


@dataclass(frozen=True)
class DecodeSettings:
    resolution: int  # the model's input side (ModelConfig.image_resolution)
    normalisation: NormalisationConfig  # the model's normalised camera (framing)
    crop: str = "auto"  # auto | always | never
    image_column: str = "image"
    max_pixels: int = 36_000_000  # images declaring more pixels are refused from their header
    timeout_s: float = 60.0  # a source (or a file's group of sources) still reading after this is an error
    root: str = ""  # Parquet path cells must lie inside it ("": the Parquet file's folder)
    view_pitch: tuple[float, float] = (0.0, 0.0)  # the grid's view pitch offsets, radians (GridSpec.view_pitch_bounds)
    min_face_px: int = 40  # photos: narrower faces are error rows (SynthConfig.min_face_px)
    photo_focal_fraction: float = 1.0  # photos: the focal length assumed, times the longer side (SynthConfig)


def renormalise(image: np.ndarray, source: NormalisationConfig, target: NormalisationConfig) -> np.ndarray:
    """A normalised image as another normalised camera (same rotation) takes it, at ``target.resolution``.

    Normalisation warps images (ETH-XGaze scales, it does not move the camera), so changing focal
    or distance is a zoom about the principal point by (f_t / S_t / d_t) / (f_s / S_s / d_s) in
    image fractions; what the zoom brings in from outside the patch is black.
    """
    side, width = target.resolution, image.shape[1]
    zoom = (target.focal / target.resolution / target.distance_mm) / (source.focal / source.resolution / source.distance_mm)
    scale = zoom * side / width  # output pixels per input pixel
    if abs(zoom - 1.0) < 1e-6:
        return resize_image(image, side)
    if scale < 0.5:  # shrink with area averaging first, then warp with a scale near 1
        small = max(1, round(width * scale * 2))
        image, scale = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), 0.5
        width = small
    shift = side / 2 - scale * width / 2  # keeps the principal point (W / 2) at the centre
    matrix = np.array([[scale, 0.0, shift], [0.0, scale, shift]])
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)




def reframe(image: np.ndarray, head_pose: np.ndarray, source: NormalisationConfig, target: NormalisationConfig) -> NormalisedFace:
    """A normalised crop (its side any) and its head pose as ``target``'s camera takes them when it looks at another face
    centre: ``target.eye_above_centre_mm`` below the eyes instead of ``source``'s. The crop is read as a photo from its
    own normalised camera, the face's new centre placed by the head's rotation, and normalised again (ETH-XGaze's R, S
    and K, gazegen/data/normalise.py): returns the crop at ``target.resolution``, the head pose in the new camera and
    ``face_mat_norm``, the source camera -> the target's."""
    camera = source.at_resolution(image.shape[1])
    head = geometry.head_pose_to_rotation(np.asarray(head_pose, np.float64))
    below = target.eye_above_centre_mm - source.eye_above_centre_mm  # mm down the face (the head's +y) to the new centre
    centre = np.array([0.0, 0.0, camera.distance_mm]) + head @ np.array([0.0, below, 0.0])
    return normalise_with_pose(image, HeadPose(head, centre, 0.0), normalised_camera_matrix(camera), target, np.zeros((1, 2)))


def _failed(stage: str, reason: str) -> DecodedSource:
    return DecodedSource(None, np.zeros(2), None, IDENTITY, stage, reason)


def _crop_config(settings: DecodeSettings) -> CropConfig:
    return CropConfig(resolution=settings.resolution, normalisation=settings.normalisation, min_face_px=settings.min_face_px,
                      camera=PhotoCameraConfig(settings.photo_focal_fraction))


def _cropped(result: CropResult) -> DecodedSource:
    if not result.ok:
        return _failed("crop", result.reason)
    rotation = IDENTITY if result.normalised is None else result.normalised.face_mat_norm
    return DecodedSource(result.image, result.head_pose, None, rotation)


def _photo(image: np.ndarray, settings: DecodeSettings) -> DecodedSource:
    return _cropped(crop_faces(image, detector(), _crop_config(settings), settings.crop))  # type: ignore[arg-type]


def _labelled(image: np.ndarray, head_pose: object, gaze_head: object | None) -> DecodedSource:
    pose, gaze = check_labels(head_pose, gaze_head)
    return DecodedSource(image, pose, gaze, IDENTITY)  # a labelled crop is already normalised


def _each(records: Sequence[SourceRecord], read: Callable[[SourceRecord], DecodedSource]) -> list[DecodedSource]:
    """``read`` on every record; an InputError (pipelines/guards.py) fails only its own record."""
    out = []
    for record in records:
        try:
            out.append(read(record))
        except InputError as error:
            out.append(_failed("decode", str(error)))
    return out


def _faces(image: np.ndarray, settings: DecodeSettings) -> list[CropResult]:
    """Every face of a photo cropped, largest first, as when listed (faces = "all")."""
    return [r for _, r in crop_each_face(image, detector(), _crop_config(settings)) if r.status != "no_face"]


def _face(found: list[CropResult], face: int) -> DecodedSource:
    """Face number `face` of a photo's `_faces`, or the error row of a face the listing saw but this read does not."""
    if face >= len(found):
        return _failed("crop", f"face {face} not found: the image now shows {len(found)} faces (listing saw more)")
    return _cropped(found[face])


def _read_images(records: Sequence[SourceRecord], settings: DecodeSettings) -> list[DecodedSource]:
    """One image's records: its largest face (face -1), or its faces by number (faces = "all"),
    the image read and its faces detected once."""
    limit = max_file_bytes(settings.max_pixels)
    image = cache(lambda: decode_image(read_regular_file(records[0].path, limit), settings.max_pixels, records[0].path))
    faces = cache(lambda: _faces(image(), settings))

    def read(record: SourceRecord) -> DecodedSource:
        return _photo(image(), settings) if record.face < 0 else _face(faces(), record.face)

    return _each(records, read)


def _read_h5(records: Sequence[SourceRecord], settings: DecodeSettings) -> list[DecodedSource]:
    target = settings.normalisation.at_resolution(settings.resolution)
    with open_subject(records[0].path, strict=False) as reader:

        def read(record: SourceRecord) -> DecodedSource:
            sample = reader[record.index]
            decoded = _labelled(sample.image, sample.head_pose, sample.gaze_head)  # labels checked before the zoom
            rotation = IDENTITY if sample.face_mat_norm is None else check_rotation(sample.face_mat_norm)
            if sample.normalisation.eye_above_centre_mm != target.eye_above_centre_mm:
                face = reframe(sample.image, decoded.head_pose, sample.normalisation, target)
                return DecodedSource(face.image, face.head_pose, decoded.gaze_head, face.face_mat_norm @ rotation)
            return DecodedSource(renormalise(sample.image, sample.normalisation, target), decoded.head_pose, decoded.gaze_head, rotation)

        return _each(records, read)


def _read_parquet(records: Sequence[SourceRecord], settings: DecodeSettings) -> list[DecodedSource]:
    with pq.ParquetFile(records[0].path) as file:
        names = file.schema_arrow.names
        columns = [settings.image_column] + [c for c in ("head_pose", "gaze_head") if c in names]
        indices = sorted({r.index for r in records})
        table = read_rows(file, indices, columns, use_threads=False)
    position = {index: k for k, index in enumerate(indices)}  # a record's row in table
    target = settings.normalisation.at_resolution(settings.resolution)
    row_faces: dict[int, list[CropResult]] = {}  # a row's faces, detected once for all its records

    def read(record: SourceRecord) -> DecodedSource:
        row = {c: table.column(c)[position[record.index]].as_py() for c in columns}
        try:
            data = image_bytes(row[settings.image_column], Path(record.path).parent, settings.root, settings.max_pixels)
            image = decode_image(data, settings.max_pixels)
        except InputError as error:
            raise InputError(f"row {record.index}: {error}") from None
        if row.get("head_pose") is None:
            if record.face < 0:
                return _photo(image, settings)
            if record.index not in row_faces:
                row_faces[record.index] = _faces(image, settings)
            return _face(row_faces[record.index], record.face)
        if image.shape[0] != image.shape[1]:
            raise InputError(f"row {record.index}: a labelled crop must be square, not {image.shape[1]} x {image.shape[0]}")
        return _labelled(resize_image(image, target.resolution), row["head_pose"], row.get("gaze_head"))

    return _each(records, read)


def _unlabelled_rows(path: str) -> np.ndarray:
    """(rows,) bool: the rows of a Parquet file without a ``head_pose``, read as photos (all of them
    when it has no such column; none when it cannot be read: its sources are error rows)."""
    try:
        with pq.ParquetFile(path) as file:
            if "head_pose" not in file.schema_arrow.names:
                return np.ones(file.metadata.num_rows, bool)
            poses = file.read(columns=["head_pose"], use_threads=False).column("head_pose")
    except Exception:  # reported when the sources are read
        return np.zeros(0, bool)
    return poses.is_null().to_numpy(zero_copy_only=False)


def photo_sources(records: Sequence[SourceRecord]) -> list[SourceRecord]:
    """The records read as photos, whose head pose is estimated from the face rather than known: image
    files, and Parquet rows without a ``head_pose``; h5 rows and labelled Parquet rows carry theirs."""
    unlabelled = {path: _unlabelled_rows(path) for path in {r.path for r in records if r.kind == "parquet" and not r.error}}

    def photo(record: SourceRecord) -> bool:
        if record.error or record.kind == "h5":
            return False
        if record.kind == "image":
            return True
        rows = unlabelled[record.path]
        return record.index < len(rows) and bool(rows[record.index])

    return [r for r in records if photo(r)]


READERS: dict[str, Reader] = {"image": _read_images, "h5": _read_h5, "parquet": _read_parquet}
CARRIED = ("shard_id", "source_id", "source_path")  # columns every stage passes on


def _checked(decoded: DecodedSource, settings: DecodeSettings) -> DecodedSource:
    """The last gate before the render actor: an image of the model's size, a renderable pose."""
    if not decoded.ok:
        return decoded
    side = settings.resolution
    if decoded.image.shape != (side, side, 3) or decoded.image.dtype != np.uint8:  # type: ignore[union-attr]
        return _failed("decode", f"image {decoded.image.shape} {decoded.image.dtype}, expected ({side}, {side}, 3) uint8")  # type: ignore[union-attr]
    problem = pose_problem(decoded.head_pose, settings.view_pitch)
    return _failed("decode", problem) if problem else decoded


def decode_sources(records: Sequence[SourceRecord], settings: DecodeSettings, readers: dict[str, Reader] | None = None) -> list[DecodedSource]:
    """Reads and prepares every record, in order; never raises. Rows of one file are read
    together (the file is opened once, within ``timeout_s`` per row); a failure or timeout of the
    whole file falls back to one record at a time, so that one bad row costs only its own source.
    ``readers``: the reader of each kind (default ``READERS``; tests pass slow or failing ones)."""
    readers = readers or READERS
    out: list[DecodedSource | None] = [None] * len(records)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        if record.error:
            out[i] = _failed("list", record.error)
        else:
            groups[(record.kind, record.path)].append(i)  # an image's faces too
    for (kind, _), indices in groups.items():
        chunks = [indices] if len(indices) > 1 else []
        chunks += [[i] for i in indices]  # fallback, one at a time
        for chunk in chunks:
            if all(out[i] is not None for i in chunk):
                continue
            part = [records[i] for i in chunk]
            try:
                decoded = call_with_timeout(lambda: readers[kind](part, settings), settings.timeout_s * len(chunk))
                for i, d in zip(chunk, decoded, strict=True):
                    out[i] = _checked(d, settings)
            except Exception as error:  # reported per source; the run goes on
                if len(chunk) == 1:
                    out[chunk[0]] = _failed("decode", str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}")
    return [d if d is not None else _failed("decode", "not read") for d in out]


def decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> dict[str, np.ndarray]:
    """The decode + crop stage on a batch (on Ray, a task's one source: pipelines/dispatch.py): input
    records -> decoded sources, with the ``CARRIED`` columns kept and ``status``/``stage``/``reason``
    set (the render actor's input)."""
    n = len(batch["source_id"])
    records = [SourceRecord(str(batch["source_id"][i]), str(batch["source_path"][i]), str(batch["kind"][i]),
                            int(batch["index"][i]), int(batch["face"][i]), str(batch["error"][i])) for i in range(n)]  # fmt: skip
    decoded = decode_sources(records, settings)
    blank = np.zeros((settings.resolution, settings.resolution, 3), np.uint8)
    return {k: batch[k] for k in CARRIED} | {
        "status": np.array(["ok" if d.ok else "error" for d in decoded]),
        "stage": np.array([d.stage for d in decoded]),
        "reason": np.array([d.reason for d in decoded]),
        "image": np.stack([d.image if d.ok else blank for d in decoded]),
        "head_pose": np.stack([d.head_pose for d in decoded]).astype(np.float64),
        "gaze_head": np.stack([d.gaze_head if d.gaze_head is not None else np.zeros(2) for d in decoded]).astype(np.float64),
        "gaze_known": np.array([d.gaze_head is not None for d in decoded]),
        "face_mat_norm": np.stack([d.face_mat_norm for d in decoded]).astype(np.float64),
    }


__all__ = [
    "CARRIED",
    "DecodeSettings",
    "DecodedSource",
    "decode_batch",
    "decode_sources",
    "photo_sources",
    "renormalise",
]
