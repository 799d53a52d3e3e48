"""Synthesis inputs, listed: every face to synthesise from as a source with a stable id (pipelines/inputs.py reads them).

INPUTS is a folder (searched recursively), a glob, or one file. Three kinds of file count:

images   ``.jpg .jpeg .png .bmp .webp .tif .tiff``: one source each (a TIFF's first page).
         ``faces = "largest"`` (the default) takes the largest face. ``faces = "all"`` detects
         the faces of every image while listing (MTCNN on the driver: one pass per image, again
         at each restart's listing; the shard plan needs the sources before anything is decoded)
         and makes an image with two or more faces one source per face, ``photo.jpg#face00``,
         ``#face01``, ... largest first (gazegen/data/faces.py ``crop_each_face``; ``face00`` is
         the face "largest" takes); an image with one face or none keeps its plain id.
h5       ``.h5 .hdf5`` in any layout gazegen/data/xgaze.py reads (training store, ETH-XGaze,
         GazeNeRF): one source per row.
parquet  ``.parquet`` with an image column (bytes, or a Hugging Face ``{bytes, path}`` struct):
         one source per row; with ``faces = "all"`` a photo row (no ``head_pose``) with two or
         more faces is one source per face, ``data.parquet#000012#face00``, ... as for image
         files (a row whose image cannot be read while listing keeps its plain id: its read
         reports why).

Source ids are the file's path relative to the INPUTS root (the folder; the non-magic prefix of
a glob; the parent of a single file), posix separators, plus ``#000012`` (the row, zero-padded
to six digits) for rows of h5 and Parquet files. They are unique and do not depend on the
machine, so shards cut from the sorted ids are the same on every restart. A file that cannot be
opened while listing (or is no regular file: a FIFO, a device) becomes one source carrying its
error, reported when it is read. A Parquet file without the image column (``image_column``) is
refused while listing (``ImageColumnError``, naming its columns): the setting is wrong, not a row.

Never sources: the run's own output folder (OUT may lie inside INPUTS; nothing under it is listed,
so a rerun meets the inputs of the first run); earlier runs' folders below a folder given as INPUTS
(a run written inside a photo folder: skipped with a warning); and, in a folder holding a synthesis
run's manifest (a previous run's output given as INPUTS, or its shards by a glob), the files that run
wrote beside its shards (pipelines/shards.py ``run_files``: card, histograms, errors, stats). Its
shards stay Parquet sources: rows with their labels.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow.parquet as pq

from gazegen.data.faces import IMAGE_SUFFIXES
from gazegen.data.mtcnn import MtcnnDetector
from gazegen.data.xgaze import open_subject
from gazegen.errors import GazegenError
from gazegen.pipelines.guards import InputError, decode_image, max_file_bytes, read_regular_file, resolve_inside
from gazegen.pipelines.shards import MANIFEST_NAME, OutputDir, run_files

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
PARQUET_SUFFIXES = (".parquet",)
INDEX_FORMAT = "{path}#{index:06d}"
FACE_FORMAT = "{path}#face{index:02d}"  # faces = "all": crop_each_face's face ids


class ImageColumnError(InputError):
    """A Parquet input without the run's image column: the setting is wrong, not a source, so the run is refused."""


@dataclass(frozen=True)
class SourceRecord:
    """One source face: a whole image file, or one row of an h5 or Parquet file."""

    source_id: str  # stable id (module docstring)
    path: str  # absolute path of the file
    kind: str  # "image", "h5" or "parquet"
    index: int = -1  # row within an h5 / Parquet file; -1 for an image file
    face: int = -1  # the face within the image or row (faces = "all", largest first); -1: its largest face
    error: str = ""  # set when the file could not be opened while listing


@cache
def detector() -> MtcnnDetector:
    return MtcnnDetector()  # one per process: the listing driver's and each decode worker's


def image_bytes(value: object, base: Path, root: str, max_pixels: int) -> bytes:
    """An image cell (bytes, or a {bytes, path} struct) -> bytes; a path is read only when it is a
    regular file inside `root` (the input root; "": `base`, the Parquet file's folder)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if not data and path:
            data = read_regular_file(resolve_inside(str(path), base, Path(root) if root else base), max_file_bytes(max_pixels))
        value = data
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise InputError("the image cell holds no bytes")
    return bytes(value)


def _absolute(path: Path) -> Path:
    """Absolute and normalised, links not followed: a symlink keeps its own name (and id)."""
    return Path(os.path.abspath(path))


def _root_and_files(inputs: str) -> tuple[Path, list[Path]]:
    if glob.has_magic(inputs):
        prefix = []
        for part in Path(inputs).parts:
            if glob.has_magic(part):
                break
            prefix.append(part)
        root = Path(*prefix) if prefix else Path(".")
        return _absolute(root), [_absolute(Path(p)) for p in glob.glob(inputs, recursive=True) if not os.path.isdir(p)]
    path = Path(inputs)
    if path.is_dir():
        files = [p for p in path.rglob("*") if not p.is_dir() and not any(q.startswith(".") for q in p.relative_to(path).parts)]
        return _absolute(path), [_absolute(p) for p in files]
    if path.exists():
        return _absolute(path.parent), [_absolute(path)]
    raise FileNotFoundError(f"{inputs}: no such file, folder or matching glob")


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (or is it), by name or, links followed, by what it is."""
    return path.is_relative_to(folder) or Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _run_outputs(files: list[Path]) -> set[Path]:
    """The files of ``files`` that a synthesis run wrote beside its shards (its manifest, card, histograms,
    errors, stats and temporary files: pipelines/shards.py ``run_files``), in any folder holding a run's
    manifest. A run's shards stay sources (Parquet with an image column and labels)."""
    folders = {f.parent for f in files} | {f.parent.parent for f in files}  # OUT/x, or OUT/_errors/x and OUT/_tmp/x
    runs = [d for d in folders if (d / MANIFEST_NAME).is_file()]
    owned = {d / name for d in runs for name in run_files(OutputDir.from_uri(str(d)), shards=False)}
    return {f for f in files if f in owned or any(p in owned for p in f.parents)}


def _outside_nested_runs(root: Path, files: list[Path], inputs: str) -> list[Path]:
    """``files`` less those of earlier synthesis runs in folders below INPUTS (a run's folder given as INPUTS itself,
    or its shards by a glob, are read): a run written inside a photo folder is not a new source of the next run."""
    runs = {d for d in {f.parent for f in files} if d != root and (d / MANIFEST_NAME).is_file()}
    if not runs:
        return files
    kept = [f for f in files if not any(f.is_relative_to(d) for d in runs)]
    log.warning("%s: %d files of %d earlier synthesis runs inside it skipped (%s); to render a run's rows, give its "
                "folder as INPUTS", inputs, len(files) - len(kept), len(runs), ", ".join(sorted(str(d) for d in runs)[:3]))
    return kept


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    for kind, suffixes in (("image", IMAGE_SUFFIXES), ("h5", H5_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return None


def input_root(inputs: str | os.PathLike[str]) -> Path:
    """The folder source ids are relative to (module docstring); Parquet path cells must lie inside it."""
    return _root_and_files(str(inputs))[0]


def _regular(path: Path) -> None:
    if not path.is_file():  # follows symlinks; never opens (a FIFO would block)
        raise InputError(f"{path}: not a regular file (a FIFO, device, socket or dangling link is never read)")


def _rows(path: Path, kind: str, image_column: str) -> int:
    _regular(path)
    if kind == "h5":
        with open_subject(path, strict=False) as reader:
            return len(reader)
    with pq.ParquetFile(path) as file:
        if image_column not in file.schema_arrow.names:
            raise ImageColumnError(f"{path}: no column {image_column!r} (columns: {', '.join(file.schema_arrow.names)}); "
                                   "name its image column with --set image_column=NAME")
        return file.metadata.num_rows


def _image_records(path: Path, rel: str, faces: str, max_pixels: int) -> list[SourceRecord]:
    """An image's sources: one, or with ``faces == "all"`` one per face when it holds two or more."""
    if faces == "largest":
        return [SourceRecord(rel, str(path), "image")]
    try:
        found = len(detector().detect(decode_image(read_regular_file(path, max_file_bytes(max_pixels)), max_pixels, str(path))))
    except Exception as error:  # an unreadable image is one error row, as when it is decoded
        return [SourceRecord(rel, str(path), "image", error=_reason(error))]
    if found < 2:
        return [SourceRecord(rel, str(path), "image")]
    return [SourceRecord(FACE_FORMAT.format(path=rel, index=k), str(path), "image", face=k) for k in range(found)]


def _parquet_records(path: Path, rel: str, rows: int, faces: str, image_column: str, root: Path,
                     max_pixels: int) -> list[SourceRecord]:
    """A Parquet file's sources: one per row, or with ``faces == "all"`` one per face of each
    photo row (no ``head_pose``) that holds two or more faces (module docstring)."""
    plain = [SourceRecord(INDEX_FORMAT.format(path=rel, index=i), str(path), "parquet", i) for i in range(rows)]
    if faces == "largest":
        return plain
    records: list[SourceRecord] = []
    with pq.ParquetFile(path) as file:
        columns = [image_column] + [c for c in ("head_pose",) if c in file.schema_arrow.names]
        row = 0
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=columns, use_threads=False)
            for cells in table.to_pylist():
                found = 1 if cells.get("head_pose") is not None else _faces_in_cell(cells[image_column], path, root, max_pixels)
                if found < 2:
                    records.append(plain[row])
                else:
                    records += [SourceRecord(FACE_FORMAT.format(path=plain[row].source_id, index=k), str(path), "parquet", row, k)
                                for k in range(found)]
                row += 1
    return records


def _reason(error: Exception) -> str:
    """An error row's one-line reason: a problem the reader names itself (a GazegenError: the file and what is wrong
    with it) as it is, another with its type; of several problems, one per line, the first and how many more."""
    text = str(error) if isinstance(error, GazegenError) else f"{type(error).__name__}: {error}"
    lines = text.splitlines() or [type(error).__name__]
    return lines[0] + (f" (and {len(lines) - 1} more problem{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else "")


def _faces_in_cell(cell: object, path: Path, root: Path, max_pixels: int) -> int:
    """How many faces the photo in a Parquet image cell shows; 0 when it cannot be read."""
    try:
        image = decode_image(image_bytes(cell, path.parent, str(root), max_pixels), max_pixels)
    except InputError:
        return 0
    return len(detector().detect(image))


def file_fingerprints(records: Sequence[SourceRecord], root: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Each input file's [size, modification time in ns], by its path relative to the inputs' ``root`` ([-1, -1]
    when it cannot be read): a file edited or replaced changes them, so a run is never resumed from another version
    of an input (the manifest compares them, pipelines/run_manifest.py). Contents are not hashed: that would read
    every input twice."""
    out: dict[str, list[int]] = {}
    for path in sorted({r.path for r in records}):
        try:
            stat = os.stat(path)
            fingerprint = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            fingerprint = [-1, -1]
        out[os.path.relpath(path, root)] = fingerprint
    return out


def list_sources(inputs: str | os.PathLike[str], image_column: str = "image", faces: str = "largest",
                 max_pixels: int = 36_000_000, out: str | os.PathLike[str] | None = None) -> list[SourceRecord]:
    """Every source of INPUTS, sorted by id. ``faces``: "largest" or "all" (module docstring;
    ``max_pixels`` guards the images and Parquet cells "all" reads). ``out``: the run's output
    folder, whose files are never inputs (OUT may lie inside INPUTS; INPUTS inside OUT is refused).
    Raises FileNotFoundError when INPUTS names nothing and ValueError when it holds no file of a known kind."""
    if faces not in ("largest", "all"):
        raise ValueError(f"faces {faces!r}: expected 'largest' or 'all'")
    root, files = _root_and_files(str(inputs))
    if out is not None:
        out = _absolute(Path(out))
        if _inside(root, out):
            raise InputError(f"{inputs}: the inputs lie in the output folder {out}, whose files are never read as inputs; "
                             "write the run to another folder (a new subfolder of INPUTS is fine)")  # fmt: skip
        files = [f for f in files if not _inside(f, out)]
    if Path(inputs).is_dir() and not glob.has_magic(str(inputs)):
        files = _outside_nested_runs(root, files, str(inputs))
    outputs = _run_outputs(files)
    if outputs:
        log.info("%s: %d files a synthesis run wrote beside its shards skipped (e.g. %s)", inputs, len(outputs), min(outputs))
        files = [f for f in files if f not in outputs]
    records: list[SourceRecord] = []
    skipped: Counter[str] = Counter()  # suffix -> files of no kind read here
    for path in sorted(files):
        kind = _kind(path)
        if kind is None:
            skipped[path.suffix.lower() or "no suffix"] += 1
            continue
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        if kind == "image":
            records += _image_records(path, rel, faces, max_pixels)
            continue
        try:
            n = _rows(path, kind, image_column)
            if kind == "parquet":
                records += _parquet_records(path, rel, n, faces, image_column, root, max_pixels)
                continue
        except ImageColumnError:  # every row would fail alike: refused before anything is written
            raise
        except Exception as error:  # an unreadable file is one error row, not a failed run
            records.append(SourceRecord(rel, str(path), kind, error=_reason(error)))
            continue
        records += [SourceRecord(INDEX_FORMAT.format(path=rel, index=i), str(path), kind, i) for i in range(n)]
    if skipped:
        kinds = ", ".join(f"{suffix} x{n}" for suffix, n in sorted(skipped.items()))
        log.info("%s: %d files of other kinds skipped (%s)", inputs, sum(skipped.values()), kinds)
    if not records:
        raise InputError(f"{inputs}: no images ({', '.join(IMAGE_SUFFIXES)}), h5 or Parquet files found")
    return sorted(records, key=lambda r: r.source_id)
