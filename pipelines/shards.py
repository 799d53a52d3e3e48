"""Deterministic Parquet shards that survive ``kill -9``: plan, write, check completion.

Layout of an output folder OUT (a local path or any pyarrow filesystem URI)::

    shard-00000.parquet            rows of the sources [0, n) of the sorted inputs
    shard-00000_stats.json         written last: the shard is complete iff this is valid
    _errors/shard-00000.parquet    bad inputs of the shard, with the reason (always written)
    _tmp/                          files being written; never matched by ``shard-*.parquet``
    _errors.parquet, _manifest.json, README.md, label_histograms.png    run-level files (pipelines/manifest.py)

``run_files`` names them all: what ``--overwrite`` removes; the listing of inputs skips them, but for the
shards, in any folder holding a run's manifest (pipelines/sources.py).

Shard ``i`` holds the sources ``[i * n, (i + 1) * n)`` of the sorted, de-duplicated inputs, so
a restart with the same inputs and ``n`` cuts the same shards. Every file is written under a
temporary name in ``_tmp/`` and moved into place; the parquet first, then the shard's errors,
then its stats. A kill at any point leaves either a complete shard or one without valid stats,
which a restart rewrites (the move replaces any earlier file of the same name). Starting a
``ShardWriter`` first removes the shard's stats, so a shard being rewritten never looks
complete. (On object stores a move is a copy + delete: still safe, because only the stats mark
completeness. Local moves are atomic renames; there is no fsync, so power loss is out of scope.)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gazegen.data.parquet import SHARD_GLOB
from gazegen.data.schema import IMAGE_COLUMNS, ROW_SCHEMA, conform, errors_table, rows_table

TMP_DIR = "_tmp"
SHARD_ERRORS_DIR = "_errors"
STATS_GLOB = "shard-*_stats.json"
MANIFEST_NAME = "_manifest.json"  # the run-level files (pipelines/manifest.py; the card: pipelines/card.py)
ERRORS_NAME = "_errors.parquet"
CARD_NAME = "README.md"
HISTOGRAMS_NAME = "label_histograms.png"
ROW_GROUP_SIZE = 100  # rows per Parquet row group (Hugging Face's choice for image datasets)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_text(lines: Sequence[str]) -> str:
    """sha256 of the names joined by newlines: the identity of an input list."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------- output folder


@dataclass(frozen=True)
class OutputDir:
    """A folder on a pyarrow filesystem; names inside it are relative posix paths."""

    fs: pafs.FileSystem
    root: str  # path within ``fs``; "" is the filesystem's own root (e.g. a SubTreeFileSystem)
    uri: str = ""  # as the user gave it, for messages

    @classmethod
    def from_uri(cls, out: str | OutputDir) -> OutputDir:
        """``/local/path``, ``relative/path``, ``file:///...``, ``s3://bucket/prefix``, ``mock:///...``."""
        if isinstance(out, OutputDir):
            return out
        if "://" in out:
            fs, root = pafs.FileSystem.from_uri(out)
            return cls(fs, root.rstrip("/"), out)
        return cls(pafs.LocalFileSystem(), os.path.abspath(out), out)

    def __str__(self) -> str:
        return self.uri or self.root

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if self.root else name

    def local_folder(self) -> str | None:
        """The folder's path on this machine; None on another filesystem (s3://, gs://, mock://)."""
        return self.root if isinstance(self.fs, pafs.LocalFileSystem) else None

    def ensure(self) -> None:
        if self.root:
            self.fs.create_dir(self.root, recursive=True)

    def info(self, name: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(name))

    def exists(self, name: str) -> bool:
        return self.info(name).type != pafs.FileType.NotFound

    def list(self, pattern: str = "*", under: str = "") -> list[str]:
        """Sorted names (relative to the folder) of the files in ``under`` matching ``pattern``."""
        selector = pafs.FileSelector(self.path(under) if under else self.root, allow_not_found=True)
        names = [f.base_name for f in self.fs.get_file_info(selector)]
        return sorted(posixpath.join(under, n) if under else n for n in names if fnmatch.fnmatch(n, pattern))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as stream:
            return stream.read()

    def temp_name(self, name: str) -> str:
        """A unique name in ``_tmp/`` for a file that will become ``name``."""
        self.fs.create_dir(self.path(TMP_DIR), recursive=True)
        return posixpath.join(TMP_DIR, f"{posixpath.basename(name)}.{uuid.uuid4().hex[:12]}")

    def move(self, src: str, dst: str) -> None:
        parent = posixpath.dirname(dst)
        if parent:
            self.fs.create_dir(self.path(parent), recursive=True)
        self.fs.move(self.path(src), self.path(dst))

    def write_atomic(self, name: str, data: bytes) -> None:
        """Writes ``data`` under a temporary name, then moves it to ``name``."""
        tmp = self.temp_name(name)
        with self.fs.open_output_stream(self.path(tmp)) as stream:
            stream.write(data)
        self.move(tmp, name)

    def delete(self, name: str) -> None:
        """Removes a file or a folder with its contents; a missing one is fine."""
        info = self.info(name)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(name))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(name))


def run_files(out: str | OutputDir, shards: bool = True) -> list[str]:
    """The names in OUT that a gazegen run writes, nothing else (``_tmp/`` and ``_errors/`` as folders):
    its shards (with ``shards``) and their stats, the errors files; with a manifest in OUT also the card,
    the histograms and the manifest, last (it marks OUT as a run's: another README.md is its owner's)."""
    out = OutputDir.from_uri(out)
    names = (out.list(SHARD_GLOB) if shards else []) + out.list(STATS_GLOB) + [TMP_DIR, SHARD_ERRORS_DIR, ERRORS_NAME]
    if out.exists(MANIFEST_NAME):
        names += [CARD_NAME, HISTOGRAMS_NAME, MANIFEST_NAME]
    return names


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ShardSpec:
    """One shard of the plan: the sources ``inputs`` = sorted inputs ``[start, start + len)``."""

    shard_id: int
    start: int
    inputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"

    @property
    def parquet_name(self) -> str:
        return f"{self.name}.parquet"

    @property
    def stats_name(self) -> str:
        return f"{self.name}_stats.json"

    @property
    def errors_name(self) -> str:
        return f"{SHARD_ERRORS_DIR}/{self.name}.parquet"

    @property
    def inputs_hash(self) -> str:
        return sha256_text(self.inputs)


def plan_shards(inputs: Sequence[str], sources_per_shard: int) -> list[ShardSpec]:
    """Cuts the sorted inputs into shards of ``sources_per_shard`` sources (the last may be short).

    The plan depends only on the set of inputs and ``sources_per_shard``, never on their order.
    Duplicate inputs raise ``ValueError`` (they would make duplicate rows).
    """
    if sources_per_shard < 1:
        raise ValueError(f"sources_per_shard must be >= 1, got {sources_per_shard}")
    ordered = sorted(inputs)
    duplicates = sorted({a for a, b in zip(ordered, ordered[1:]) if a == b})
    if duplicates:
        raise ValueError(f"{len(duplicates)} inputs appear more than once, e.g. {duplicates[:3]}")
    n = sources_per_shard
    return [ShardSpec(i, start, tuple(ordered[start : start + n])) for i, start in enumerate(range(0, len(ordered), n))]


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class ShardStats:
    """The content of ``shard-XXXXX_stats.json``; its presence marks the shard complete."""

    shard_id: int
    parquet: str  # file name of the shard
    rows: int
    errors: int  # error records of the shard (rows in its errors file)
    bytes: int  # size of the parquet file
    sha256: str  # of the parquet file's bytes
    inputs_hash: str  # ShardSpec.inputs_hash of the sources it was made from
    sources: int
    started: str  # UTC ISO times
    finished: str
    seconds: float
    extra: Mapping[str, Any] = field(default_factory=dict)  # caller's figures (e.g. timings)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"extra": dict(self.extra)}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardStats:
        """Parses and validates; raises ``ValueError`` on a truncated or malformed file."""
        try:
            data = json.loads(text)
            stats = cls(**data)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid stats: {error}") from error
        ints = (stats.shard_id, stats.rows, stats.errors, stats.bytes, stats.sources)
        if not all(isinstance(v, int) and v >= 0 for v in ints) or not isinstance(stats.sha256, str) or len(stats.sha256) != 64:
            raise ValueError("invalid stats: bad counts or checksum")
        return stats


@dataclass(frozen=True)
class ShardScan:
    """What ``completed_shards`` found: complete shards and stats files that do not count."""

    complete: dict[int, ShardStats]
    invalid: dict[str, str]  # stats file name -> why it does not mark a complete shard

    def todo(self, plan: Sequence[ShardSpec]) -> list[ShardSpec]:
        """The shards of ``plan`` still to (re)write."""
        return [spec for spec in plan if spec.shard_id not in self.complete]


def file_sha256(out: OutputDir, name: str) -> str:
    digest = hashlib.sha256()
    with out.fs.open_input_stream(out.path(name)) as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def completed_shards(out: str | OutputDir, plan: Sequence[ShardSpec] | None = None, verify: bool = False) -> ShardScan:
    """Reads every stats file. A shard counts as complete when its stats parse, its parquet
    exists with the recorded size (and checksum, with ``verify``), and, with ``plan``, it was
    made from the plan's sources for its id. Everything else is reported in ``invalid``."""
    out = OutputDir.from_uri(out)
    specs = {spec.shard_id: spec for spec in plan or ()}
    complete: dict[int, ShardStats] = {}
    invalid: dict[str, str] = {}
    for name in out.list(STATS_GLOB):
        try:
            stats = ShardStats.from_json(out.read_bytes(name))
        except ValueError as error:
            invalid[name] = str(error)
            continue
        info = out.info(stats.parquet)
        if name != f"{posixpath.splitext(stats.parquet)[0]}_stats.json":
            invalid[name] = f"names another shard ({stats.parquet})"
        elif info.type != pafs.FileType.File or info.size != stats.bytes:
            invalid[name] = f"{stats.parquet} missing or not {stats.bytes} bytes"
        elif plan is not None and (stats.shard_id not in specs or specs[stats.shard_id].inputs_hash != stats.inputs_hash):
            invalid[name] = "made from other inputs than the plan's shard"
        elif verify and file_sha256(out, stats.parquet) != stats.sha256:
            invalid[name] = f"{stats.parquet} checksum differs"
        else:
            complete[stats.shard_id] = stats
    return ShardScan(complete, invalid)


# --------------------------------------------------------------------------- writer


class _HashingStream:
    """A writable file object that hashes and counts what passes through it."""

    def __init__(self, raw: pa.NativeFile) -> None:
        self.raw, self.digest, self.size, self.closed = raw, hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.closed = True


@cache
def _parquet_options() -> dict[str, Any]:
    """Per-leaf-column options: PNG bytes stored plain and uncompressed, the rest zstd."""
    sink = pa.BufferOutputStream()
    pq.write_table(ROW_SCHEMA.empty_table(), sink)
    with pq.ParquetFile(pa.BufferReader(sink.getvalue())) as file:
        leaves = [c.path for c in file.schema]
    png = {f"{name}.bytes" for name in IMAGE_COLUMNS}
    return {
        "compression": {leaf: "none" if leaf in png else "zstd" for leaf in leaves},
        "use_dictionary": ["source_id", "source_path", "checkpoint_hash"],
        "write_statistics": [leaf for leaf in leaves if leaf not in png],
    }


class ShardWriter:
    """Writes one shard: rows, then errors, then stats (see the module docstring).

    Use as a context manager: a clean exit calls ``close`` (returns the ``ShardStats``); an
    exception calls ``abort`` (the temporary file is deleted, nothing is moved into place).
    Rows are buffered into row groups of ``row_group_size``; a ``row_id`` seen twice raises.
    """

    def __init__(self, out: str | OutputDir, spec: ShardSpec, row_group_size: int = ROW_GROUP_SIZE) -> None:
        self.out, self.spec, self.row_group_size = OutputDir.from_uri(out), spec, row_group_size
        self.out.ensure()
        self.out.delete(spec.stats_name)  # a shard being rewritten must not look complete
        self._started, self._clock = utc_now(), time.monotonic()
        self._tmp = self.out.temp_name(spec.parquet_name)
        self._stream = _HashingStream(self.out.fs.open_output_stream(self.out.path(self._tmp)))
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._stream, ROW_SCHEMA, **_parquet_options())
        self._pending: list[pa.Table] = []
        self._row_ids: set[str] = set()
        self._errors: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}  # the caller's figures for the stats file (e.g. timings)
        self.stats: ShardStats | None = None

    @property
    def rows(self) -> int:
        return len(self._row_ids)

    def write(self, rows: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> None:
        """Adds rows: a table or batch with the row columns, or columns for ``rows_table``."""
        if self._writer is None:
            raise RuntimeError(f"{self.spec.name}: write after close")
        table = rows_table(rows) if isinstance(rows, Mapping) else conform(pa.table(rows) if isinstance(rows, pa.RecordBatch) else rows)
        ids = table.column("row_id").to_pylist()
        repeated = {i for i, n in Counter(ids).items() if n > 1 or i in self._row_ids}
        if repeated:
            raise ValueError(f"{self.spec.name}: row ids written twice, e.g. {sorted(repeated)[:3]}")
        self._row_ids.update(ids)
        self._pending.append(table)
        if sum(t.num_rows for t in self._pending) >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        assert self._writer is not None
        table = pa.concat_tables(self._pending) if self._pending else ROW_SCHEMA.empty_table()
        keep = 0 if final else table.num_rows % self.row_group_size
        head = table.slice(0, table.num_rows - keep)
        if head.num_rows:
            self._writer.write_table(head, row_group_size=self.row_group_size)
        self._pending = [table.slice(table.num_rows - keep)] if keep else []

    def add_error(self, source_path: str, reason: str, *, source_id: str = "", stage: str = "") -> None:
        """Records a bad input of this shard; it goes to the errors table with the reason."""
        record = {"source_path": source_path, "source_id": source_id, "stage": stage, "reason": reason}
        self._errors.append(record | {"shard_id": self.spec.shard_id})

    def close(self, extra: Mapping[str, Any] | None = None) -> ShardStats:
        """Finishes the parquet, moves it into place, writes the errors file, then the stats."""
        if self._writer is None:
            raise RuntimeError(f"{self.spec.name}: closed twice")
        self._flush(final=True)
        self._writer.close()
        self._writer = None
        self._stream.close()
        out, spec = self.out, self.spec
        out.move(self._tmp, spec.parquet_name)
        sink = pa.BufferOutputStream()
        pq.write_table(errors_table(self._errors), sink)
        out.write_atomic(spec.errors_name, sink.getvalue().to_pybytes())
        self.stats = ShardStats(
            shard_id=spec.shard_id, parquet=spec.parquet_name, rows=self.rows, errors=len(self._errors),
            bytes=self._stream.size, sha256=self._stream.digest.hexdigest(), inputs_hash=spec.inputs_hash,
            sources=len(spec.inputs), started=self._started, finished=utc_now(),
            seconds=round(time.monotonic() - self._clock, 3), extra=self.extra | dict(extra or {}),
        )  # fmt: skip
        out.write_atomic(spec.stats_name, self.stats.to_json().encode())
        return self.stats

    def abort(self) -> None:
        """Drops the shard: closes and deletes the temporary file; nothing is moved into place."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
                self._stream.close()
                self.out.delete(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is None:
            if self._writer is not None:
                self.close()
        else:
            self.abort()

