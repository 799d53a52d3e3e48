"""The one declaration of a synthesized row: columns, label widths, PNG encodings, row ids, tables.

Written by pipelines/ (the render actor, the shard writer, the manifest and the dataset card) and
read by gazegen/data/parquet.py and gazegen/data/export.py; it lives in the library because
``gazegen/`` never imports ``pipelines/``.

Row layout (one row per rendered image)
---------------------------------------
``image``, ``depth``, ``alpha``  ``struct<bytes: binary, path: string>`` PNGs (the Hugging Face
    ``datasets`` Image layout). ``image`` is 8-bit RGB. ``depth`` is a 16-bit grayscale PNG:
    ``value = round(depth_mm * DEPTH_SCALE)``, z-depth along the camera axis in millimetres of
    the normalised camera, 0 = no surface, 65535 = at or beyond ``DEPTH_MAX_MM``. ``alpha`` is
    an 8-bit grayscale PNG, ``value = round(alpha * 255)``.
``gaze``, ``head_pose``  (pitch, yaw) radians in the rendered (normalised) camera frame.
``gaze_head``  (pitch, yaw) radians of the gaze in the head frame (the model's condition).
``view_offset``  (pitch, yaw) radians by which the camera was turned from the source's camera.
    Angles follow gazegen/geometry.py: vector = (-cos p sin y, -sin p, -cos p cos y).
``camera``  EG3D's 25 numbers (cam2world 4x4 row-major, then intrinsics / image size).
``source_head_pose``  (pitch, yaw) radians: the source's head pose in its own normalised camera
    (the camera the source was cropped to, before any view turn). ``head_pose`` is the rendered
    image's, ``source_head_pose + view_offset`` with the yaw wrapped into [-pi, pi), so the two
    are equal only for ``view_offset`` (0, 0); the same for every row of a source.
``face_mat_norm``  9 numbers, a 3x3 rotation row-major (ETH-XGaze's name): the source photo's
    camera -> the source's normalised camera, ``vector_norm = face_mat_norm @ vector_photo``.
    The identity for sources that were already normalised (plain or passed-through crops,
    Parquet crops, h5 stores that carry none). gazegen/data/parquet.py ``gaze_in_photo`` maps a
    row's gaze back into the photo's camera with it.
All labels are float32 fixed-size lists. Provenance: ``source_id``, ``source_path``,
``gaze_index``, ``view_index``, ``checkpoint_hash``, ``seed``, ``row_id``. ``checkpoint_hash`` is
gazegen/checkpoint.py ``checkpoint_hash``: one sha256 over the checkpoint's config.json and
model.safetensors together, the checkpoint's identity (config and weights), not the sha256 of
model.safetensors that a model card gives.

Hugging Face compatibility: ``image``, ``depth`` and ``alpha`` are ``struct<bytes: binary,
path: string>`` in that field order (``datasets.Image``'s storage type; ``large_binary`` or
another order would load as plain dicts). The schema metadata key ``huggingface`` holds
``{"info": {"features": ...}}``, the JSON ``datasets.Features.to_dict()`` writes; labels are
declared as ``Sequence(Value("float32"), length=n)``, which datasets 2.x to 5.x all read (5.x
turns it into ``List``). ``datasets`` is not needed to write; the tests check that it decodes.
``path`` is left null: the bytes travel with the file. The depth scale and the format version
are also in the schema metadata key ``gazegen`` (``depth_scale_of`` reads it back).

Row id: ``f"{source_id}-{gaze_index:04d}-{view_index:04d}"``, unique and stable because the
source ids are unique and the grid is fixed by the run's settings (the manifest checks both).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

DEPTH_SCALE = 10.0  # 16-bit depth PNG units per millimetre: 0.1 mm steps
DEPTH_MAX_VALUE = 65535  # the largest 16-bit value; also "at or beyond DEPTH_MAX_MM"
DEPTH_MAX_MM = DEPTH_MAX_VALUE / DEPTH_SCALE  # 6553.5 mm
ALPHA_SCALE = 255.0  # 8-bit alpha PNG units per unit of coverage
IMAGE_COLUMNS = ("image", "depth", "alpha")  # PNG structs, Hugging Face Image layout
LABEL_WIDTHS = {"gaze": 2, "head_pose": 2, "gaze_head": 2, "view_offset": 2, "camera": 25,
                "source_head_pose": 2, "face_mat_norm": 9}  # float32 per row
METADATA_KEY = b"gazegen"  # schema metadata: JSON with the depth scale and format version
FORMAT_NAME = "gazegen-synthesis"
FORMAT_VERSION = 2  # 2: source_head_pose and face_mat_norm columns

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image storage
ROW_ID_FORMAT = "{source_id}-{gaze_index:04d}-{view_index:04d}"

_FIELDS: list[pa.Field] = (
    [pa.field(name, IMAGE_TYPE) for name in IMAGE_COLUMNS]
    + [pa.field(name, pa.list_(pa.float32(), width)) for name, width in LABEL_WIDTHS.items()]
    + [pa.field(name, pa.string()) for name in ("row_id", "source_id", "source_path")]
    + [pa.field("gaze_index", pa.int32()), pa.field("view_index", pa.int32())]
    + [pa.field("checkpoint_hash", pa.string()), pa.field("seed", pa.int64())]
)
ROW_COLUMNS: tuple[str, ...] = tuple(f.name for f in _FIELDS)


def _feature(field: pa.Field) -> dict[str, Any]:
    """The ``datasets.Features.to_dict()`` entry of one field, written by hand."""
    names = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32"}
    if field.type == IMAGE_TYPE:
        return {"_type": "Image"}
    if pa.types.is_fixed_size_list(field.type):
        item = {"dtype": names[field.type.value_type], "_type": "Value"}
        return {"feature": item, "length": field.type.list_size, "_type": "Sequence"}
    return {"dtype": names[field.type], "_type": "Value"}


FEATURES: dict[str, Any] = {f.name: _feature(f) for f in _FIELDS}
GAZEGEN_METADATA: dict[str, Any] = {
    "format": FORMAT_NAME,
    "version": FORMAT_VERSION,
    "depth_scale": DEPTH_SCALE,
    "depth_unit": "mm",
    "depth_encoding": "uint16 PNG, value = round(depth_mm * depth_scale), 0 = no surface",
    "alpha_scale": ALPHA_SCALE,
    "angles": "radians, (pitch, yaw); vector = (-cos p sin y, -sin p, -cos p cos y)",
    "row_id": ROW_ID_FORMAT,
}
ROW_SCHEMA = pa.schema(
    _FIELDS,
    metadata={
        b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode(),
        METADATA_KEY: json.dumps(GAZEGEN_METADATA).encode(),
    },
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.int32()),
        pa.field("source_path", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("stage", pa.string()),  # decode, crop, render, encode, ...
        pa.field("reason", pa.string()),  # the exception type and message
    ]
)


def row_id(source_id: str, gaze_index: int, view_index: int) -> str:
    """The stable id of one rendered image (see the module docstring)."""
    return ROW_ID_FORMAT.format(source_id=source_id, gaze_index=gaze_index, view_index=view_index)


# --------------------------------------------------------------------------- PNG encoding and decoding


def _imencode(array: np.ndarray, compression: int) -> bytes:
    ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of {array.dtype} {array.shape}")
    return buffer.tobytes()


def encode_png(rgb: np.ndarray, compression: int = 1) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (converted to BGR for OpenCV here, nowhere else)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_png expects (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    return _imencode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), compression)


def depth_to_uint16(depth_mm: np.ndarray, scale: float = DEPTH_SCALE) -> np.ndarray:
    """(H, W) millimetres -> uint16 PNG values: 0 = no surface, saturating at 65535."""
    depth = np.asarray(depth_mm, dtype=np.float64)
    surface = np.isfinite(depth) & (depth > 0)
    values = np.clip(np.rint(np.where(surface, depth, 0.0) * scale), 1, DEPTH_MAX_VALUE)
    return np.where(surface, values, 0).astype(np.uint16)


def encode_depth_png(depth_mm: np.ndarray, compression: int = 1) -> bytes:
    """(H, W) float depth in millimetres -> 16-bit grayscale PNG (see ``depth_to_uint16``)."""
    if np.ndim(depth_mm) != 2:
        raise ValueError(f"encode_depth_png expects (H, W), got {np.shape(depth_mm)}")
    return _imencode(depth_to_uint16(depth_mm), compression)


def encode_alpha_png(alpha: np.ndarray, compression: int = 1) -> bytes:
    """(H, W) alpha -> 8-bit grayscale PNG. bool -> 0/255, uint8 as is, float in [0, 1] scaled."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2:
        raise ValueError(f"encode_alpha_png expects (H, W), got {alpha.shape}")
    if alpha.dtype == np.bool_:
        values = alpha.astype(np.uint8) * 255
    elif alpha.dtype == np.uint8:
        values = alpha
    else:
        values = np.rint(np.clip(np.nan_to_num(alpha.astype(np.float64)), 0.0, 1.0) * ALPHA_SCALE).astype(np.uint8)
    return _imencode(np.ascontiguousarray(values), compression)


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise ValueError("not a decodable PNG")
    return array


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB (OpenCV decodes BGR; converted here)."""
    array = _imdecode(data, cv2.IMREAD_COLOR)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def decode_depth_png(data: bytes, scale: float = DEPTH_SCALE) -> np.ndarray:
    """16-bit depth PNG -> (H, W) float32 millimetres; 0 where there is no surface."""
    array = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if array.dtype != np.uint16 or array.ndim != 2:
        raise ValueError(f"depth PNG must be 16-bit single-channel, got {array.dtype} {array.shape}")
    return array.astype(np.float32) / np.float32(scale)


def decode_alpha_png(data: bytes) -> np.ndarray:
    """8-bit alpha PNG -> (H, W) float32 coverage in [0, 1]."""
    array = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"alpha PNG must be 8-bit single-channel, got {array.dtype} {array.shape}")
    return array.astype(np.float32) / np.float32(ALPHA_SCALE)


def depth_scale_of(schema: pa.Schema) -> float:
    """The depth scale recorded in a shard's schema metadata (``DEPTH_SCALE`` if absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return float(json.loads(raw).get("depth_scale", DEPTH_SCALE)) if raw else DEPTH_SCALE


# --------------------------------------------------------------------------- tables


def _png_column(values: Sequence[Any], name: str) -> pa.Array:
    structs = []
    for value in values:
        if isinstance(value, Mapping):
            value = value.get("bytes")
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
            raise ValueError(f"column {name!r}: every value must be non-empty PNG bytes")
        structs.append({"bytes": bytes(value), "path": None})
    return pa.array(structs, type=IMAGE_TYPE)


def _label_column(values: Any, name: str, width: int) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = list(values)  # an object array of (width,) arrays
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.size == 0:
        matrix = matrix.reshape(0, width)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise ValueError(f"column {name!r}: expected (N, {width}) values, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"column {name!r}: non-finite label values")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), width)


def rows_table(columns: Mapping[str, Any]) -> pa.Table:
    """Columns of a batch of rendered images -> a table with exactly ``ROW_SCHEMA``.

    ``image``/``depth``/``alpha``: PNG bytes (or ``{bytes, path}`` dicts) per row; labels:
    (N, width) array-likes (or an object array of (width,) arrays), cast to float32 and checked
    finite; ``row_id`` may be omitted and is then made by ``row_id``. Raises ``ValueError``
    naming the column on a missing column, a wrong shape, a length mismatch or a NaN label.
    """
    data = dict(columns)
    if "row_id" not in data and {"source_id", "gaze_index", "view_index"} <= data.keys():
        data["row_id"] = [row_id(s, int(g), int(v)) for s, g, v in zip(data["source_id"], data["gaze_index"], data["view_index"])]
    missing = [name for name in ROW_COLUMNS if name not in data]
    if missing:
        raise ValueError(f"missing columns: {', '.join(missing)}")
    arrays: list[pa.Array] = []
    for field in ROW_SCHEMA:
        values, name = data[field.name], field.name
        if field.type == IMAGE_TYPE:
            array = _png_column(list(values), name)
        elif name in LABEL_WIDTHS:
            array = _label_column(values, name, LABEL_WIDTHS[name])
        else:
            array = pa.array([v.item() if isinstance(v, np.generic) else v for v in values], type=field.type)
            if array.null_count:
                raise ValueError(f"column {name!r}: null values")
        arrays.append(array)
    lengths = {f.name: len(a) for f, a in zip(ROW_SCHEMA, arrays)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns differ in length: {lengths}")
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """A table with the row columns (any order, castable types) -> exactly ``ROW_SCHEMA``."""
    missing = [name for name in ROW_COLUMNS if name not in table.column_names]
    extra = [name for name in table.column_names if name not in ROW_COLUMNS]
    if missing or extra:
        raise ValueError(f"row table mismatch: missing {missing}, unexpected {extra}")
    table = table.select(list(ROW_COLUMNS))
    if not table.schema.equals(ROW_SCHEMA, check_metadata=False):
        try:
            table = table.cast(ROW_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ValueError(f"row table does not cast to ROW_SCHEMA: {error}") from error
    return table.replace_schema_metadata(ROW_SCHEMA.metadata)


def errors_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Error records (dicts with ``ERRORS_SCHEMA`` keys; missing strings become "") -> a table."""
    columns = {f.name: [r.get(f.name, 0 if f.name == "shard_id" else "") for r in records] for f in ERRORS_SCHEMA}
    return pa.Table.from_pydict(columns, schema=ERRORS_SCHEMA)


__all__ = [
    "ALPHA_SCALE",
    "DEPTH_MAX_MM",
    "DEPTH_MAX_VALUE",
    "DEPTH_SCALE",
    "ERRORS_SCHEMA",
    "FEATURES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GAZEGEN_METADATA",
    "IMAGE_COLUMNS",
    "IMAGE_TYPE",
    "LABEL_WIDTHS",
    "METADATA_KEY",
    "ROW_COLUMNS",
    "ROW_ID_FORMAT",
    "ROW_SCHEMA",
    "conform",
    "decode_alpha_png",
    "decode_depth_png",
    "decode_png",
    "depth_scale_of",
    "depth_to_uint16",
    "encode_alpha_png",
    "encode_depth_png",
    "encode_png",
    "errors_table",
    "row_id",
    "rows_table",
]
