"""`gazegen export OUT DEST --format xgaze|gazehub`: a finished synthesis run in the field's layouts.

OUT is a synthesis output folder (local or a pyarrow URI): ``shard-*.parquet`` plus the
``_manifest.json`` that marks the run complete and records its normalised camera. DEST is a
local folder. The layouts are in gazegen/data/export_formats.py.

How it streams. A first pass reads only ``source_id`` (and the gaze and view indices) of every
row group, which gives each row its identity (the source file, or its folder) and each identity
its frames. The second pass reads each row group once, in shard order, decodes its rows
``batch_rows`` at a time and hands them to the writer of their identity; a writer is closed
(its file renamed into place) as soon as the last row group holding its identity has passed.
Memory: the label index plus one row group.

Resuming. ``DEST/_export.json`` records what is exported (the shards' checksums and the export
settings: the fingerprint) and the identities. Run again, the export skips every identity whose
output is in place and redoes the others; a DEST holding another export (other shards or
settings) is refused, naming what differs, and ``overwrite`` clears it first. A failure (an
undecodable image, a shard that cannot be read) raises ``ExportError`` naming the file and row;
after it, or Ctrl-C, finished identities stay and the unfinished one's temporary output is
removed. A run whose shards hold no rows (every input failed) is refused before DEST is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from gazegen.config import ExportConfig, NormalisationConfig
from gazegen.data.export_formats import (EXPORT_FORMAT, TMP_SUFFIX, GazeHubWriter, Identity, RowBatch, XGazeWriter,
                                         finish_gazehub, finish_xgaze, remove, write_text_atomic)
from gazegen.data.images import resize_image, resize_nearest
from gazegen.data.parquet import resolve_shards
from gazegen.data.schema import decode_depth_png, decode_png, depth_scale_of
from gazegen.data.store import SPLIT_FILE
from gazegen.data.xgaze import DataError
from gazegen.paths import OutputPathError, check_out_folder
from gazegen.settings_diff import settings_differ

log = logging.getLogger(__name__)

STATE_FILE = "_export.json"
MANIFEST_FILE = "_manifest.json"  # written by pipelines/manifest.py
ERRORS_FILE = "_errors.parquet"  # the run's failed inputs, with the reasons (pipelines/shards.py)
OUTPUTS = ("train", "test", "Image", "Label", SPLIT_FILE, STATE_FILE)  # what an export writes in DEST
INDEX_COLUMNS = ["source_id", "gaze_index", "view_index"]
DATA_COLUMNS = ["image", "gaze", "head_pose", "gaze_head", "camera", "source_head_pose", "face_mat_norm", "row_id", *INDEX_COLUMNS]


class ExportError(DataError):
    """The export cannot go on; the message names the file (and row) and what is wrong."""


@dataclass(frozen=True)
class ExportResult:
    dest: Path
    format: str
    identities: tuple[Identity, ...]
    rows: int
    skipped: int  # identities already exported by an earlier run

    def summary(self) -> str:
        splits = {s: sum(i.split == s for i in self.identities) for s in ("train", "test")}
        return (f"{self.dest}: {self.format} export of {self.rows} images, {len(self.identities)} identities "
                f"({splits['train']} train, {splits['test']} test); {self.skipped} were already done")


# --------------------------------------------------------------------------- the run being exported


@dataclass(frozen=True)
class SourceRun:
    """A finished synthesis run: its shard paths, camera and fingerprint."""

    fs: Any  # pyarrow FileSystem
    paths: tuple[str, ...]
    normalisation: NormalisationConfig  # at the shards' resolution
    checkpoint_hash: str  # the run's checkpoint: sha256 over its config.json and model.safetensors (gazegen/checkpoint.py)
    shards_sha256: str  # identity of the shard contents (from the manifest's checksums)


def open_run(out: str) -> SourceRun:
    """The shards of a complete synthesis run; ExportError naming what is missing or unfinished."""
    try:
        fs, paths = resolve_shards(out)
    except FileNotFoundError as e:  # resolve_shards names the path: OUT, or the folder of its glob
        raise ExportError(f"{e}; a finished synthesis output folder is needed to export") from None
    except (ValueError, OSError) as e:
        raise ExportError(f"{out}: {e}") from None
    folder = posixpath.dirname(paths[0])
    manifest_path = posixpath.join(folder, MANIFEST_FILE)
    try:
        with fs.open_input_stream(manifest_path) as stream:
            manifest = json.loads(stream.read())
    except (FileNotFoundError, OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{manifest_path}: a synthesis run's manifest is needed to export ({e})") from None
    if manifest.get("status") != "complete":
        raise ExportError(f"{manifest_path}: the run is {manifest.get('status')!r}, not complete: run the same "
                          "`gazegen synthesize` command again to finish it, then export")
    listed = {s["name"]: s["sha256"] for s in manifest.get("shards", [])}
    found = {posixpath.basename(p) for p in paths}
    if set(listed) != found:
        raise ExportError(f"{manifest_path}: lists shards {sorted(listed)[:4]}... but {folder} holds "
                          f"{sorted(found)[:4]}... (missing {sorted(set(listed) - found)[:4]}, extra {sorted(found - set(listed))[:4]})")
    norm = manifest.get("settings", {}).get("normalisation")
    if not isinstance(norm, dict):
        raise ExportError(f"{manifest_path}: no settings.normalisation recorded")
    digest = hashlib.sha256(json.dumps(sorted(listed.items())).encode()).hexdigest()
    return SourceRun(fs, tuple(paths), NormalisationConfig(**norm), str(manifest.get("checkpoint_hash", "")), digest)


# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class Unit:
    """One row group of one shard, with the identity (index into the sorted keys) of each row."""

    path: str
    row_group: int
    identity: np.ndarray  # (rows,) int


@dataclass(frozen=True)
class RowIndex:
    keys: tuple[str, ...]  # identity keys, sorted
    units: tuple[Unit, ...]
    frames: dict[tuple[str, int], int]  # (source_id, gaze_index) -> frame index within its identity
    rows: dict[str, int]  # identity key -> rows
    last_unit: dict[str, int]  # identity key -> index of the last unit holding its rows


H5_ROW = re.compile(r"(?<=\.h5)#\d{6}$|(?<=\.hdf5)#\d{6}$", re.IGNORECASE)  # an h5 store's row: its file is one subject


def identity_of(source_id: str, by: str) -> str:
    """The person a source shows (pipelines/sources.py's ids): an h5 row's subject file (``subject0003.h5#000012`` ->
    ``subject0003.h5``), a photo, each of its faces apart (``photo.jpg#face01``), a Parquet row, its file holding any
    number of people (``data.parquet#000012``, ``data.parquet#000012#face01``); with ``by = "folder"``, the folder of
    its file (``"."`` at the root). A '#' in a file name stays in it (``party#1.jpg``)."""
    if by == "folder":
        return posixpath.dirname(source_id) or "."  # a folder of photos of one person; the ids' suffixes have no '/'
    return H5_ROW.sub("", source_id)


def _open_parquet(run: SourceRun, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(run.fs.open_input_file(path))
    except (OSError, pa.ArrowInvalid) as e:
        raise ExportError(f"{path}: cannot be read as Parquet ({e})") from None


def build_index(run: SourceRun, by: str) -> RowIndex:
    """The identities, frames and row groups of the run, from its index columns only."""
    raw: list[tuple[str, int, list[str]]] = []
    pairs: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for path in run.paths:
        file = _open_parquet(run, path)
        for g in range(file.metadata.num_row_groups):
            table = file.read_row_group(g, columns=INDEX_COLUMNS)
            ids, gazes = table["source_id"].to_pylist(), table["gaze_index"].to_pylist()
            keys = [identity_of(s, by) for s in ids]
            for key, sid, gaze in zip(keys, ids, gazes):
                pairs[key].add((sid, gaze))
            raw.append((path, g, keys))
    keys = tuple(sorted(pairs))
    number = {k: i for i, k in enumerate(keys)}
    units = tuple(Unit(path, g, np.array([number[k] for k in row_keys], dtype=np.int64)) for path, g, row_keys in raw)
    frames = {pair: f for key in keys for f, pair in enumerate(sorted(pairs[key]))}
    rows = {k: 0 for k in keys}
    last_unit: dict[str, int] = {}
    for u, unit in enumerate(units):
        for i, n in zip(*np.unique(unit.identity, return_counts=True)):
            rows[keys[i]] += int(n)
            last_unit[keys[i]] = u
    return RowIndex(keys, units, frames, rows, last_unit)


def name_identities(index: RowIndex, test: tuple[str, ...]) -> list[Identity]:
    """``subject0000``... in sorted key order; ``test`` names (key, stem or output name) go to the test split."""
    names = {key: f"subject{i:04d}" for i, key in enumerate(index.keys)}
    aliases = {alias: key for key, name in names.items() for alias in (key, posixpath.splitext(posixpath.basename(key))[0], name)}
    unknown = [t for t in test if t not in aliases]
    if unknown:
        raise ExportError(f"--test {unknown}: no such identity; identities are {list(index.keys)[:8]}")
    tested = {aliases[t] for t in test}
    return [Identity(key, names[key], "test" if key in tested else "train", index.rows[key]) for key in index.keys]


# --------------------------------------------------------------------------- state


def _output_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The export settings (``asdict`` of an ExportConfig, or as its state file records them) that shape the output."""
    return settings | {"batch_rows": None, "test": sorted(settings.get("test", ()))}  # batch_rows does not change the output


def _fingerprint(shards_sha256: str, settings: dict[str, Any]) -> str:
    payload = {"shards": shards_sha256, "settings": _output_settings(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _differences(recorded: dict[str, Any], out: str, run: SourceRun, cfg: ExportConfig) -> list[str]:
    """What makes this export (of ``out``, read as ``run``, with ``cfg``) another than the one ``recorded`` in
    DEST's state file: each setting with its recorded and new value, and whether the shards differ; [] if none."""
    old, new = _output_settings(recorded.get("settings") or {}), _output_settings(asdict(cfg))
    found = settings_differ(old, new)
    # The state records no shard checksums, but the fingerprint covers them: the recorded settings with this run's shards
    # give the recorded fingerprint only when the shards are the same.
    if _fingerprint(run.shards_sha256, old) != recorded.get("fingerprint"):
        source = recorded.get("source")
        since = ", and its shards have changed since" if source == out else f", not {out}"
        found.append(f"shards differ: {source} was exported{since}")
    return found


def check_dest(dest: Path, out: str, run: SourceRun, cfg: ExportConfig, overwrite: bool) -> None:
    """A folder, new, empty or the same export (resume); anything else raises ExportError (``overwrite``: any
    folder). Reads only: a refused export leaves DEST as it was (``prepare_dest`` then clears and makes it)."""
    try:
        check_out_folder(dest)
    except OutputPathError as e:
        raise ExportError(str(e)) from None
    state = dest / STATE_FILE
    if overwrite:
        return
    if state.is_file():
        try:
            recorded = json.loads(state.read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{state}: unreadable ({e}); pass --overwrite to start afresh") from None
        if not isinstance(recorded, dict):
            raise ExportError(f"{state}: not an export's state (a JSON {type(recorded).__name__}); pass --overwrite to start afresh")
        if recorded.get("fingerprint") != _fingerprint(run.shards_sha256, asdict(cfg)):
            differences = "; ".join(_differences(recorded, out, run, cfg))
            raise ExportError(f"{state}: {dest} holds an export of other shards or settings ({differences}); "
                              "choose another DEST or pass --overwrite to replace it")
    elif dest.is_dir() and any(dest.iterdir()):
        raise ExportError(f"{dest}: not empty and holds no {STATE_FILE}: choose an empty or new folder")


def prepare_dest(dest: Path, overwrite: bool) -> None:
    """DEST made (``overwrite``: first cleared of every file an export writes); after ``check_dest``."""
    if overwrite:
        for name in OUTPUTS:
            remove(dest / name)
    dest.mkdir(parents=True, exist_ok=True)


def _write_state(dest: Path, run_path: str, run: SourceRun, cfg: ExportConfig, fingerprint: str,
                 identities: list[Identity], status: str) -> None:
    state = {"format": EXPORT_FORMAT, "version": 1, "status": status, "source": run_path, "fingerprint": fingerprint,
             "checkpoint_hash": run.checkpoint_hash, "settings": asdict(cfg), "normalisation": asdict(run.normalisation),
             "identities": [asdict(i) for i in identities]}
    write_text_atomic(dest / STATE_FILE, json.dumps(state, indent=1))


# --------------------------------------------------------------------------- rows


def _labels(table: pa.Table, name: str, width: int) -> np.ndarray:
    return table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


def decode_rows(table: pa.Table, path: str, frames: dict[tuple[str, int], int], resolution: int, depth_scale: float | None) -> RowBatch:
    """Rows of one shard -> a RowBatch; ExportError naming the shard and row id of an undecodable image."""
    row_ids = table["row_id"].to_pylist()
    pngs = table["image"].combine_chunks().field("bytes").to_pylist()
    depth_pngs = table["depth"].combine_chunks().field("bytes").to_pylist() if depth_scale is not None else [None] * len(pngs)
    images, depths = [], []
    for i, (image, depth_png) in enumerate(zip(pngs, depth_pngs)):
        try:
            rgb = decode_png(image)
            depth = None if depth_png is None else decode_depth_png(depth_png, depth_scale)
        except (ValueError, TypeError) as e:
            raise ExportError(f"{path}: row {row_ids[i]!r}: {e}") from None
        images.append(resize_image(rgb, resolution) if resolution else rgb)
        if depth is not None:
            depths.append(resize_nearest(depth, resolution) if resolution else depth)
    sids, gazes = table["source_id"].to_pylist(), table["gaze_index"].to_pylist()
    return RowBatch(
        image=np.stack(images), depth=np.stack(depths) if depths else None,
        gaze=_labels(table, "gaze", 2), head_pose=_labels(table, "head_pose", 2), gaze_head=_labels(table, "gaze_head", 2),
        camera=_labels(table, "camera", 25), source_head_pose=_labels(table, "source_head_pose", 2),
        source_mat_norm=_labels(table, "face_mat_norm", 9).reshape(-1, 3, 3),
        frame_index=np.array([frames[(s, g)] for s, g in zip(sids, gazes)], dtype=np.int64),
        cam_index=table["view_index"].to_numpy().astype(np.int64), row_id=row_ids,
    )  # fmt: skip


# --------------------------------------------------------------------------- export


Writer = XGazeWriter | GazeHubWriter


def export_run(out: str, dest: str | Path, cfg: ExportConfig = ExportConfig(), *, overwrite: bool = False,
               progress: bool = True) -> ExportResult:
    """Exports the finished synthesis run in ``out`` to ``dest`` (module docstring)."""
    dest = Path(dest)
    run = open_run(out)
    fingerprint = _fingerprint(run.shards_sha256, asdict(cfg))
    check_dest(dest, out, run, cfg, overwrite)
    index = build_index(run, cfg.identity)
    if not index.keys:  # every input failed: an empty export would read as a finished one with no subjects
        raise ExportError(f"{out}: the shards hold no rows (every input of the run failed, {ERRORS_FILE} says why); "
                          "nothing to export")
    identities = name_identities(index, cfg.test)  # an unknown --test is refused before DEST is made or cleared
    prepare_dest(dest, overwrite)
    _write_state(dest, out, run, cfg, fingerprint, identities, "running")
    for stale in dest.glob(f"**/*{TMP_SUFFIX}"):
        remove(stale)
    kind = XGazeWriter if cfg.format == "xgaze" else GazeHubWriter
    todo = {i.key: i for i in identities if not kind.done(dest, i)}
    norm = run.normalisation.at_resolution(cfg.resolution) if cfg.resolution else run.normalisation
    attrs = {"export_fingerprint": fingerprint, "checkpoint_hash": run.checkpoint_hash, "source_run": out}

    def open_writer(identity: Identity) -> Writer:
        return XGazeWriter(dest, identity, norm, attrs) if cfg.format == "xgaze" else GazeHubWriter(dest, identity, cfg)

    rows = sum(i.rows for i in todo.values())
    with tqdm(total=rows, unit="img", desc=f"export {cfg.format}", disable=not progress) as bar:
        _stream(run, index, todo, open_writer, cfg, bar.update)
    (finish_xgaze if cfg.format == "xgaze" else finish_gazehub)(dest, identities)
    _write_state(dest, out, run, cfg, fingerprint, identities, "complete")
    skipped = len(identities) - len(todo)
    log.info("exported %d images of %d identities to %s (%d already done)", rows, len(todo), dest, skipped)
    return ExportResult(dest, cfg.format, tuple(identities), sum(i.rows for i in identities), skipped)


def _stream(run: SourceRun, index: RowIndex, todo: dict[str, Identity], open_writer: Callable[[Identity], Writer],
            cfg: ExportConfig, advance: Callable[[int], Any]) -> None:
    """The second pass: every needed row group once, its rows to their identity's writer."""
    writers: dict[str, Writer] = {}
    wanted = np.array([key in todo for key in index.keys], dtype=bool)
    columns = DATA_COLUMNS + (["depth"] if cfg.format == "xgaze" else [])
    number = {key: i for i, key in enumerate(index.keys)}
    file, file_path = None, ""
    try:
        for u, unit in enumerate(index.units):
            present = [index.keys[i] for i in np.unique(unit.identity) if wanted[i]]
            if not present:
                continue
            if unit.path != file_path:
                file, file_path = _open_parquet(run, unit.path), unit.path
            assert file is not None
            try:
                table = file.read_row_group(unit.row_group, columns=columns)
            except (OSError, pa.ArrowInvalid) as e:
                raise ExportError(f"{unit.path}: row group {unit.row_group} cannot be read ({e})") from None
            scale = depth_scale_of(file.schema_arrow) if cfg.format == "xgaze" else None
            for key in present:
                rows = np.flatnonzero(unit.identity == number[key])
                if key not in writers:
                    writers[key] = open_writer(todo[key])
                writer = writers[key]
                for start in range(0, len(rows), cfg.batch_rows):
                    part = table.take(pa.array(rows[start:start + cfg.batch_rows]))
                    writer.write(decode_rows(part, unit.path, index.frames, cfg.resolution, scale))
                    advance(part.num_rows)
                if index.last_unit[key] == u:
                    writers.pop(key).close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
