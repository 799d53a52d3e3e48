"""Run-level files of a synthesis output: ``_manifest.json``, ``_errors.parquet``, the card (pipelines/card.py).

A run starts with ``check_or_create``: a fresh OUT gets a manifest (status ``running``) before
any shard is written; an OUT with a manifest is resumed only when the recorded inputs,
checkpoint and settings equal the new run's, else it refuses with ``RunMismatchError`` naming
each difference (``overwrite=True`` removes the old outputs and starts afresh). ``finalize``
checks that every planned shard is complete, merges the shards' errors into
``_errors.parquet``, fills the manifest's shard list (rows, checksums) and writes the dataset
card with its label histograms. Both are idempotent: a restart of a finished run finalizes
again to the same result.

``settings`` must hold everything that changes the rows (grid, seed, model and render
settings, image size, ...): it is compared key by key on restart. ``sources_per_shard`` is
recorded and compared beside it because it fixes the shard plan. The command line and the
library versions are recorded but not compared.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gazegen.data.label_plots import figure_png, label_figure, read_labels
from gazegen.data.parquet import SHARD_GLOB
from gazegen.data.schema import ERRORS_SCHEMA, GAZEGEN_METADATA
from gazegen.errors import GazegenError
from gazegen.pipelines.card import CARD_NAME, HISTOGRAMS_NAME, dataset_card
from gazegen.pipelines.shards import (
    SHARD_ERRORS_DIR,
    STATS_GLOB,
    TMP_DIR,
    OutputDir,
    ShardSpec,
    completed_shards,
    sha256_text,
    utc_now,
)

MANIFEST_NAME = "_manifest.json"
ERRORS_NAME = "_errors.parquet"
MANIFEST_FORMAT = "gazegen-synthesis-manifest"
VERSIONED = ("gazegen", "torch", "pyarrow", "numpy", "opencv-python-headless", "ray", "datasets")


class RunMismatchError(GazegenError, RuntimeError):
    """OUT holds another run (or foreign files); the message says what differs and what to do."""


class IncompleteRunError(GazegenError, RuntimeError):
    """``finalize`` found planned shards that are not complete."""


def library_versions() -> dict[str, str]:
    """Versions of the installed libraries that shape the output (read without importing them)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _jsonable(value: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, ...), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class RunManifest:
    """The content of ``_manifest.json``."""

    inputs: tuple[str, ...]  # sorted input names
    checkpoint_hash: str  # identity of the model weights
    settings: Mapping[str, Any]  # everything that changes the rows; JSON-normalised
    sources_per_shard: int
    command: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    status: str = "running"  # "running" until finalize, then "complete"
    created: str = ""
    finished: str = ""
    shards: tuple[Mapping[str, Any], ...] = ()  # per shard: name, rows, errors, bytes, sha256

    @classmethod
    def create(
        cls,
        inputs: Sequence[str],
        checkpoint_hash: str,
        settings: Mapping[str, Any],
        sources_per_shard: int,
        command: Sequence[str] = (),
    ) -> RunManifest:
        """A new run's manifest: inputs sorted, settings normalised, versions and time recorded."""
        return cls(
            inputs=tuple(sorted(inputs)), checkpoint_hash=checkpoint_hash, settings=_jsonable(dict(settings)),
            sources_per_shard=sources_per_shard, command=tuple(command), versions=library_versions(), created=utc_now(),
        )  # fmt: skip

    @property
    def inputs_hash(self) -> str:
        return sha256_text(self.inputs)

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    @property
    def errors(self) -> int:
        return sum(int(s["errors"]) for s in self.shards)

    def to_json(self) -> str:
        data = asdict(self) | {"settings": dict(self.settings), "versions": dict(self.versions)}
        data["shards"] = [dict(s) for s in self.shards]
        inputs = {"count": len(self.inputs), "sha256": self.inputs_hash, "names": list(self.inputs)}
        head = {"format": MANIFEST_FORMAT, "version": 1, "inputs": inputs, "rows": self.rows, "errors": self.errors}
        return json.dumps(head | {k: v for k, v in data.items() if k != "inputs"} | {"schema": GAZEGEN_METADATA}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunManifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a gazegen manifest (format {data.get('format')!r})")
        if sha256_text(data["inputs"]["names"]) != data["inputs"]["sha256"]:
            raise ValueError("manifest inputs do not match their recorded checksum")
        names = {f.name for f in cls.__dataclass_fields__.values()} - {"inputs"}
        kept = {k: v for k, v in data.items() if k in names}
        kept |= {"command": tuple(kept.get("command", ())), "shards": tuple(kept.get("shards", ()))}
        return cls(inputs=tuple(data["inputs"]["names"]), **kept)

    def differences(self, other: RunManifest) -> list[str]:
        """What makes ``other`` (a new run) a different run from this recorded one; [] if none."""
        found = []
        if self.inputs_hash != other.inputs_hash:
            old, new = set(self.inputs), set(other.inputs)
            added, removed = sorted(new - old), sorted(old - new)
            found.append(f"inputs differ: {len(added)} added {added[:3]}, {len(removed)} removed {removed[:3]}")
        if self.checkpoint_hash != other.checkpoint_hash:
            found.append(f"checkpoint differs: recorded {self.checkpoint_hash!r}, now {other.checkpoint_hash!r}")
        old_settings = _flatten(dict(self.settings)) | {"sources_per_shard": self.sources_per_shard}
        new_settings = _flatten(_jsonable(dict(other.settings))) | {"sources_per_shard": other.sources_per_shard}
        changed = [k for k in sorted(old_settings.keys() | new_settings.keys()) if old_settings.get(k) != new_settings.get(k)]
        if changed:
            shown = ", ".join(f"{k}: {old_settings.get(k, '<unset>')!r} -> {new_settings.get(k, '<unset>')!r}" for k in changed[:5])
            found.append(f"settings differ ({len(changed)}): {shown}")
        return found


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_manifest(out: str | OutputDir) -> RunManifest | None:
    """The recorded manifest, None when OUT has none; ``ValueError`` when it is unreadable."""
    out = OutputDir.from_uri(out)
    if not out.exists(MANIFEST_NAME):
        return None
    return RunManifest.from_json(out.read_bytes(MANIFEST_NAME))


def remove_outputs(out: str | OutputDir) -> None:
    """Deletes what a gazegen run writes in OUT (and nothing else); the card only if ours."""
    out = OutputDir.from_uri(out)
    names = out.list(SHARD_GLOB) + out.list(STATS_GLOB) + [TMP_DIR, SHARD_ERRORS_DIR, ERRORS_NAME]
    if out.exists(MANIFEST_NAME):
        names += [CARD_NAME, HISTOGRAMS_NAME, MANIFEST_NAME]  # the manifest last: it is what marks OUT as ours
    for name in names:
        out.delete(name)


def check_or_create(out: str | OutputDir, manifest: RunManifest, overwrite: bool = False) -> RunManifest:
    """Starts or resumes a run in OUT; returns the manifest now recorded there.

    Raises ``RunMismatchError`` when OUT holds a different run, an unreadable manifest, or
    shards without a manifest, unless ``overwrite`` (then the old outputs are removed first).
    Resuming clears ``_tmp/`` (call it before any writer starts).
    """
    out = OutputDir.from_uri(out)
    out.ensure()
    if overwrite:
        remove_outputs(out)
    try:
        recorded = read_manifest(out)
    except (ValueError, KeyError, TypeError) as error:
        raise RunMismatchError(f"{out}: unreadable {MANIFEST_NAME} ({error}); pass --overwrite to start afresh") from error
    if recorded is None:
        leftovers = out.list(SHARD_GLOB) + out.list(STATS_GLOB)
        if leftovers:
            raise RunMismatchError(
                f"{out} holds shards but no {MANIFEST_NAME} (e.g. {leftovers[0]}): not a run this command can resume; "
                "pass --overwrite to start afresh or choose another output"
            )
        out.write_atomic(MANIFEST_NAME, manifest.to_json().encode())
        return manifest
    differences = recorded.differences(manifest)
    if differences:
        raise RunMismatchError(
            f"{out} holds a run that differs from this one:\n  - " + "\n  - ".join(differences)
            + "\nRestart with the recorded inputs, checkpoint and settings to resume it, "
            "pass --overwrite to start afresh, or choose another output."
        )  # fmt: skip
    out.delete(TMP_DIR)
    return recorded


def _read_parquet(out: OutputDir, name: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of OUT, read on this thread and closed: no dataset scan, whose pool threads
    may outlive the call and abort the interpreter at exit (seen as SIGABRT after a complete run)."""
    with out.fs.open_input_file(out.path(name)) as handle, pq.ParquetFile(handle) as file:
        return file.read(columns=columns, use_threads=False)


def read_shard_errors(out: str | OutputDir, plan: Sequence[ShardSpec]) -> pa.Table:
    """The errors of the plan's shards, in shard order (shards without an errors file add none)."""
    out = OutputDir.from_uri(out)
    tables = [_read_parquet(out, spec.errors_name).cast(ERRORS_SCHEMA) for spec in plan if out.exists(spec.errors_name)]
    return pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()


def _check_row_ids(out: OutputDir, plan: Sequence[ShardSpec]) -> None:
    """Raises ``IncompleteRunError`` when a row id occurs in more than one row of the run."""
    ids = [_read_parquet(out, spec.parquet_name, ["row_id"]).column("row_id") for spec in plan]
    column = pa.chunked_array([chunk for c in ids for chunk in c.chunks], pa.string())
    distinct = pc.count_distinct(column).as_py()
    if distinct != len(column):
        raise IncompleteRunError(f"{out}: {len(column) - distinct} duplicate row ids across shards (are source ids unique?)")


def finalize(out: str | OutputDir, plan: Sequence[ShardSpec], verify: bool = False) -> RunManifest:
    """Ends a run whose planned shards are all complete; returns the final manifest.

    Writes ``_errors.parquet`` (every shard's bad inputs; possibly empty), the manifest with
    status ``complete`` and the shard list, and the dataset card; removes ``_tmp/``. Raises
    ``IncompleteRunError`` naming missing shards, or shard files that are not in the plan.
    ``verify`` also checks every shard's sha256 and that no row id occurs twice in the run.
    """
    out = OutputDir.from_uri(out)
    recorded = read_manifest(out)
    if recorded is None:
        raise IncompleteRunError(f"{out}: no {MANIFEST_NAME}; start runs with check_or_create")
    if tuple(name for spec in plan for name in spec.inputs) != recorded.inputs:
        raise IncompleteRunError(f"{out}: the plan's inputs are not the recorded run's inputs")
    scan = completed_shards(out, plan, verify=verify)
    missing = [spec.name for spec in scan.todo(plan)]
    stray = sorted(set(out.list(SHARD_GLOB)) - {spec.parquet_name for spec in plan})
    if missing or stray:
        raise IncompleteRunError(
            f"{out}: {len(missing)} of {len(plan)} shards incomplete {missing[:5]}; "
            f"files not in the plan {stray[:5]}; invalid stats {dict(list(scan.invalid.items())[:5])}"
        )
    if verify:
        _check_row_ids(out, plan)
    errors = read_shard_errors(out, plan)
    sink = io.BytesIO()
    pq.write_table(errors, sink)
    out.write_atomic(ERRORS_NAME, sink.getvalue())
    shards = tuple(
        {"name": s.parquet, "rows": s.rows, "errors": s.errors, "bytes": s.bytes, "sha256": s.sha256, "seconds": s.seconds}
        for s in (scan.complete[spec.shard_id] for spec in plan)
    )
    final = replace(recorded, shards=shards, status="complete", finished=utc_now())
    labels = read_labels([out.path(spec.parquet_name) for spec in plan], filesystem=out.fs)
    if len(labels):
        out.write_atomic(HISTOGRAMS_NAME, figure_png(label_figure(labels)))
    out.write_atomic(CARD_NAME, dataset_card(final, labels).encode())
    out.write_atomic(MANIFEST_NAME, final.to_json().encode())
    out.delete(TMP_DIR)
    return final


__all__ = [
    "CARD_NAME",
    "ERRORS_NAME",
    "HISTOGRAMS_NAME",
    "MANIFEST_NAME",
    "IncompleteRunError",
    "RunManifest",
    "RunMismatchError",
    "check_or_create",
    "dataset_card",
    "finalize",
    "library_versions",
    "read_manifest",
    "read_shard_errors",
    "remove_outputs",
]
