"""Run-level files of a synthesis output: ``_manifest.json``, ``_errors.parquet``, the card (pipelines/card.py).

A run starts with ``check_or_create``: a fresh OUT gets a manifest (status ``running``) before
any shard is written; an OUT with a manifest is resumed only when the recorded inputs,
checkpoint and settings equal the new run's, else it refuses with ``RunMismatchError`` naming
each difference (``overwrite=True`` removes the old outputs and starts afresh); an OUT that holds
other files and no manifest is refused too (``overwrite`` writes into it anyway). ``finalize``
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

import io
from collections.abc import Sequence
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gazegen.data.label_plots import figure_png, label_figure, read_labels
from gazegen.data.parquet import SHARD_GLOB
from gazegen.data.schema import ERRORS_SCHEMA
from gazegen.errors import GazegenError
from gazegen.pipelines.card import dataset_card
from gazegen.pipelines.run_manifest import RunManifest
from gazegen.pipelines.shards import (
    CARD_NAME,
    ERRORS_NAME,
    HISTOGRAMS_NAME,
    MANIFEST_NAME,
    STATS_GLOB,
    TMP_DIR,
    OutputDir,
    ShardSpec,
    completed_shards,
    run_files,
    utc_now,
)


class RunMismatchError(GazegenError, RuntimeError):
    """OUT holds another run (or foreign files); the message says what differs and what to do."""


class IncompleteRunError(GazegenError, RuntimeError):
    """``finalize`` found planned shards that are not complete."""


def read_manifest(out: str | OutputDir) -> RunManifest | None:
    """The recorded manifest, None when OUT has none; ``ValueError`` when it is unreadable."""
    out = OutputDir.from_uri(out)
    if not out.exists(MANIFEST_NAME):
        return None
    return RunManifest.from_json(out.read_bytes(MANIFEST_NAME))


def remove_outputs(out: str | OutputDir) -> None:
    """Deletes what a gazegen run writes in OUT (and nothing else); the card only if ours."""
    out = OutputDir.from_uri(out)
    for name in run_files(out):  # the manifest last: it is what marks OUT as ours
        out.delete(name)


def check_or_create(out: str | OutputDir, manifest: RunManifest, overwrite: bool = False) -> RunManifest:
    """Starts or resumes a run in OUT; returns the manifest now recorded there.

    Raises ``RunMismatchError`` when OUT holds a different run, an unreadable manifest, shards
    without a manifest, or other files and no manifest (a folder that is not a run: its README.md
    would become the card), unless ``overwrite`` (then the old outputs are removed first).
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
        others = [] if overwrite else out.list()
        if others:  # someone's folder: the run would write its shards, README.md, ... among their files
            raise RunMismatchError(
                f"{out} is not empty (e.g. {others[0]}) and holds no gazegen run ({MANIFEST_NAME}): choose a new or empty "
                f"output folder (--overwrite writes into it anyway, replacing files named like the run's, such as {CARD_NAME})"
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


def read_run_errors(out: str | OutputDir) -> pa.Table:
    """A finalized run's errors: ``_errors.parquet``, every shard's merged by ``finalize``."""
    return _read_parquet(OutputDir.from_uri(out), ERRORS_NAME).cast(ERRORS_SCHEMA)


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
    "RunMismatchError",
    "check_or_create",
    "dataset_card",
    "finalize",
    "read_manifest",
    "read_run_errors",
    "read_shard_errors",
    "remove_outputs",
]
