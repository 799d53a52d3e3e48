"""Read synthesized gaze data: Parquet shards streamed as a torch ``IterableDataset``, and a
row's gaze taken back into its source photo's camera (``gaze_in_photo``).

The row layout, the PNG decoders and the depth scale are gazegen/data/schema.py's (the one
declaration the writers in ``pipelines/`` use too); this module finds the shards and streams them.
The depth scale is read from each file's schema metadata (``depth_scale_of``).
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gazegen import geometry
from gazegen.data.images import to_model_range
from gazegen.data.normalise import gaze_to_photo
from gazegen.data.schema import IMAGE_COLUMNS, LABEL_WIDTHS, decode_alpha_png, decode_depth_png, decode_png, depth_scale_of
from gazegen.errors import GazegenError

T = TypeVar("T")

SHARD_GLOB = "shard-*.parquet"  # data files; nothing else in an output folder matches it


# --------------------------------------------------------------------------- shard discovery


def resolve_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """Shard files of a folder (``shard-*.parquet`` in it), a glob, a file, or a list of files.

    ``source`` may be a local path (``~`` expanded) or a pyarrow filesystem URI (``file://``, ``s3://``, ...), each item
    of a list too, all on one filesystem; with ``filesystem`` given, paths are taken within it. Returns the filesystem
    and sorted paths; FileNotFoundError naming the item when a path (or a glob's folder) does not exist, or nothing
    matches.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise ValueError("no shard paths given")
    paths: list[str] = []
    given = filesystem
    for item in map(os.fspath, items):
        fs, path = _filesystem_and_path(item, given)
        if filesystem is None:
            filesystem = fs
        elif fs.type_name != filesystem.type_name:
            raise ValueError(f"{item}: on another filesystem ({fs.type_name}) than the shards before it ({filesystem.type_name})")
        if any(ch in posixpath.basename(path) for ch in "*?["):
            parent, pattern = posixpath.split(path)
            if fs.get_file_info(parent).type != pafs.FileType.Directory:
                raise FileNotFoundError(f"{item}: no such folder {parent}")
            found = [f.path for f in fs.get_file_info(pafs.FileSelector(parent)) if f.type == pafs.FileType.File]
            paths += [p for p in found if fnmatch.fnmatch(posixpath.basename(p), pattern)]
        elif (kind := fs.get_file_info(path).type) == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path))
            paths += [f.path for f in found if fnmatch.fnmatch(f.base_name, SHARD_GLOB)]
        elif kind == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{item}: no such file or folder")
        else:
            paths.append(path)
    if not paths:
        raise FileNotFoundError(f"no shards found in {source!r} (expected {SHARD_GLOB})")
    assert filesystem is not None
    return filesystem, sorted(set(paths))


def _filesystem_and_path(item: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    """``item``'s filesystem and path: within ``filesystem`` when one is given, else from its URI, else local."""
    if filesystem is not None:
        return filesystem, item
    if "://" in item:
        return pafs.FileSystem.from_uri(item)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(item))


# --------------------------------------------------------------------------- dataset


class ShardError(GazegenError, ValueError):
    """A shard that cannot be read as gazegen's rows; the message names the file (and the row, for an image)."""


@dataclass(frozen=True)
class _Group:
    """One row group of one shard and its row count."""

    path: str
    index: int
    rows: int


@dataclass(frozen=True)
class _Encoded:
    """A row read but not decoded: its labels and ids (``item``), its PNG bytes by column, the file's depth scale."""

    item: dict[str, Any]
    pngs: dict[str, bytes]
    scale: float
    path: str


@dataclass(frozen=True)
class _Slice:
    """Rows [start, stop) of one row group: a consumer's piece of work."""

    group: _Group
    start: int
    stop: int


def _slices(groups: Sequence[_Group], lo: int, hi: int) -> list[_Slice]:
    """The pieces of ``groups``, taken in order as one sequence of rows, that cover its rows [lo, hi)."""
    out, offset = [], 0
    for group in groups:
        a, b = max(lo, offset), min(hi, offset + group.rows)
        if a < b:
            out.append(_Slice(group, a - offset, b - offset))
        offset += group.rows
    return out


def _share(total: int, part: int, parts: int) -> tuple[int, int]:
    """Rows [lo, hi) of part ``part`` of ``parts`` contiguous parts of ``total`` rows, their sizes differing by at most
    one and a function of ``total`` and ``parts`` alone."""
    return part * total // parts, (part + 1) * total // parts


class GazeParquetDataset(IterableDataset):
    """Streams rows of gazegen Parquet shards for gaze-estimation training.

    Each item is a dict (collates with torch's default ``collate_fn``):
        ``image``      (3, H, W) float32 RGB in [-1, 1], or uint8 (3, H, W) with ``uint8=True``
        ``gaze``, ``head_pose``, ``gaze_head``, ``view_offset``  (2,) float32 pitch/yaw radians
        ``camera``     (25,) float32
        ``source_head_pose``  (2,) float32 pitch/yaw radians, the source's own normalised camera
        ``face_mat_norm``  (3, 3) float32, the source photo's camera -> its normalised camera
        ``row_id``, ``source_id``  str
        ``depth``      (1, H, W) float32 millimetres, 0 = no surface (with ``depth=True``)
        ``alpha``      (1, H, W) float32 in [0, 1] (with ``alpha=True``)

    An epoch's rows are the shards' row groups in file order (with ``shuffle_buffer > 0``, in an order drawn from
    ``(seed, epoch)``, the same in every process), cut in equal contiguous shares: each of ``world_size`` processes
    (``rank``) takes ``num_rows // world_size`` of them, and each of its DataLoader workers an equal part of that
    share (sizes that depend only on the share and the number of workers). So every process of a DDP run yields the
    same number of rows in the same number of batches, as DDP's collectives need (the ``num_rows % world_size``
    rows at the end of the epoch's order are left out; with ``world_size = 1``, none), and every other row is yielded
    exactly once per epoch. ``shuffle_buffer > 0`` also shuffles rows through a buffer of that size (of PNG bytes:
    rows are decoded as they leave it), seeded by ``(seed, epoch, rank, worker)``. Call ``set_epoch`` before each
    epoch; a DataLoader with ``persistent_workers=True`` keeps its workers' copies of the dataset, which ``set_epoch``
    does not reach (every epoch would repeat the first one's order): leave it False (the default) when shuffling.

    The shards' footers are read when the dataset is made: a file that is not a Parquet file, or holds no gazegen rows,
    is named then (``ShardError``); a row whose image does not decode is named with its row id.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        filesystem: pafs.FileSystem | None = None,
        uint8: bool = False,
        depth: bool = False,
        alpha: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        batch_rows: int = 64,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.filesystem, self.paths = resolve_shards(source, filesystem)
        self.uint8, self.depth, self.alpha = uint8, depth, alpha
        self.shuffle_buffer, self.seed, self.batch_rows = shuffle_buffer, seed, batch_rows
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._groups = tuple(group for path in self.paths for group in self._groups_of(path))

    def set_epoch(self, epoch: int) -> None:
        """Changes the shuffle of the next iteration (call before creating the iterator; see the class docstring on
        persistent workers)."""
        self.epoch = epoch

    @property
    def num_rows(self) -> int:
        """Rows in all shards together (read from the Parquet footers)."""
        return sum(group.rows for group in self._groups)

    @property
    def rows_per_epoch(self) -> int:
        """Rows this process (``rank``) yields per epoch, over all its DataLoader workers."""
        return self.num_rows // self.world_size

    @property
    def columns(self) -> list[str]:
        names = ["image", *LABEL_WIDTHS, "row_id", "source_id"]
        return names + ["depth"] * self.depth + ["alpha"] * self.alpha

    def _open(self, path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.filesystem.open_input_file(path))
        except (OSError, pa.ArrowException) as e:
            raise ShardError(f"{path}: cannot be read as Parquet ({e})") from None

    def _groups_of(self, path: str) -> list[_Group]:
        file = self._open(path)
        missing = [name for name in self.columns if name not in file.schema_arrow.names]
        if missing:
            raise ShardError(f"{path}: not a gazegen shard: no {', '.join(missing)} column")
        return [_Group(path, g, file.metadata.row_group(g).num_rows) for g in range(file.metadata.num_row_groups)]

    def _pieces(self, worker: int, workers: int) -> list[_Slice]:
        """This process's ``worker``'s rows: its part of the rank's share of the epoch's row groups (class docstring)."""
        groups = list(self._groups)
        if self.shuffle_buffer > 0:  # the same permutation in every process and worker
            groups = [groups[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(groups))]
        share = self.rows_per_epoch
        a, b = _share(share, worker, workers)
        return _slices(groups, self.rank * share + a, self.rank * share + b)

    def _rows(self, path: str, pieces: Iterable[_Slice]) -> Iterator[_Encoded]:
        """The rows of ``pieces``, consecutive pieces of one file, opened once."""
        file = self._open(path)
        scale = depth_scale_of(file.schema_arrow)
        for piece in pieces:
            offset = 0
            try:
                for batch in file.iter_batches(batch_size=self.batch_rows, row_groups=[piece.group.index], columns=self.columns):
                    a, b = max(piece.start - offset, 0), min(piece.stop - offset, batch.num_rows)
                    offset += batch.num_rows
                    if a < b:
                        yield from self._items(batch.slice(a, b - a), scale, path)
            except (OSError, pa.ArrowException) as e:
                raise ShardError(f"{path}: row group {piece.group.index} cannot be read ({e})") from None

    def _items(self, batch: pa.RecordBatch, scale: float, path: str) -> Iterator[_Encoded]:
        labels = {name: _label_matrix(batch.column(name), LABEL_WIDTHS[name]) for name in LABEL_WIDTHS}
        pngs = {name: batch.column(name).field("bytes").to_pylist() for name in IMAGE_COLUMNS if name in batch.schema.names}
        row_ids = batch.column("row_id").to_pylist()
        source_ids = batch.column("source_id").to_pylist()
        for i in range(batch.num_rows):
            item: dict[str, Any] = {name: torch.from_numpy(labels[name][i].copy()) for name in labels}
            item["face_mat_norm"] = item["face_mat_norm"].reshape(3, 3)
            item["row_id"], item["source_id"] = row_ids[i], source_ids[i]
            yield _Encoded(item, {name: pngs[name][i] for name in pngs}, scale, path)

    def _decoded(self, row: _Encoded) -> dict[str, Any]:
        """The item of ``row`` with its PNGs decoded (after the shuffle buffer, which so holds PNG bytes, ~10x fewer
        than the decoded float images); ShardError naming the file and the row when one does not decode."""
        item = row.item
        try:
            item["image"] = self._image(row.pngs["image"])
            if self.depth:
                item["depth"] = torch.from_numpy(decode_depth_png(row.pngs["depth"], row.scale))[None]
            if self.alpha:
                item["alpha"] = torch.from_numpy(decode_alpha_png(row.pngs["alpha"]))[None]
        except ValueError as e:
            raise ShardError(f"{row.path}: row {item['row_id']}: {e}") from None
        return item

    def _image(self, data: bytes) -> torch.Tensor:
        chw = torch.from_numpy(decode_png(data)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        return chw if self.uint8 else to_model_range(chw)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        by_file = itertools.groupby(self._pieces(worker, workers), key=lambda piece: piece.group.path)
        rows: Iterable[_Encoded] = (row for path, pieces in by_file for row in self._rows(path, pieces))
        if self.shuffle_buffer > 0:
            consumer = self.rank * workers + worker
            rows = shuffle_buffered(rows, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, consumer, 1]))
        for row in rows:
            yield self._decoded(row)


def _float_array(values: Any) -> np.ndarray:
    """``values`` as a float64 array. A list column as pandas reads it (``to_pandas``: an object array
    holding one array per row) is stacked into (N, width); its rows must be of one length. A torch tensor is taken
    off its graph and device first."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    array = np.asarray(values)
    if array.dtype != object:
        return array.astype(np.float64)
    try:
        return np.stack([_float_array(v) for v in array.reshape(-1)]).reshape(*array.shape, -1)
    except ValueError as e:  # rows of different lengths, or no rows at all
        raise ValueError(f"gaze_in_photo: a column of {array.shape} objects is not rows of equal-length numbers ({e})") from None


ROW_LABELS = ("gaze", "head_pose", "source_head_pose", "face_mat_norm")  # what gaze_in_photo reads of a row


def _label_columns(table: Any) -> dict[str, Any]:
    """A pyarrow Table or RecordBatch, or a Hugging Face ``datasets.Dataset`` (both have ``column_names``), as a dict of
    its ``ROW_LABELS`` columns, each a list of rows."""
    if isinstance(table, (pa.Table, pa.RecordBatch)):
        return {name: table.column(name).to_pylist() for name in ROW_LABELS if name in table.column_names}
    return {name: list(table[name]) for name in ROW_LABELS if name in table.column_names}


def _is_labelled(row: Any) -> bool:
    """Whether ``row`` is labelled rows rather than gazes: a mapping, a pandas or polars DataFrame, or a pandas
    row (``df.iloc[i]``: a Series whose index holds the column names; a column ``df["gaze"]`` is gazes).
    Duck-typed, so that neither library is imported here."""
    if isinstance(row, Mapping) or hasattr(row, "columns"):
        return True
    return hasattr(row, "keys") and "gaze" in row.keys()


def gaze_in_photo(row: Any, face_mat_norm: np.ndarray | None = None) -> np.ndarray:
    """(pitch, yaw) radians of a row's gaze in the source photo's camera (float64).

    ``row``: a row or a batch of rows holding ``gaze``, ``head_pose``, ``source_head_pose`` and
    ``face_mat_norm`` (a ``GazeParquetDataset`` item or batch, a pandas row ``df.iloc[i]``, a pandas or
    polars DataFrame, a pyarrow Table or RecordBatch, a Hugging Face ``Dataset``, a dict of polars / pandas /
    ``datasets`` columns; (2,) or (N, 2), and (9,), (3, 3), (N, 9) or (N, 3, 3)).
    The gaze is turned from the rendered camera back to the source's normalised camera (undoing
    ``view_offset``: into the head frame with R_head(``head_pose``), out with
    R_head(``source_head_pose``)), then into the photo's camera with ``face_mat_norm`` transposed
    (gazegen/data/normalise.py ``gaze_to_photo``). Or ``row`` is (..., 2) gazes already in the
    source's normalised camera (rows whose ``view_offset`` is (0, 0)) and ``face_mat_norm`` their
    (3, 3) or (9,) rotation. A step whose rotation is exactly the identity (no view turn, an
    already normalised source) is skipped, so such gazes come back unchanged to the bit. A pandas
    list column (an object array of per-row arrays, as ``Table.to_pandas`` gives) is stacked first.
    """
    if hasattr(row, "column_names"):  # a pyarrow Table or RecordBatch, a Hugging Face Dataset
        row = _label_columns(row)
    labelled = _is_labelled(row)
    if labelled:
        if face_mat_norm is not None:
            raise ValueError("gaze_in_photo: a row (mapping, Series or DataFrame) carries its own face_mat_norm; pass it alone")
        missing = [k for k in ROW_LABELS if k not in row]
        if missing:
            raise ValueError(f"gaze_in_photo: the row has no {', '.join(missing)} (it needs {', '.join(ROW_LABELS)})")
        gaze, head, source = (_float_array(row[k]) for k in ROW_LABELS[:3])
        turned = geometry.gaze_head_to_camera(geometry.gaze_camera_to_head(gaze, geometry.head_pose_to_rotation(head)),
                                              geometry.head_pose_to_rotation(source))  # fmt: skip
        gaze = np.where((head == source).all(-1, keepdims=True), gaze, turned)
        face_mat_norm = row["face_mat_norm"]
    elif face_mat_norm is None:
        raise ValueError("gaze_in_photo: a gaze array needs its face_mat_norm")
    gaze = _float_array(gaze if labelled else row)
    rotation = _float_array(face_mat_norm)
    rotation = rotation.reshape(*rotation.shape[:-1], 3, 3) if rotation.shape[-1] == 9 else rotation
    if rotation.shape[-2:] != (3, 3):
        raise ValueError(f"gaze_in_photo: face_mat_norm must be (..., 3, 3) or (..., 9), got {np.shape(face_mat_norm)}")
    identity = (rotation == np.eye(3)).all((-2, -1))[..., None]
    return np.where(identity, gaze, gaze_to_photo(gaze, rotation))


def read_rows(file: pq.ParquetFile, rows: Sequence[int], columns: Sequence[str], use_threads: bool = True) -> pa.Table:
    """Rows ``rows`` (indices within the file, sorted, each once) of ``columns``, in that order: only the row groups
    holding them are read."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
    tables = [file.read_row_group(int(g), columns=list(columns), use_threads=use_threads) for g in groups]
    table = pa.concat_tables(tables) if tables else file.schema_arrow.empty_table().select(list(columns))
    first = {int(g): int(sum(t.num_rows for t in tables[:k])) for k, g in enumerate(groups)}  # group -> its first row in table
    at = [first[int(g)] + int(r - starts[g]) for r, g in zip(rows, np.searchsorted(starts, rows, side="right") - 1)]
    return table.take(pa.array(at, pa.int64()))


def shuffle_buffered(rows: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Stream ``rows`` through a buffer of ``size``: each new row replaces a random buffered one, which is yielded."""
    buffer: list[T] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        j = int(rng.integers(len(buffer)))
        yield buffer[j]
        buffer[j] = row
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def _label_matrix(column: pa.Array, width: int) -> np.ndarray:
    """A fixed-size list column -> (N, width) float32."""
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if values.size != len(column) * width:
        raise ValueError(f"label column has {values.size} values for {len(column)} rows of width {width}")
    return values.reshape(len(column), width)


__all__ = ["SHARD_GLOB", "GazeParquetDataset", "ShardError", "gaze_in_photo", "read_rows", "resolve_shards", "shuffle_buffered"]
